"""The main pipeline exactly as shipped (pipelines/photoz.yml + stages/photoz.yml) on RAIL's DC2 files.

README command 1 runs it; this test runs it the same way (``ceci``), only with the outputs in a
temporary directory, and requires every gate to **pass** (the calibrated validation part, the
target's support and the sensitivity check) and the target's calibrated p(z) - scored here with the
target's truth, which the pipeline never reads - to be calibrated and their mean redshift close
to the truth. It trains the full 5-member ensemble (minutes on 2 cores): the one test that
exercises the shipped configuration end to end.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import qp
import yaml

from calipers.core.catalog import read_columns
from calipers.validate.metrics import grid_pdfs, grid_point_estimates, pz_metrics
from conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]


def test_shipped_photoz_pipeline_passes_its_gates_on_dc2(tmp_path):
    with open(REPO / "pipelines" / "photoz.yml") as fh:
        pipe = yaml.safe_load(fh)
    # as shipped, except where the outputs go
    pipe["config"] = str(REPO / "stages" / "photoz.yml")
    pipe["output_dir"] = str(tmp_path / "out")
    pipe["log_dir"] = str(tmp_path / "out" / "logs")
    path = tmp_path / "photoz.yml"
    path.write_text(yaml.safe_dump(pipe, sort_keys=False))
    proc = subprocess.run(["ceci", str(path)], capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                          timeout=3000)
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for name in ("report", "photoz_report", "sensitivity_report"):  # every gate passed
        report = json.loads((out / name / "report.json").read_text())
        assert report["passed"] is True, (name, report["checks"])
        assert not (out / f"{name}.FAILED").exists()
    m = json.loads((out / "report" / "report.json").read_text())["metrics"]
    assert m["n_invalid"] == 0 and 1700 < m["n"] < 2400  # the validation part: ~20% of the 10,225 labelled galaxies
    assert m["pit_ks"] <= 0.05 and abs(m["cov68"] - 0.68) <= 0.03 and abs(m["cov95"] - 0.95) <= 0.03
    # the target: its truth is read here, by the test, never by the pipeline
    target = pipe["inputs"]["target_catalog"]
    from calipers.core.paths import resolve_path

    z = read_columns(resolve_path(target), "photometry", ["redshift"])["redshift"]
    raw, cal = qp.read(str(out / "pz.hdf5")), qp.read(str(out / "calibrated_pz.hdf5"))
    assert raw.npdf == cal.npdf == len(z) == 20449
    ood = cal.ancil["ood"] != 0
    assert ood.mean() <= 0.05  # DC2 validation is drawn like DC2 training: ~1% outside the support at level 0.99
    after = pz_metrics(cal, z)
    assert after["pit_ks"] <= 0.03 and abs(after["cov68"] - 0.68) <= 0.02 and abs(after["cov95"] - 0.95) <= 0.02
    grid = np.linspace(0.0, 3.0, 601)
    zmean_cal = grid_point_estimates(grid_pdfs(cal, grid)[0], grid, ["zmean"])["zmean"]
    assert abs(np.mean(zmean_cal - z)) < 0.003  # the DESC Y1 scale of n(z)-mean errors
