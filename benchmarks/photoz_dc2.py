"""Photo-z on DC2: calipers vs RAIL's KNN and FlexZBoost, in the same run, same metrics.

Trains on ``test_dc2_training_9816.hdf5``, scores on ``test_dc2_validation_9816.hdf5`` with the
neutral metrics of ``benchmarks/pzmetrics.py`` (a verbatim copy of shared/bench/pzmetrics.py),
and prints one JSON line per code. calipers runs through its own stages
(``python -m calipers PZInform/PZEstimate`` with the pipeline's stage config), RAIL's codes
through their informer/estimator stages as in shared/bench/peers.py. A last line measures
calipers' estimation throughput (read HDF5 -> write qp) on a resampled catalog of
``--scale-rows`` rows, with the peak RSS of that process, and its ratio to each peer's
galaxies/second measured above.

    python benchmarks/photoz_dc2.py                       # calipers, knn, flexzboost
    python benchmarks/photoz_dc2.py --codes calipers --scale-rows 0
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

from pzmetrics import grid_pdfs, metrics  # noqa: E402

TESTDATA = "pkg://rail/examples_data/testdata/"
TRAIN = TESTDATA + "test_dc2_training_9816.hdf5"
TEST = TESTDATA + "test_dc2_validation_9816.hdf5"


def _vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_polled(cmd: list[str], cwd: str | None = None, env: dict | None = None) -> tuple[float, float, int, str]:
    """Run a command; return (wall seconds, peak RSS in MB of that process, exit code, output).

    The peak is the child's own VmHWM, polled until it exits (``ru_maxrss`` of a child is
    polluted by the parent's high-water mark at fork time on Linux).
    """
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()))
    reader.start()
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _vm_hwm_mb(proc.pid))
        time.sleep(0.05)
    reader.join()
    return time.perf_counter() - t0, peak, proc.returncode, "".join(chunks)


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run a command that must succeed (``env``: its whole environment; default this one's);
    return (wall seconds, peak RSS in MB)."""
    dt, peak, rc, text = run_polled(cmd, env=env)
    if rc:
        sys.stderr.write(text)
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}")
    return dt, peak


def grid_pdfs_chunked(ens, chunk: int = 2000) -> np.ndarray:
    """pzmetrics.grid_pdfs applied to slices of the ensemble (same numbers, bounded memory:
    qp evaluates a whole (n, grid, components) array at once, 10+ GB for 20k mixtures)."""
    return np.concatenate([grid_pdfs(ens[i:min(i + chunk, ens.npdf)]) for i in range(0, ens.npdf, chunk)])


def score(ens, ztrue) -> dict:
    m = metrics(grid_pdfs_chunked(ens), ztrue)
    return {k: round(float(v), 5) for k, v in m.items()}


def calipers_run(work: str, config: str, ztrue: np.ndarray, n_test: int, trained: str | None = None) -> dict:
    import qp

    model, pz = trained or os.path.join(work, "model"), os.path.join(work, "pz.hdf5")
    py = [sys.executable, "-m", "calipers"]
    train_s = float("nan")
    if trained is None:
        train_s, _ = run_measured(py + ["PZInform", f"--training_catalog={TRAIN}", f"--config={config}",
                                        f"--model={model}"])
    est_s, rss = run_measured(py + ["PZEstimate", f"--model={model}", f"--catalog={TEST}", f"--config={config}", f"--pz={pz}"])
    ens = qp.read(pz)
    assert ens.npdf == n_test, (ens.npdf, n_test)
    out = {"code": "calipers"} | score(ens, ztrue)
    out |= {"train_s": round(train_s, 2), "estimate_s": round(est_s, 2), "n_test": n_test,
            "galaxies_per_s": round(n_test / est_s, 1), "estimate_peak_rss_mb": round(rss, 1)}
    return out


def calipers_scale(work: str, config: str, rows: int, model: str) -> list[dict]:
    """Throughput on a resampled catalog: with every point estimate, and with none (qp only)."""
    import yaml
    from make_big_catalog import make_catalog

    big = make_catalog(os.path.join(work, f"dc2_{rows}.hdf5"), rows, seed=1)
    with open(config) as fh:
        cfg = yaml.safe_load(fh)
    cfg.setdefault("PZEstimate", {})["point_estimates"] = []
    bare = os.path.join(work, "no_point_estimates.yml")
    with open(bare, "w") as fh:
        yaml.safe_dump(cfg, fh)
    pz = os.path.join(work, "pz_big.hdf5")
    out = []
    for label, cfg_path in (("with_point_estimates", config), ("qp_only", bare)):
        est_s, rss = run_measured([sys.executable, "-m", "calipers", "PZEstimate", f"--model={model}",
                                   f"--catalog={big}", f"--config={cfg_path}", f"--pz={pz}"])
        size_mb = os.path.getsize(pz) / 2**20
        os.remove(pz)
        out.append({"code": "calipers_throughput", "variant": label, "rows": rows, "estimate_s": round(est_s, 2),
                    "galaxies_per_s": round(rows / est_s, 1), "peak_rss_mb": round(rss, 1),
                    "output_mb": round(size_mb, 1), "cpu_count": os.cpu_count()})
    os.remove(big)
    return out


def rail_run(name: str, ztrue: np.ndarray) -> dict:
    import tables_io

    from calipers.core.paths import resolve_path

    if name == "knn":
        from rail.estimation.algos.k_nearneigh import KNearNeighEstimator as Est
        from rail.estimation.algos.k_nearneigh import KNearNeighInformer as Inf
    elif name == "flexzboost":
        from rail.estimation.algos.flexzboost import FlexZBoostEstimator as Est
        from rail.estimation.algos.flexzboost import FlexZBoostInformer as Inf
    else:
        raise ValueError(name)

    train = tables_io.read(resolve_path(TRAIN))["photometry"]
    test = tables_io.read(resolve_path(TEST))["photometry"]
    t0 = time.perf_counter()
    inf = Inf.make_stage(name=f"inf_{name}", model=f"{name}.pkl", hdf5_groupname="")
    inf.inform(train)
    t1 = time.perf_counter()
    est = Est.make_stage(name=f"est_{name}", model=inf.get_handle("model"), hdf5_groupname="",
                         output=f"{name}_out.hdf5")
    ens = est.estimate(test).data
    t2 = time.perf_counter()
    n = len(ztrue)
    return {"code": name} | score(ens, ztrue) | {"train_s": round(t1 - t0, 2), "estimate_s": round(t2 - t1, 2),
                                                 "n_test": n, "galaxies_per_s": round(n / (t2 - t1), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codes", nargs="+", default=["calipers", "knn", "flexzboost"])
    p.add_argument("--config", default=os.path.join(ROOT, "stages", "photoz.yml"))
    p.add_argument("--scale-rows", type=int, default=1_000_000, help="rows for the throughput run (0 = skip)")
    p.add_argument("--model", default=None, help="score this trained calipers model instead of training one "
                   "(train_s is then not measured)")
    a = p.parse_args()

    from calipers.core.catalog import read_columns

    ztrue = read_columns(TEST, "photometry", ["redshift"])["redshift"]
    config = os.path.abspath(a.config)
    work = tempfile.mkdtemp(prefix="calipers_bench_")
    os.chdir(work)
    results = {}
    for code in a.codes:
        r = (calipers_run(work, config, ztrue, len(ztrue), a.model and os.path.abspath(a.model)) if code == "calipers"
             else rail_run(code, ztrue))
        results[code] = r
        print(json.dumps(r), flush=True)
    if "calipers" in results and a.scale_rows > 0:
        for r in calipers_scale(work, config, a.scale_rows, os.path.abspath(a.model) if a.model else os.path.join(work, "model")):
            for code, peer in results.items():
                if code != "calipers":
                    r[f"ratio_vs_{code}"] = round(r["galaxies_per_s"] / peer["galaxies_per_s"], 1)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
