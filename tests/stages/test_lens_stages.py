"""The classifier calibration, selection-function and gate stages on synthetic predictions whose
right answers are known exactly (no CNN, no simulator)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy.stats import norm

from calipers.core.class_predictions import ClassPredictions, read_class_predictions, sigmoid, write_class_predictions
from calipers.core.errors import GateFailed
from calipers.lens.simulate import CLASS_NAMES
from conftest import inprogress, run_stage

D = 2.5  # separation of the lens and non-lens score distributions (unit variance)


def true_logit(score, prevalence):
    """Exact posterior log-odds of a lens for equal-variance Gaussians N(D, 1) vs N(0, 1)."""
    return D * score - D ** 2 / 2 + np.log(prevalence / (1 - prevalence))


def predictions(path, n_pos, n_neg, seed, scale=1.0, meta=None, n_members=3):
    """Members report ``scale`` x the exact log-odds at the sample prevalence (scale 1: calibrated)."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    score = rng.normal(size=len(labels)) + D * labels
    prevalence = n_pos / len(labels) if n_pos and n_neg else 0.25
    exact = true_logit(score, prevalence)
    members = scale * exact[None, :] + 1e-3 * rng.normal(size=(n_members, len(labels)))
    var = np.full_like(members, 0.01)
    cols = {"label": labels, "object_class": np.where(labels == 1, 0, rng.integers(1, 7, len(labels)))}
    cols |= meta or {}
    pred = ClassPredictions(members.mean(0), sigmoid(members.mean(0)), members, var,
                            {"logit_single_view": members[0]}, cols, {"calibration": {"calibrated": False}})
    write_class_predictions(str(path), pred)
    return exact


def config(tmp_path, **sections):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


@pytest.fixture
def calibrated(tmp_path):
    """An overconfident classifier (logits x 2) calibrated on its own calibration set, then applied."""
    predictions(tmp_path / "cal.hdf5", 5000, 15000, seed=1, scale=2.0)
    exact_test = predictions(tmp_path / "test.hdf5", 2000, 6000, seed=2, scale=2.0)
    neg_meta = None
    predictions(tmp_path / "neg.hdf5", 0, 40000, seed=3, scale=2.0, meta=neg_meta)
    cfg = config(tmp_path, ClassifierCalibrate={"deployment_prevalence": 1e-3, "fusion": "auto"},
                 ClassifierApplyCalibration={})
    run_stage("ClassifierCalibrate", cfg, calibration_predictions=str(tmp_path / "cal.hdf5"),
              calibrator=str(tmp_path / "calibrator.json"), calibration_report=str(tmp_path / "cal_report"))
    for name in ("test", "neg"):
        run_stage("ClassifierApplyCalibration", cfg, calibrator=str(tmp_path / "calibrator.json"),
                  predictions=str(tmp_path / f"{name}.hdf5"),
                  calibrated_predictions=str(tmp_path / f"{name}_cal.hdf5"))
    return tmp_path, exact_test


def test_calibration_recovers_the_temperature_and_the_exact_posterior(calibrated):
    d, exact = calibrated
    spec = json.loads((d / "calibrator.json").read_text())
    assert spec["fit"]["temperature"] == pytest.approx(2.0, rel=0.05)
    test = read_class_predictions(str(d / "test_cal.hdf5"))
    # calibrated logits are the exact posterior log-odds at the test prevalence (0.25)
    assert np.abs(test.logit - exact).max() < 0.1 * np.abs(exact).max()
    assert np.median(np.abs(test.logit - exact)) < 0.05
    # prior shift: the deployment logit differs from it by exactly logit(1e-3) - logit(calibration prevalence)
    shift = np.log(1e-3 / (1 - 1e-3)) - np.log(0.25 / 0.75)
    np.testing.assert_allclose(test.columns["logit_deploy"] - test.logit, shift, atol=1e-9)
    assert test.attrs["calibration"]["deployment_prevalence"] == 1e-3
    np.testing.assert_allclose(test.columns["logit_uncalibrated"], test.member_logits.mean(0))


def test_gate_passes_a_calibrated_finder_and_stops_a_weak_one(calibrated, tmp_path):
    d, _ = calibrated
    rng = np.random.default_rng(5)
    # selection function input: a lens sample with strata columns
    n = 3000
    meta = {"theta_e": rng.uniform(0.8, 3.0, n), "psf_fwhm_r": rng.uniform(0.6, 1.4, n)}
    predictions(d / "sf.hdf5", n, 0, seed=6, scale=2.0, meta=meta)
    cfg = config(d, ClassifierApplyCalibration={},
                 LensSelectionFunction={"strata": {"theta_e": [0.8, 1.5, 2.2, 3.0], "psf_fwhm_r": [0.6, 1.0, 1.4]},
                                        "pairs": ["psf_fwhm_r:theta_e"], "fpr_target": 1e-3},
                 ClassifierGate={"min_auroc_lower": 0.95, "min_tpr": 0.2, "n_boot": 200,
                                 "max_fpr_upper": {c: 1.0 for c in CLASS_NAMES[1:]}})
    run_stage("ClassifierApplyCalibration", cfg, calibrator=str(d / "calibrator.json"),
              predictions=str(d / "sf.hdf5"), calibrated_predictions=str(d / "sf_cal.hdf5"))
    run_stage("LensSelectionFunction", cfg, lens_predictions=str(d / "sf_cal.hdf5"),
              negative_predictions=str(d / "neg_cal.hdf5"), selection_function=str(d / "sf"))
    sf = json.loads((d / "sf" / "selection_function.json").read_text())
    # the threshold at FPR 1e-3 on the negatives and the lenses' completeness above it (all strata alike)
    overall = [r for r in sf["strata"]["theta_e"] if r["status"] == "ok"]
    k = sum(r["k"] for r in overall)
    n_ok = sum(r["n"] for r in overall)
    analytic = norm.sf(norm.isf(1e-3) - D)  # TPR at FPR 1e-3 for N(D,1) vs N(0,1)
    assert abs(k / n_ok - analytic) < 4 * np.sqrt(analytic * (1 - analytic) / n_ok) + 4 / np.sqrt(40000)
    assert (d / "sf" / "heatmap_psf_fwhm_r__theta_e.png").exists()
    run_stage("ClassifierGate", cfg, predictions=str(d / "test_cal.hdf5"), negative_predictions=str(d / "neg_cal.hdf5"),
              selection_function=str(d / "sf"), gate_report=str(d / "gate"))
    report = json.loads((d / "gate" / "report.json").read_text())
    assert report["passed"]
    checks = {c["name"]: c for c in report["checks"]}
    auroc = norm.cdf(D / np.sqrt(2))  # analytic AUROC of the two Gaussians
    assert abs(report["metrics"]["auroc"] - auroc) < 0.01
    assert checks["ece"]["value"] < 0.02
    # a stricter gate stops it, naming the failed check; the report is kept aside
    strict = config(d, ClassifierGate={"min_auroc_lower": 0.99, "n_boot": 200,
                                       "max_fpr_upper": {c: 1.0 for c in CLASS_NAMES[1:]}})
    with pytest.raises(GateFailed, match="auroc_lower"):
        run_stage("ClassifierGate", strict, predictions=str(d / "test_cal.hdf5"),
                  negative_predictions=str(d / "neg_cal.hdf5"), selection_function=str(d / "sf"),
                  gate_report=str(d / "gate2"))
    assert not (d / "gate2").exists() and (d / "gate2.FAILED" / "index.html").exists()


def test_uncalibrated_predictions_are_refused_by_the_gate(calibrated, tmp_path):
    from calipers.core.errors import FileFormatError

    d, _ = calibrated
    cfg = config(tmp_path, ClassifierGate={})
    target = tmp_path / "gate"
    with pytest.raises(FileFormatError, match="ClassifierApplyCalibration"):
        run_stage("ClassifierGate", cfg, predictions=str(d / "test.hdf5"), negative_predictions=str(d / "neg.hdf5"),
                  selection_function=str(d), gate_report=str(target))
    assert not target.exists() and not inprogress(target).exists()


def test_calibration_needs_both_classes(tmp_path):
    from calipers.core.errors import FileFormatError

    predictions(tmp_path / "neg.hdf5", 0, 500, seed=3)
    cfg = config(tmp_path, ClassifierCalibrate={})
    with pytest.raises(FileFormatError, match="one class"):
        run_stage("ClassifierCalibrate", cfg, calibration_predictions=str(tmp_path / "neg.hdf5"),
                  calibrator=str(tmp_path / "c.json"), calibration_report=str(tmp_path / "r"))
    assert not (tmp_path / "c.json").exists()


def test_calibration_with_negatives_fits_the_deployment_tail(tmp_path):
    from calipers.core.errors import ConfigError, FileFormatError

    # members report 2x the exact log-odds at 1:3: the temperature (about 2) and the prior shift make
    # them exact at 1e-3, so the affine step fitted on 100,000 negatives must stay near the identity
    predictions(tmp_path / "cal.hdf5", 4000, 12000, seed=11, scale=2.0)
    exact_test = predictions(tmp_path / "test.hdf5", 2000, 6000, seed=12, scale=2.0)
    predictions(tmp_path / "cal_neg.hdf5", 0, 100_000, seed=13, scale=2.0)
    cfg = config(tmp_path, ClassifierCalibrateWithNegatives={"deployment_prevalence": 1e-3},
                 ClassifierApplyCalibration={})
    run_stage("ClassifierCalibrateWithNegatives", cfg, calibration_predictions=str(tmp_path / "cal.hdf5"),
              negative_predictions=str(tmp_path / "cal_neg.hdf5"), calibrator=str(tmp_path / "calibrator.json"),
              calibration_report=str(tmp_path / "cal_report"))
    spec = json.loads((tmp_path / "calibrator.json").read_text())
    fit = spec["fit"]
    assert fit["deployment_fit"] == "affine" and fit["n_extra_negatives"] == 100_000
    # the logits are exact up to T, so the affine step is close to the identity and cannot lose likelihood
    assert fit["deployment_slope"] == pytest.approx(1.0, abs=0.1)
    assert fit["deployment_nll_affine"] <= fit["deployment_nll_prior_shift"]
    run_stage("ClassifierApplyCalibration", cfg, calibrator=str(tmp_path / "calibrator.json"),
              predictions=str(tmp_path / "test.hdf5"), calibrated_predictions=str(tmp_path / "test_cal.hdf5"))
    test = read_class_predictions(str(tmp_path / "test_cal.hdf5"))
    # the exact posterior at 1e-3 differs from the one at 0.25 by the prior shift
    exact_deploy = exact_test + np.log(1e-3 / (1 - 1e-3)) - np.log(0.25 / 0.75)
    top = exact_deploy > -3  # where the purity of a search is decided
    assert np.median(np.abs(test.columns["logit_deploy"][top] - exact_deploy[top])) < 0.2

    # a 'negative' with label 1 in the negatives-only input: named, nothing written
    predictions(tmp_path / "mixed.hdf5", 10, 1000, seed=14)
    target = tmp_path / "c2.json"
    with pytest.raises(FileFormatError, match="label must be 0.*first at row 0"):
        run_stage("ClassifierCalibrateWithNegatives", cfg, calibration_predictions=str(tmp_path / "cal.hdf5"),
                  negative_predictions=str(tmp_path / "mixed.hdf5"), calibrator=str(target),
                  calibration_report=str(tmp_path / "r2"))
    assert not target.exists() and not inprogress(target).exists()
    bad = config(tmp_path, ClassifierCalibrateWithNegatives={"deployment_fit": "prior_shift"})
    with pytest.raises(ConfigError, match="deployment_fit: affine"):
        run_stage("ClassifierCalibrateWithNegatives", bad, calibration_predictions=str(tmp_path / "cal.hdf5"),
                  negative_predictions=str(tmp_path / "cal_neg.hdf5"), calibrator=str(target),
                  calibration_report=str(tmp_path / "r2"))


def test_stacked_fusion_is_chosen_when_one_member_is_noise(tmp_path):
    """Member 2 reports noise: the auto fusion weighs it out (judged on cross-fitted logits), the
    apply stage uses the stored weights, and the 'uncalibrated' column stays the members' mean."""
    rng = np.random.default_rng(21)
    for name, n_pos, n_neg, seed in (("cal", 3000, 9000, 22), ("test", 1000, 3000, 23)):
        predictions(tmp_path / f"{name}.hdf5", n_pos, n_neg, seed=seed)
        pred = read_class_predictions(str(tmp_path / f"{name}.hdf5"))
        pred.member_logits[2] = 5.0 * rng.normal(size=pred.member_logits.shape[1])
        write_class_predictions(str(tmp_path / f"{name}.hdf5"), pred)
    cfg = config(tmp_path, ClassifierCalibrate={"fusion": "auto"}, ClassifierApplyCalibration={})
    run_stage("ClassifierCalibrate", cfg, calibration_predictions=str(tmp_path / "cal.hdf5"),
              calibrator=str(tmp_path / "calibrator.json"), calibration_report=str(tmp_path / "cal_report"))
    spec = json.loads((tmp_path / "calibrator.json").read_text())
    assert spec["fusion"] == "stacked" and abs(spec["stacking"]["weights"][2]) < 0.02
    assert spec["fit"]["auroc_stacked_fusion_cross_fitted"] > spec["fit"]["auroc_mean_fusion"]
    run_stage("ClassifierApplyCalibration", cfg, calibrator=str(tmp_path / "calibrator.json"),
              predictions=str(tmp_path / "test.hdf5"), calibrated_predictions=str(tmp_path / "test_cal.hdf5"))
    test = read_class_predictions(str(tmp_path / "test_cal.hdf5"))
    w, b = np.asarray(spec["stacking"]["weights"]), spec["stacking"]["intercept"]
    np.testing.assert_allclose(test.columns["logit_fused"], w @ test.member_logits + b, rtol=1e-6)
    np.testing.assert_allclose(test.columns["logit_uncalibrated"], test.member_logits.mean(0), rtol=1e-6)
