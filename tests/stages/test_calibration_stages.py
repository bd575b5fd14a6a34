"""PZCalibrate + PZApplyCalibration recalibrate an over-dispersed p(z) so that the gate passes."""
import json

import h5py

import numpy as np
import pytest
import qp
import yaml

from calipers.core.errors import GateFailed
from conftest import leftovers, run_stage, write_catalog
from test_validation_gate import toy


def config(tmp_path, **sections):
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


@pytest.mark.parametrize("method", ["pit_global", "conformal"])
@pytest.mark.parametrize("width_factor", [0.6, 1.8])
def test_calibration_fixes_miscalibrated_widths(tmp_path, width_factor, method):
    cal_dir, test_dir = tmp_path / "cal", tmp_path / "test"
    cal_dir.mkdir()
    test_dir.mkdir()
    cal_pz, cal_truth = toy(cal_dir, n=4000, width_factor=width_factor, seed=1)
    pz, truth = toy(test_dir, n=4000, width_factor=width_factor, seed=2)
    cfg = config(tmp_path, PZCalibrate={"n_knots": 50, "method": method}, ValidationGate={"max_pit_ks": 0.03})
    with pytest.raises(GateFailed):  # miscalibrated before
        run_stage("ValidationGate", cfg, pz=pz, truth=truth, report=str(tmp_path / "before"))
    calibrator = tmp_path / "calibrator"
    run_stage("PZCalibrate", cfg, calibration_pz=cal_pz, calibration_truth=cal_truth, calibrator=str(calibrator))
    kind = {"pit_global": "PITRecalibrator", "conformal": "ConformalPredictiveDistribution"}[method]
    assert json.loads((calibrator / "calibrator.json").read_text())["kind"] == kind
    out = tmp_path / "calibrated.hdf5"
    run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), catalog=truth, calibrated_pz=str(out))
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
        run_stage("PZApplyCalibration", c, pz=pz, calibrator=str(calibrator), catalog=truth, calibrated_pz=str(out))
        outs.append(qp.read(str(out)).objdata["yvals"])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_calibrate_rejects_nan_rows(tmp_path):
    pz, truth = toy(tmp_path, n=300, nan_rows=[7])
    cfg = config(tmp_path)
    with pytest.raises(ValueError, match="row 7"):
        run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(tmp_path / "c"))
    assert not (tmp_path / "c").exists() and not leftovers(tmp_path)


def local_toy(tmp_path, n, seed):
    """Calibrated widths times 0.5 where x < 0 and times 2 where x >= 0: opposite errors that a
    global remapping averages away."""
    rng = np.random.default_rng(seed)
    z = rng.gamma(4.0, 0.2, n).clip(0.02, 2.9)
    x = rng.uniform(-1, 1, n)
    sigma = 0.03 * (1 + z)
    centre = z + rng.normal(0, sigma)
    ens = qp.Ensemble(qp.mixmod, data={"means": centre[:, None], "weights": np.ones((n, 1)),
                                       "stds": (np.where(x < 0, 0.5, 2.0) * sigma)[:, None]})
    tmp_path.mkdir(exist_ok=True)
    ens.write_to(str(tmp_path / "pz.hdf5"))
    return str(tmp_path / "pz.hdf5"), write_catalog(tmp_path / "cat.hdf5", {"redshift": z, "x": x}), x


def test_local_calibration_stage_fixes_each_region(tmp_path):
    from calipers.validate.metrics import pit_tests, pit_values

    cal_pz, cal_cat, _ = local_toy(tmp_path / "cal", 5000, 1)
    pz, cat, x = local_toy(tmp_path / "test", 4000, 2)
    cfg = config(tmp_path, PZCalibrate={"method": "pit_local", "feature_columns": ["x"], "n_members": 2,
                                        "n_components": 3, "hidden": 32})
    calibrator = tmp_path / "calibrator"
    run_stage("PZCalibrate", cfg, calibration_pz=cal_pz, calibration_truth=cal_cat, calibrator=str(calibrator))
    assert (calibrator / "weights.pt").exists()
    out = tmp_path / "calibrated.hdf5"
    run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), catalog=cat, calibrated_pz=str(out))
    ens = qp.read(str(out))
    zgrid = np.asarray(ens.metadata["xvals"]).ravel()
    with h5py.File(cat) as f:
        ztrue = f["photometry/redshift"][:]
    pit = pit_values(ens.objdata["yvals"], zgrid, ztrue)
    for side in (x < 0, x >= 0):
        assert pit_tests(pit[side])["pit_ks"] < 0.05


def test_apply_rejects_catalog_of_other_length(tmp_path):
    pz, truth = toy(tmp_path, n=300, width_factor=1.5, seed=3)
    calibrator = tmp_path / "calibrator"
    cfg = config(tmp_path, PZCalibrate={"n_knots": 20})
    run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(calibrator))
    short = write_catalog(tmp_path / "short.hdf5", {"redshift": np.ones(299)})
    with pytest.raises(ValueError, match="300 p\\(z\\) but the catalog .*short.hdf5 has 299 rows"):
        run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), catalog=short,
                  calibrated_pz=str(tmp_path / "o.hdf5"))
    assert not (tmp_path / "o.hdf5").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("method", ["pit_global", "pit_local"])
def test_apply_over_two_ranks_equals_serial(tmp_path, method):
    from calipers.stages import PZApplyCalibration
    from conftest import run_as_ranks

    pz, truth = toy(tmp_path, n=600, width_factor=1.5, seed=4)
    with h5py.File(truth, "a") as f:  # a feature for the local method
        f["photometry/x"] = np.linspace(0, 1, 600)
    calibrator = tmp_path / "calibrator"
    cal = {"n_knots": 20, "method": method, "feature_columns": ["x"], "n_members": 1, "max_epochs": 5, "hidden": 8}
    cfg = config(tmp_path, PZCalibrate=cal, PZApplyCalibration={"chunk_size": 64})
    run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(calibrator))
    serial, mpi = tmp_path / "serial.hdf5", tmp_path / "mpi.hdf5"
    run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), catalog=truth, calibrated_pz=str(serial))
    run_as_ranks(PZApplyCalibration, {"pz": pz, "calibrator": str(calibrator), "catalog": truth,
                                      "calibrated_pz": str(mpi), "config": cfg})
    a, b = qp.read(str(serial)), qp.read(str(mpi))
    np.testing.assert_array_equal(a.objdata["yvals"], b.objdata["yvals"])
    assert not leftovers(tmp_path)
