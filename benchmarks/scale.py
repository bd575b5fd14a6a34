"""Estimation at scale: a 10-million-row catalog, peak memory, peers, MPI scaling, GPU training.

Prints one JSON line per measurement:

1. ``catalog``: builds ``--rows`` rows (default 10M) by resampling DC2 with photometric noise
   re-drawn by photerr's LSST error model (``examples/make_big_catalog.py``);
2. ``calipers_train``: a model with the pipeline's architecture (stages/photoz.yml; 5 members,
   3x128, K=10) trained on DC2 for ``--train-epochs`` epochs (throughput does not depend on how
   long it trained; ``--model DIR`` reuses a trained one);
3. ``calipers_estimate``: ``python -m calipers PZEstimate`` on all rows (read HDF5 -> write qp,
   2 threads), with and without the ancil point estimates: seconds, galaxies/s, the process's
   peak RSS, output size;
4. ``knn`` / ``flexzboost``: RAIL's estimators (trained on DC2 training) on the first
   ``--peer-rows`` rows of the same catalog, in the same run, each in its own process (peak RSS),
   and calipers' ratio to them;
5. ``mpi_scaling``: PZEstimate on ``--mpi-rows`` rows with 1 rank x 1 thread, 1 rank x 2 threads
   and 2 ranks x 1 thread (``mpirun -n 2 ... --mpi``); outputs checked equal;
6. ``gpu_train``: time to train the 5-member ensemble on 1M rows when torch sees a GPU (else a
   line saying it was skipped).

    python benchmarks/scale.py                              # everything, ~15-20 min on 2 cores
    python benchmarks/scale.py --rows 1000000 --peer-rows 20000 --mpi-rows 500000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

from photoz_dc2 import TRAIN, run_measured  # noqa: E402

PY = [sys.executable, "-m", "calipers"]


def emit(d: dict) -> dict:
    print(json.dumps(d), flush=True)
    return d


def write_yaml(path: str, data: dict) -> str:
    import yaml

    with open(path, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    return path


def stage_config(work: str, epochs: int, point_estimates: bool, chunk: int) -> str:
    import yaml

    with open(os.path.join(ROOT, "stages", "photoz.yml")) as fh:
        cfg = yaml.safe_load(fh)
    cfg["PZInform"]["max_epochs"] = epochs
    cfg["PZEstimate"]["chunk_size"] = chunk
    if not point_estimates:
        cfg["PZEstimate"]["point_estimates"] = []
    name = "with_pe.yml" if point_estimates else "qp_only.yml"
    return write_yaml(os.path.join(work, name), cfg)


def estimate(model: str, catalog: str, config: str, out: str, env_extra: dict | None = None,
             mpi: int = 0) -> tuple[float, float]:
    cmd = PY + ["PZEstimate", f"--model={model}", f"--catalog={catalog}", f"--config={config}", f"--pz={out}"]
    if mpi:
        cmd = ["mpirun", "-n", str(mpi), *cmd, "--mpi"]
    return run_measured(cmd, env=dict(os.environ, **(env_extra or {})))


def slice_catalog(src: str, dst: str, rows: int) -> str:
    import h5py

    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        grp = g.create_group("photometry")
        for k, v in f["photometry"].items():
            grp.create_dataset(k, data=v[:rows])
    return dst


def peer_main(name: str, catalog: str, rows: int) -> None:
    """(Child process) train a RAIL estimator on DC2 training, estimate ``rows`` rows; print JSON."""
    import tables_io

    from calipers.core.catalog import catalog_info, read_columns
    from calipers.core.paths import resolve_path

    if name == "knn":
        from rail.estimation.algos.k_nearneigh import KNearNeighEstimator as Est
        from rail.estimation.algos.k_nearneigh import KNearNeighInformer as Inf
    else:
        from rail.estimation.algos.flexzboost import FlexZBoostEstimator as Est
        from rail.estimation.algos.flexzboost import FlexZBoostInformer as Inf
    train = tables_io.read(resolve_path(TRAIN))["photometry"]
    inf = Inf.make_stage(name=f"inf_{name}", model=os.path.join(os.path.dirname(catalog), f"{name}.pkl"),
                         hdf5_groupname="")
    inf.inform(train)
    _, cols = catalog_info(catalog, "photometry")
    data = read_columns(catalog, "photometry", cols, 0, rows)
    t0 = time.perf_counter()
    est = Est.make_stage(name=f"est_{name}", model=inf.get_handle("model"), hdf5_groupname="",
                         output=os.path.join(os.path.dirname(catalog), f"{name}_out.hdf5"))
    ens = est.estimate(data).data
    dt = time.perf_counter() - t0
    assert ens.npdf == rows
    print("PEER " + json.dumps({"estimate_s": dt}), flush=True)


def run_peer(name: str, catalog: str, rows: int) -> dict:
    from photoz_dc2 import run_polled

    _, peak, rc, text = run_polled([sys.executable, __file__, "--peer", name, "--peer-catalog", catalog,
                                    "--peer-rows", str(rows)], cwd=os.path.dirname(catalog))
    line = [x for x in text.splitlines() if x.startswith("PEER ")]
    if rc or not line:
        sys.stderr.write(text[-3000:])
        raise SystemExit(f"peer {name} failed")
    dt = json.loads(line[-1][5:])["estimate_s"]
    return {"code": name, "rows": rows, "estimate_s": round(dt, 2), "galaxies_per_s": round(rows / dt, 1),
            "peak_rss_mb": round(peak, 1)}


def same_output(a: str, b: str) -> bool:
    import h5py

    with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
        return all(np.array_equal(f[grp][k][:], g[grp][k][:]) for grp in ("data", "ancil") for k in f[grp])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--peer-rows", type=int, default=100_000)
    p.add_argument("--mpi-rows", type=int, default=2_000_000)
    p.add_argument("--model", default="", help="trained model directory (default: train one)")
    p.add_argument("--train-epochs", type=int, default=20)
    p.add_argument("--chunk-size", type=int, default=100_000)
    p.add_argument("--workdir", default="", help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--peer", default="", help=argparse.SUPPRESS)
    p.add_argument("--peer-catalog", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.peer:
        peer_main(a.peer, a.peer_catalog, a.peer_rows)
        return

    from make_big_catalog import make_catalog

    work = a.workdir or tempfile.mkdtemp(prefix="calipers-scale-")
    os.makedirs(work, exist_ok=True)
    two = {"OMP_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2"}
    one = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    try:
        big = os.path.join(work, "catalog.hdf5")
        t0 = time.perf_counter()
        make_catalog(big, a.rows, seed=1, noise="photerr")
        emit({"code": "catalog", "rows": a.rows, "noise": "photerr LSST 10-year", "build_s": round(time.perf_counter() - t0, 1),
              "file_mb": round(os.path.getsize(big) / 2**20, 1)})

        with_pe = stage_config(work, a.train_epochs, True, a.chunk_size)
        qp_only = stage_config(work, a.train_epochs, False, a.chunk_size)
        model = a.model
        if not model:
            model = os.path.join(work, "model")
            dt, rss = run_measured(PY + ["PZInform", f"--training_catalog={TRAIN}", f"--config={with_pe}",
                                         f"--model={model}"])
            emit({"code": "calipers_train", "rows": 9816, "max_epochs": a.train_epochs, "train_s": round(dt, 1),
                  "peak_rss_mb": round(rss, 1)})

        out = os.path.join(work, "pz.hdf5")
        rates = {}
        for label, cfg in (("qp_only", qp_only), ("with_point_estimates", with_pe)):
            dt, rss = estimate(model, big, cfg, out, two)
            rates[label] = a.rows / dt
            emit({"code": "calipers_estimate", "variant": label, "rows": a.rows, "threads": 2,
                  "estimate_s": round(dt, 1), "galaxies_per_s": round(a.rows / dt, 1), "peak_rss_mb": round(rss, 1),
                  "output_mb": round(os.path.getsize(out) / 2**20, 1)})
            os.remove(out)

        peer_cat = slice_catalog(big, os.path.join(work, "peer_slice.hdf5"), a.peer_rows)
        for name in ("knn", "flexzboost"):
            r = run_peer(name, peer_cat, a.peer_rows)
            r |= {f"calipers_ratio_{k}": round(v / r["galaxies_per_s"], 1) for k, v in rates.items()}
            emit(r)

        if shutil.which("mpirun"):
            mcat = slice_catalog(big, os.path.join(work, "mpi_slice.hdf5"), a.mpi_rows) if a.mpi_rows < a.rows else big
            mpienv = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                      "OMPI_MCA_rmaps_base_oversubscribe": "1"}
            times, outs = {}, {}
            for label, env, nproc in (("1rank_1thread", one, 0), ("1rank_2threads", two, 0), ("2ranks_1thread", one, 2)):
                outs[label] = os.path.join(work, f"pz_{label}.hdf5")
                times[label], _ = estimate(model, mcat, with_pe, outs[label], env | mpienv, mpi=nproc)
            emit({"code": "mpi_scaling", "rows": a.mpi_rows, "variant": "with_point_estimates",
                  "seconds": {k: round(v, 1) for k, v in times.items()},
                  "galaxies_per_s": {k: round(a.mpi_rows / v, 1) for k, v in times.items()},
                  "speedup_2ranks_vs_1rank_1thread": round(times["1rank_1thread"] / times["2ranks_1thread"], 2),
                  "speedup_2ranks_vs_1rank_2threads": round(times["1rank_2threads"] / times["2ranks_1thread"], 2),
                  "mpi_output_equals_serial": same_output(outs["1rank_1thread"], outs["2ranks_1thread"])})
            for f in outs.values():
                os.remove(f)
        else:
            emit({"code": "mpi_scaling", "skipped": "mpirun not found"})

        import torch

        if torch.cuda.is_available():
            gcat = slice_catalog(big, os.path.join(work, "gpu_1M.hdf5"), min(a.rows, 1_000_000))
            import yaml

            with open(with_pe) as fh:
                cfg = yaml.safe_load(fh)
            cfg["PZInform"] |= {"device": "cuda", "max_epochs": 500}
            gcfg = write_yaml(os.path.join(work, "gpu.yml"), cfg)
            dt, _ = run_measured(PY + ["PZInform", f"--training_catalog={gcat}", f"--config={gcfg}",
                                       f"--model={os.path.join(work, 'gpu_model')}"])
            emit({"code": "gpu_train", "rows": min(a.rows, 1_000_000), "members": 5, "train_s": round(dt, 1),
                  "device": torch.cuda.get_device_name(0)})
        else:
            emit({"code": "gpu_train", "skipped": "torch sees no CUDA GPU on this machine"})
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
