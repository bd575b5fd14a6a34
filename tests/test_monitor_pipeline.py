"""pipelines/monitor_batches.yml through ceci on a synthetic stream of 10 batches: four clean
nights, two with the i band shifted, two clean, two with p(z) 25% too narrow. The covariate
monitor must flag the shifted nights and only those; the calibration monitor's CUSUM must first
fire on the first narrow night; every night leaves its state, table, alert record and report."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import qp
import yaml

from calipers.core.monitor_files import write_fresh_state
from conftest import subprocess_env, write_catalog, write_pipeline

REPO = Path(__file__).resolve().parents[1]
BANDS = "ugrizy"
KINDS = ["clean"] * 4 + ["shift"] * 2 + ["clean"] * 2 + ["shrink"] * 2


def write_night(d: Path, name: str, n: int, seed: int, kind: str = "clean") -> dict:
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.4, 2.0, n)
    sigma = 0.05 * (1 + mu)
    cols = {f"mag_{b}_lsst": 24.0 + 0.8 * rng.normal(size=n) for b in BANDS}
    if kind == "shift":
        cols["mag_i_lsst"] += 0.4  # a zero-point error of half a sigma of the population
    cols["redshift"] = mu + sigma * rng.normal(size=n)
    write_catalog(d / f"{name}.hdf5", cols)
    scale = sigma * (0.75 if kind == "shrink" else 1.0)
    qp.Ensemble(qp.stats.norm, data={"loc": mu[:, None], "scale": scale[:, None]}).write_to(str(d / f"{name}_pz.hdf5"))
    return {name: str(d / f"{name}.hdf5")}


def test_monitor_pipeline_flags_the_drifting_nights(tmp_path):
    inp = tmp_path / "inputs"
    inp.mkdir()
    write_night(inp, "reference", 4000, seed=1)
    inputs = {"reference_catalog": str(inp / "reference.hdf5"), "reference_pz": str(inp / "reference_pz.hdf5"),
              "covariate_state_start": write_fresh_state(str(inp / "cov0.json")),
              "calibration_state_start": write_fresh_state(str(inp / "cal0.json"))}
    for b, kind in enumerate(KINDS):
        write_night(inp, f"batch_{b:02d}", 600, seed=10 + b, kind=kind)
        inputs[f"batch_{b:02d}"] = str(inp / f"batch_{b:02d}.hdf5")
        inputs[f"pz_{b:02d}"] = str(inp / f"batch_{b:02d}_pz.hdf5")
    pipe = yaml.safe_load((REPO / "pipelines" / "monitor_batches.yml").read_text())
    stages = yaml.safe_load((REPO / "stages" / "monitor_batches.yml").read_text())
    stages["global"].update(n_permutations=100, nzbins=601)
    path = write_pipeline(tmp_path, pipe, stages, inputs=inputs)
    proc = subprocess.run(["ceci", str(path)], capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    with h5py.File(out / "covariate_table_09.hdf5") as f:
        cov = {k: v[:] for k, v in f["monitor"].items()}
    assert cov["ks_alarm"].astype(bool).tolist() == [k == "shift" for k in KINDS]
    assert cov["mmd_alarm"].astype(bool)[4:6].all() and cov["ks_mag_i_lsst"][4] > 0.1
    with h5py.File(out / "calibration_table_09.hdf5") as f:
        cal = {k: v[:] for k, v in f["monitor"].items()}
    assert np.flatnonzero(cal["cusum_dispersion_alarm"])[0] == 8
    assert np.all(cal["z_dispersion"][8:] > 5) and not cal["martingale_alarm"][:8].any() and cal["martingale_alarm"][8]
    alert = json.loads((out / "calibration_alert_08.json").read_text())
    assert any(a["statistic"] == "cusum_dispersion" and a["batch"] == 8 for a in alert["alerts"])
    assert (out / "calibration_report_09" / "index.html").exists() and (out / "covariate_report_05" / "statistics_vs_batch.png").exists()
