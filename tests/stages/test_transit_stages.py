"""The transit stages end to end on a tiny configuration (12 bins, 48 time points, a few hundred
planets): simulate, extract, train, predict, calibrate (temperature + per-bin conformal), gate,
audit and report; determinism under a seed; and the bad inputs the issue names (NaN light-curve
points, another bin count than the model's, a negative sigma): clear errors and no output."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import yaml

from calipers.core.array_sets import read_array_set
from calipers.core.errors import FileFormatError, GateFailed, ModelMismatchError
from calipers.core.transit_files import read_gaussian_vectors
from conftest import inprogress, run_stage

pytest.importorskip("batman")

SIM = {"n_bins": 12, "n_times": 48, "block_size": 64}
TRAIN = {"channels": 8, "dilations": [1, 2], "hidden": 8, "max_epochs": 6, "patience": 6, "batch_size": 32,
         "device": "cpu", "n_members": 2}


def config(directory, extra=None) -> str:
    cfg = {"global": {"simulator": SIM},
           "SimTrain": {"name": "SimTrain", "seed": 1, "n_planets": 300, "chunk_size": 128},
           "SimCal": {"name": "SimCal", "seed": 2, "n_planets": 200, "chunk_size": 128},
           "SimTest": {"name": "SimTest", "seed": 3, "n_planets": 150, "chunk_size": 128},
           "TransitTrain": TRAIN | {"seed": 4},
           "GaussianGate": {"on_fail": "warn"}} | (extra or {})
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("transit")
    cfg = config(d)
    out = {k: str(d / f"{k}.hdf5") for k in ("lc_train", "lc_cal", "lc_test", "train", "cal", "test", "pred_cal",
                                             "pred_test", "calibrated")}
    for name, lc in (("SimTrain", "lc_train"), ("SimCal", "lc_cal"), ("SimTest", "lc_test")):
        run_stage("TransitSimulate", cfg, name=name, light_curves=out[lc])
    for lc, dep in (("lc_train", "train"), ("lc_cal", "cal"), ("lc_test", "test")):
        run_stage("DepthExtract", cfg, light_curves=out[lc], depths=out[dep])
    out["model"] = str(d / "model")
    run_stage("TransitTrain", cfg, depths=out["train"], held_out_depths=out["cal"], model=out["model"])
    for dep, pred in (("cal", "pred_cal"), ("test", "pred_test")):
        run_stage("TransitPredict", cfg, model=out["model"], depths=out[dep], predictions=out[pred])
    out["calibrator"] = str(d / "calibrator.json")
    run_stage("GaussianCalibrate", cfg, predictions=out["pred_cal"], truth=out["cal"], calibrator=out["calibrator"])
    run_stage("GaussianApplyCalibration", cfg, predictions=out["pred_test"], calibrator=out["calibrator"],
              calibrated=out["calibrated"])
    out["gate"], out["audit"], out["report"] = str(d / "gate"), str(d / "audit"), str(d / "report")
    run_stage("GaussianGate", cfg, predictions=out["calibrated"], truth=out["test"], report=out["gate"])
    run_stage("TransitAudit", cfg, predictions=out["calibrated"], audit=out["audit"])
    run_stage("TransitReport", cfg, raw_predictions=out["pred_test"], predictions=out["calibrated"],
              truth=out["test"], training_depths=out["train"], audit=out["audit"], gate=out["gate"],
              transit_report=out["report"])
    out["dir"], out["config"] = d, cfg
    return out


def test_end_to_end_outputs(run):
    mu, sigma, meta, info = read_gaussian_vectors(run["calibrated"])
    assert mu.shape == (150, 12) and np.all(sigma > 0)
    np.testing.assert_array_equal(meta["id"], np.arange(150))
    raw_mu, raw_sigma, _, _ = read_gaussian_vectors(run["pred_test"])
    np.testing.assert_array_equal(raw_mu, mu)  # calibration changes sigma only
    cal = json.loads(open(run["calibrator"]).read())
    assert cal["method"] == "temperature_conformal" and len(cal["conformal"]["factors"]) == 12
    np.testing.assert_allclose(sigma, raw_sigma * cal["temperature"] * np.array(cal["conformal"]["factors"]),
                               rtol=1e-12)
    gate = json.loads(open(f"{run['gate']}/report.json").read())
    assert len(gate["coverage_1sigma_per_output"]) == 12
    assert {c["name"] for c in gate["checks"]} == {"coverage_1sigma_min", "coverage_1sigma_max",
                                                    "coverage_2sigma_min", "coverage_2sigma_max"}
    audit = json.load(open(f"{run['audit']}/audit.json"))
    assert len(audit) == 150 and audit[0]["planet_id"] == 0
    assert set(audit[0]["loss_shares"]) == {"smoothness", "positivity", "band_coherence", "seam"}
    report = json.loads(open(f"{run['report']}/report.json").read())
    names = [r["predictor"] for r in report["predictors"]]
    assert names == ["least squares (formal sigma)", "network", "network, calibrated"]
    sub = np.loadtxt(f"{run['report']}/submission.csv", delimiter=",", skiprows=1)
    header = open(f"{run['report']}/submission.csv").readline().strip().split(",")
    assert header[:2] == ["planet_id", "mu_0"] and header[-1] == "sigma_11" and sub.shape == (150, 25)
    np.testing.assert_allclose(sub[:, 1:13], mu, rtol=1e-7)
    for fig in ("example_spectra", "coverage_per_bin", "z_scores"):
        assert f"{fig}.png" in open(f"{run['report']}/index.html").read()
    depths, dmeta = read_array_set(run["test"], ["d_hat", "depth"], meta=None)
    assert {"planet_id", "white_depth", "white_sigma"} <= set(dmeta)
    # a two-member deep ensemble: the predictions are its mixture moments
    from calipers.stages.transit import read_depth_features, read_transit_model
    from calipers.transit.model import predict_ensemble

    states, net, model_meta = read_transit_model(run["model"])
    assert len(states) == 2 and [m["seed"] for m in model_meta["model_card"]["members"]] == [4000, 4001]
    xb, xg, base, _, _, _ = read_depth_features(run["test"])
    want_mu, want_sigma = predict_ensemble(states, net, xb, xg, base)
    np.testing.assert_allclose(raw_mu, want_mu, rtol=1e-12)
    np.testing.assert_allclose(raw_sigma, want_sigma, rtol=1e-12)


def test_training_and_prediction_are_deterministic(run, tmp_path):
    again = str(tmp_path / "model")
    run_stage("TransitTrain", run["config"], depths=run["train"], held_out_depths=run["cal"], model=again)
    pred = str(tmp_path / "pred.hdf5")
    run_stage("TransitPredict", run["config"], model=again, depths=run["test"], predictions=pred)
    a, b = read_gaussian_vectors(pred), read_gaussian_vectors(run["pred_test"])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_nan_light_curve_point_is_named_and_nothing_written(run, tmp_path):
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(open(run["lc_test"], "rb").read())
    with h5py.File(bad, "a") as f:
        f["flux"][7, 3, 20] = np.nan
    out = tmp_path / "depths.hdf5"
    with pytest.raises(FileFormatError, match=r"bad.hdf5: 'flux' is not finite .* planet row 7, bin 3, time index 20"):
        run_stage("DepthExtract", run["config"], light_curves=str(bad), depths=str(out))
    assert not out.exists() and not inprogress(out).exists()


def test_other_bin_count_and_negative_sigma_are_refused(run, tmp_path):
    cfg = config(tmp_path, {"global": {"simulator": SIM | {"n_bins": 10}}})
    lc, dep = str(tmp_path / "lc10.hdf5"), str(tmp_path / "d10.hdf5")
    run_stage("TransitSimulate", cfg, name="SimTest", light_curves=lc)
    run_stage("DepthExtract", cfg, light_curves=lc, depths=dep)
    out = tmp_path / "pred.hdf5"
    with pytest.raises(ModelMismatchError, match="10 bins per planet; the model .* was trained on 12"):
        run_stage("TransitPredict", run["config"], model=run["model"], depths=dep, predictions=str(out))
    assert not out.exists() and not inprogress(out).exists()
    neg = tmp_path / "neg.hdf5"
    neg.write_bytes(open(run["test"], "rb").read())
    with h5py.File(neg, "a") as f:
        f["sigma_hat"][4, 2] = -1e-4
    with pytest.raises(FileFormatError, match=r"'sigma_hat' is not > 0 .* planet row 4, bin 2"):
        run_stage("TransitPredict", run["config"], model=run["model"], depths=str(neg), predictions=str(out))
    assert not out.exists() and not inprogress(out).exists()


def test_gate_fails_over_confident_predictions(run, tmp_path):
    from calipers.core.array_sets import ArraySetWriter
    from calipers.core.transit_files import GAUSSIAN_VECTORS

    mu, sigma, meta, info = read_gaussian_vectors(run["calibrated"])
    narrow = str(tmp_path / "narrow.hdf5")
    with ArraySetWriter(narrow, GAUSSIAN_VECTORS, {"mu": ((12,), np.float64), "sigma": ((12,), np.float64)},
                        fixed=info["fixed"]) as out:
        out.append({"mu": mu, "sigma": sigma / 3.0}, {"id": meta["id"]})
    cfg = config(tmp_path, {"GaussianGate": {"on_fail": "error"}})
    with pytest.raises(GateFailed, match="coverage_1sigma_min") as err:
        run_stage("GaussianGate", cfg, predictions=narrow, truth=run["test"], report=str(tmp_path / "gate"))
    assert "coverage_2sigma_min" in str(err.value)
    rep = json.loads((tmp_path / "gate.FAILED" / "report.json").read_text())
    assert max(rep["coverage_1sigma_per_output"]) < 0.64
