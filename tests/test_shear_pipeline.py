"""pipelines/shear.yml end to end through ceci on a CI-sized configuration: simulate, train the
equivariant estimator, estimate a 2,000-unit ring test (4,000 ring pairs under +g and 4,000 under -g)
with metacal responses, calibrate, measure m and c and judge.

The issue asks |m| < 0.01 after calibration at this size (the gate's threshold here), and the test
asserts it; the bootstrap error of the calibrated m is itself about 0.01 at this size (the galaxies'
metacal responses scatter; the errors re-estimate the mean responses in every resample), so it also
asserts what the run can show statistically: a clearly negative raw m and a calibrated m within 3
errors of zero, with that error below 0.015. (Measured when written: raw m -0.349 / -0.358,
calibrated -0.0045 +- 0.009 / +0.0048 +- 0.010.) The 0.003 requirement needs the benchmark's
100,000 pairs."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import subprocess_env, write_pipeline

pytest.importorskip("galsim")
pytest.importorskip("e2cnn")
REPO = Path(__file__).resolve().parents[1]


def tiny_pipeline(tmp: Path) -> Path:
    pipe = yaml.safe_load((REPO / "pipelines" / "shear.yml").read_text())
    stages = yaml.safe_load((REPO / "stages" / "shear.yml").read_text())
    stages["global"]["simulator"].update(stamp_size=25, hlr_range=[0.35, 0.6])
    stages["ShearSimulateTrain"].update(n_galaxies=6000)
    stages["ShearSimulateValidation"].update(n_galaxies=600)
    stages["ShearSimulateRing"].update(n_galaxies=2000)
    stages["ShearTrain"].update(channels=[4, 8, 8], max_epochs=6, n_rotation_check=20, device="cpu")
    stages["ShearEstimate"].update(device="cpu")
    stages["ShearCalibrate"].update(size_edges=[0.35, 0.45, 0.6])
    stages["ShearBias"].update(size_edges=[0.35, 0.45, 0.6], n_boot=100)
    stages["ShearGate"].update(max_abs_m=0.01, max_abs_c=0.01)
    return write_pipeline(tmp, pipe, stages)


@pytest.fixture(scope="module")
def shear_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("shear_pipeline")
    proc = subprocess.run(["ceci", str(tiny_pipeline(d))], capture_output=True, text=True, env=subprocess_env(),
                          cwd=d, timeout=1200)
    return d, proc


def test_pipeline_runs_calibrates_and_passes_its_gate(shear_run):
    d, proc = shear_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = d / "out"
    bias = json.loads((out / "shear_bias" / "report.json").read_text())["metrics"]
    print({k: round(v, 5) for k, v in bias.items()})
    for k in ("m1", "m2"):
        assert bias[f"raw_{k}"] < -0.2  # noise bias: the raw estimator under-estimates shear
        assert bias[f"calibrated_{k}_err"] < 0.015
        assert abs(bias[f"calibrated_{k}"]) < 3 * bias[f"calibrated_{k}_err"]
        assert abs(bias[f"calibrated_{k}"]) < 0.01
    gate = json.loads((out / "shear_gate" / "report.json").read_text())
    assert gate["passed"] and gate["metrics"]["fraction_abs_eps_ge_1"] == 0.0
    assert abs(gate["metrics"]["coverage_68"] - 0.68) <= 0.05 and abs(gate["metrics"]["coverage_95"] - 0.95) <= 0.05
    card = json.loads((out / "shear_model" / "metadata.json").read_text())["model_card"]
    assert card["equivariance"]["exact_90_max_error"] < 1e-5
    assert (out / "shear_report" / "index.html").exists()
