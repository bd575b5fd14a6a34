"""pipelines/transit.yml end to end through ceci on a tiny configuration: every stage runs in order,
the test spectra are calibrated, judged per bin, audited and reported with the submission CSV
(determinism is tested stage by stage in tests/stages/test_transit_stages.py)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import subprocess_env, write_pipeline

pytest.importorskip("batman")
REPO = Path(__file__).resolve().parents[1]
TINY = {"TransitSimulateTrain": 300, "TransitSimulateValidation": 100, "TransitSimulateCalibration": 200,
        "TransitSimulateTest": 100}


def tiny_pipeline(tmp: Path) -> Path:
    pipe = yaml.safe_load((REPO / "pipelines" / "transit.yml").read_text())
    stages = yaml.safe_load((REPO / "stages" / "transit.yml").read_text())
    stages["global"]["simulator"].update(n_bins=16, n_times=48)
    for name, n in TINY.items():
        stages[name].update(n_planets=n, chunk_size=128)
    stages["TransitTrain"].update(channels=8, dilations=[1, 2], hidden=8, max_epochs=4, device="cpu")
    stages["GaussianGate"]["on_fail"] = "warn"  # 100 test planets: per-bin coverage is too noisy to judge
    return write_pipeline(tmp, pipe, stages)


def run(tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["ceci", str(tiny_pipeline(tmp))], capture_output=True, text=True, env=subprocess_env(),
                          cwd=tmp, timeout=900)


@pytest.fixture(scope="module")
def transit_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("transit_pipeline")
    return d, run(d)


def test_pipeline_runs_and_reports(transit_run):
    d, proc = transit_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = d / "out"
    report = json.loads((out / "transit_report" / "report.json").read_text())
    assert [r["predictor"] for r in report["predictors"]] == ["least squares (formal sigma)", "network",
                                                              "network, calibrated"]
    sub = (out / "transit_report" / "submission.csv").read_text().splitlines()
    assert len(sub) == 101 and sub[0].split(",")[-1] == "sigma_15"
    gate = json.loads((out / "transit_gate_report" / "report.json").read_text())
    assert len(gate["coverage_1sigma_per_output"]) == 16
    audit = json.loads((out / "transit_audit" / "audit.json").read_text())
    assert len(audit) == 100
