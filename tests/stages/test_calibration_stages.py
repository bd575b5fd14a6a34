"""PZCalibrate + PZApplyCalibration recalibrate an over-dispersed p(z) so that the gate passes."""
import json

import numpy as np
import pytest
import qp
import yaml

from calipers.core.errors import GateFailed
from conftest import leftovers, run_stage
from test_validation_gate import toy


def config(tmp_path, **sections):
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


@pytest.mark.parametrize("width_factor", [0.6, 1.8])
def test_calibration_fixes_miscalibrated_widths(tmp_path, width_factor):
    cal_dir, test_dir = tmp_path / "cal", tmp_path / "test"
    cal_dir.mkdir()
    test_dir.mkdir()
    cal_pz, cal_truth = toy(cal_dir, n=4000, width_factor=width_factor, seed=1)
    pz, truth = toy(test_dir, n=4000, width_factor=width_factor, seed=2)
    cfg = config(tmp_path, PZCalibrate={"n_knots": 50}, ValidationGate={"max_pit_ks": 0.03})
    with pytest.raises(GateFailed):  # miscalibrated before
        run_stage("ValidationGate", cfg, pz=pz, truth=truth, report=str(tmp_path / "before"))
    calibrator = tmp_path / "calibrator"
    run_stage("PZCalibrate", cfg, calibration_pz=cal_pz, calibration_truth=cal_truth, calibrator=str(calibrator))
    assert json.loads((calibrator / "calibrator.json").read_text())["kind"] == "PITRecalibrator"
    out = tmp_path / "calibrated.hdf5"
    run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), calibrated_pz=str(out))
    ens = qp.read(str(out))
    assert ens.npdf == 4000
    run_stage("ValidationGate", cfg, pz=str(out), truth=truth, report=str(tmp_path / "after"))
    after = json.loads((tmp_path / "after" / "report.json").read_text())["metrics"]
    assert after["pit_ks"] < 0.03 and abs(after["cov68"] - 0.68) < 0.03
    assert not leftovers(tmp_path)


def test_apply_is_chunk_independent(tmp_path):
    pz, truth = toy(tmp_path, n=500, width_factor=1.5, seed=3)
    calibrator = tmp_path / "calibrator"
    cfg = config(tmp_path, PZCalibrate={"n_knots": 20})
    run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(calibrator))
    outs = []
    for chunk in (64, 10_000):
        c = config(tmp_path, PZApplyCalibration={"chunk_size": chunk})
        out = tmp_path / f"out{chunk}.hdf5"
        run_stage("PZApplyCalibration", c, pz=pz, calibrator=str(calibrator), calibrated_pz=str(out))
        outs.append(qp.read(str(out)).objdata["yvals"])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_calibrate_rejects_nan_rows(tmp_path):
    pz, truth = toy(tmp_path, n=300, nan_rows=[7])
    cfg = config(tmp_path)
    with pytest.raises(ValueError, match="row 7"):
        run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(tmp_path / "c"))
    assert not (tmp_path / "c").exists() and not leftovers(tmp_path)
