"""Binary temperature scaling, prior shift and the classifier calibrator, against analytic cases.

(Named test_classifier_calibration.py, not test_classification.py: tests/validate/ already has a
test_classification.py and the suite's test directories are not packages, so two test modules
with one basename would collide on import.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit

from calipers.calibrate import BinaryTemperatureScaling, ClassifierCalibrator, PriorShift
from calipers.validate.classification import binary_nll


def _labels_from(logits, rng):
    return (rng.random(logits.size) < expit(logits)).astype(int)


def test_temperature_recovers_known_t_within_fisher_error():
    rng = np.random.default_rng(0)
    t0 = 2.5
    raw = rng.normal(0.0, 4.0, 60_000)  # over-confident logits: the truth is raw / t0
    labels = _labels_from(raw / t0, rng)
    ts = BinaryTemperatureScaling().fit(raw, labels)
    # Fisher information for beta = 1/T: sum l^2 p (1 - p); sigma_T = T^2 sigma_beta
    p = expit(raw / t0)
    sigma_t = t0 ** 2 / np.sqrt(np.sum(raw ** 2 * p * (1 - p)))
    assert abs(ts.temperature - t0) < 4 * sigma_t, (ts.temperature, sigma_t)
    assert ts.nll_after <= ts.nll_before
    assert ts.nll_before == pytest.approx(binary_nll(raw, labels, from_logits=True), rel=1e-12)
    assert ts.nll_after == pytest.approx(binary_nll(raw / ts.temperature, labels, from_logits=True), rel=1e-12)
    np.testing.assert_allclose(ts.transform(raw), raw / ts.temperature)


def test_temperature_of_calibrated_logits_is_one_and_nll_never_rises():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 2.0, 40_000)
    labels = _labels_from(logits, rng)
    ts = BinaryTemperatureScaling().fit(logits, labels)
    p = expit(logits)
    sigma_t = 1.0 / np.sqrt(np.sum(logits ** 2 * p * (1 - p)))
    assert abs(ts.temperature - 1.0) < 4 * sigma_t
    assert ts.nll_after <= ts.nll_before


def test_integer_weights_equal_duplicated_rows():
    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 3.0, 500)
    labels = _labels_from(logits / 1.7, rng)
    counts = rng.integers(0, 4, 500)
    weighted = BinaryTemperatureScaling().fit(logits, labels, weights=counts)
    duplicated = BinaryTemperatureScaling().fit(np.repeat(logits, counts), np.repeat(labels, counts))
    assert weighted.temperature == pytest.approx(duplicated.temperature, rel=1e-6)
    assert weighted.nll_after == pytest.approx(duplicated.nll_after, rel=1e-9)


def test_temperature_round_trip_and_errors():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, 1000)
    labels = _labels_from(logits, rng)
    ts = BinaryTemperatureScaling().fit(logits, labels)
    back = BinaryTemperatureScaling.from_dict(json.loads(json.dumps(ts.to_dict())))
    np.testing.assert_array_equal(back.transform(logits), ts.transform(logits))
    with pytest.raises(RuntimeError, match="before fit"):
        BinaryTemperatureScaling().transform(logits)
    bad = logits.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        BinaryTemperatureScaling().fit(bad, labels)
    with pytest.raises(ValueError, match="0 or 1"):
        BinaryTemperatureScaling().fit(logits, np.full(1000, 2))
    with pytest.raises(ValueError, match="weights"):
        BinaryTemperatureScaling().fit(logits, labels, weights=-np.ones(1000))


def _gaussian_posterior_logit(x, prevalence, mu0=0.0, mu1=2.0, sigma=1.3):
    """Exact posterior log-odds of class 1 for equal-variance Gaussian class densities."""
    return (np.log(prevalence / (1 - prevalence)) + (mu1 - mu0) / sigma ** 2 * x
            - (mu1 ** 2 - mu0 ** 2) / (2 * sigma ** 2))


def test_prior_shift_is_the_exact_bayes_posterior_at_the_new_prevalence():
    rng = np.random.default_rng(4)
    n_pos, n_neg = 250, 750  # calibration sample at prevalence 0.25 exactly
    x = np.concatenate([rng.normal(2.0, 1.3, n_pos), rng.normal(0.0, 1.3, n_neg)])
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    calibrated = _gaussian_posterior_logit(x, 0.25)
    for deploy in (1e-3, 0.5, 0.9):
        fitted = PriorShift(deployment_prevalence=deploy).fit(labels)
        assert fitted.train_prevalence == 0.25
        given = PriorShift(deployment_prevalence=deploy, train_prevalence=0.25)
        truth = expit(_gaussian_posterior_logit(x, deploy))
        for shift in (fitted, given):
            np.testing.assert_allclose(expit(shift.transform(calibrated)), truth, rtol=0, atol=1e-12)


def test_prior_shift_validation_and_round_trip():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="deployment_prevalence"):
            PriorShift(deployment_prevalence=bad)
        with pytest.raises(ValueError, match="train_prevalence"):
            PriorShift(deployment_prevalence=0.1, train_prevalence=bad)
    with pytest.raises(ValueError, match="one class"):
        PriorShift(1e-3).fit(np.ones(10))
    with pytest.raises(RuntimeError, match="train_prevalence"):
        PriorShift(1e-3).transform(np.zeros(3))
    shift = PriorShift(1e-3).fit(np.r_[np.ones(3), np.zeros(1)], weights=np.r_[np.ones(3), 3.0])
    assert shift.train_prevalence == pytest.approx(0.5)
    back = PriorShift.from_dict(json.loads(json.dumps(shift.to_dict())))
    assert back == shift
    assert shift.shift == pytest.approx(np.log(1e-3 / (1 - 1e-3)))


def test_classifier_calibrator_temperature_then_prior_and_json_round_trip():
    rng = np.random.default_rng(5)
    n_pos, n_neg = 5000, 15000
    x = np.concatenate([rng.normal(2.0, 1.3, n_pos), rng.normal(0.0, 1.3, n_neg)])
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    true_logit = _gaussian_posterior_logit(x, 0.25)
    raw = 3.0 * true_logit  # an over-confident classifier
    cal = ClassifierCalibrator().fit(raw, labels, deployment_prevalence=1e-3)
    assert cal.temperature.temperature == pytest.approx(3.0, rel=0.05)
    assert cal.prior.train_prevalence == 0.25
    at_cal = cal.transform(raw, prevalence="calibration")
    np.testing.assert_allclose(at_cal, raw / cal.temperature.temperature)
    at_deploy = cal.transform(raw)
    np.testing.assert_allclose(at_deploy, at_cal + np.log(1e-3 / 0.999) - np.log(0.25 / 0.75))
    # close to the analytic posterior at the deployment prevalence (up to the fitted T)
    truth = expit(_gaussian_posterior_logit(x, 1e-3))
    assert np.max(np.abs(cal.probability(raw) - truth)) < 0.05
    back = ClassifierCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(back.transform(raw), at_deploy)
    with pytest.raises(ValueError, match="prevalence must be"):
        cal.transform(raw, prevalence="train")
    with pytest.raises(RuntimeError, match="before fit"):
        ClassifierCalibrator().transform(raw)
    with pytest.raises(ValueError, match="deployment_prevalence"):
        ClassifierCalibrator().fit(raw, labels, deployment_prevalence=0.0)
    explicit = ClassifierCalibrator().fit(raw, labels, deployment_prevalence=1e-3, train_prevalence=0.3)
    assert explicit.prior.train_prevalence == 0.3
