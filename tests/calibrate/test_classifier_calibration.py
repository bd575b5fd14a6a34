"""Binary temperature scaling, prior shift and the classifier calibrator, against analytic cases.

(Named test_classifier_calibration.py, not test_classification.py: tests/validate/ already has a
test_classification.py and the suite's test directories are not packages, so two test modules
with one basename would collide on import.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit

from calipers.calibrate import BinaryTemperatureScaling, ClassifierCalibrator, DeploymentAffine, PriorShift
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


def _gaussian_population(mu0, mu1, s, n=4001):
    """Both classes' densities on one grid, as per-object weights: an exact 'population' sample."""
    z = np.linspace(min(mu0, mu1) - 9 * s, max(mu0, mu1) + 9 * s, n)
    dens = lambda mu: np.exp(-0.5 * ((z - mu) / s) ** 2)  # noqa: E731
    logits = np.r_[z, z]
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    return logits, labels, np.r_[dens(mu1), dens(mu0)]


@pytest.mark.parametrize("pi", [0.5, 1e-3])
def test_deployment_affine_is_the_exact_posterior_for_equal_variance_gaussians(pi):
    mu0, mu1, s = 0.5, 3.0, 1.2
    logits, labels, w = _gaussian_population(mu0, mu1, s)
    aff = DeploymentAffine(pi).fit(logits, labels, weights=w)
    assert aff.slope == pytest.approx((mu1 - mu0) / s ** 2, rel=1e-6)
    assert aff.offset == pytest.approx((mu0 ** 2 - mu1 ** 2) / (2 * s ** 2) + np.log(pi / (1 - pi)), rel=1e-6)
    assert aff.nll_after <= aff.nll_before
    # an input already calibrated at pi is left alone
    exact = aff.transform(logits)
    again = DeploymentAffine(pi).fit(exact, labels, weights=w)
    assert again.slope == pytest.approx(1.0, abs=1e-6) and again.offset == pytest.approx(0.0, abs=1e-5)
    assert again.nll_after == pytest.approx(again.nll_before, rel=1e-9)


def test_deployment_affine_class_weights_do_not_depend_on_class_sizes():
    # the deployment mixture weighs the classes pi : 1 - pi however many rows each has
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(2.5, 1.0, 2000), rng.normal(0.0, 1.0, 50_000)
    a = DeploymentAffine(1e-3).fit(np.r_[pos, neg], np.r_[np.ones(2000), np.zeros(50_000)])
    b = DeploymentAffine(1e-3).fit(np.r_[pos, pos, neg], np.r_[np.ones(4000), np.zeros(50_000)])
    assert a.slope == pytest.approx(b.slope, rel=1e-9) and a.offset == pytest.approx(b.offset, rel=1e-9)
    assert a.slope == pytest.approx(2.5, rel=0.05)  # sampling error of a 2-parameter fit
    back = DeploymentAffine.from_dict(json.loads(json.dumps(a.to_dict())))
    np.testing.assert_array_equal(back.transform(pos), a.transform(pos))
    with pytest.raises(ValueError, match="positives and negatives"):
        DeploymentAffine(1e-3).fit(neg, np.zeros(neg.size))
    with pytest.raises(ValueError, match="DeploymentAffine: prevalence"):
        DeploymentAffine(0.0)
    with pytest.raises(RuntimeError, match="before fit"):
        DeploymentAffine(1e-3).transform(pos)


def test_calibrator_affine_step_uses_the_extra_negatives_and_round_trips():
    rng = np.random.default_rng(7)
    mu, s = 2.5, 1.0
    x_pos, x_neg = rng.normal(mu, s, 3000), rng.normal(0.0, s, 9000)
    raw = np.r_[x_pos, x_neg]  # a score, not a logit: the prior shift alone cannot be right
    labels = np.r_[np.ones(3000, int), np.zeros(9000, int)]
    extra = rng.normal(0.0, s, 200_000)
    plain = ClassifierCalibrator().fit(raw, labels, 1e-3)
    cal = ClassifierCalibrator().fit(raw, labels, 1e-3, deployment_fit="affine", extra_negative_logits=extra)
    assert plain.affine is None and cal.affine.n_neg == 9000 + extra.size and cal.affine.n_pos == 3000
    # the deployment logit is close to the exact posterior at 1e-3; the calibration-prevalence one is untouched
    grid = np.linspace(1.0, 5.0, 9)
    exact = mu * grid / s ** 2 - mu ** 2 / (2 * s ** 2) + np.log(1e-3 / (1 - 1e-3))
    assert np.max(np.abs(cal.transform(grid) - exact)) < 0.3
    assert np.max(np.abs(cal.transform(grid) - exact)) < np.max(np.abs(plain.transform(grid) - exact))
    np.testing.assert_array_equal(cal.transform(grid, "calibration"), plain.transform(grid, "calibration"))
    back = ClassifierCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(back.transform(grid), cal.transform(grid))
    with pytest.raises(ValueError, match="deployment_fit"):
        ClassifierCalibrator().fit(raw, labels, 1e-3, deployment_fit="platt")
    with pytest.raises(ValueError, match="extra_negative_logits"):
        ClassifierCalibrator().fit(raw, labels, 1e-3, extra_negative_logits=extra)


def test_temperature_with_bias_is_platt_scaling_and_recovers_a_shifted_logit():
    rng = np.random.default_rng(9)
    raw = rng.normal(0.0, 3.0, 80_000)
    labels = _labels_from(raw / 2.0 - 1.5, rng)  # the truth: T = 2 and an offset of -1.5
    plain = BinaryTemperatureScaling().fit(raw, labels)
    platt = BinaryTemperatureScaling(fit_bias=True).fit(raw, labels)
    assert platt.temperature == pytest.approx(2.0, rel=0.03) and platt.bias == pytest.approx(-1.5, abs=0.05)
    assert plain.bias == 0.0 and platt.nll_after < plain.nll_after
    np.testing.assert_allclose(platt.transform(raw), raw / platt.temperature + platt.bias)
    back = BinaryTemperatureScaling.from_dict(json.loads(json.dumps(platt.to_dict())))
    np.testing.assert_array_equal(back.transform(raw), platt.transform(raw))
    cal = ClassifierCalibrator().fit(raw, labels, 1e-3, fit_bias=True)
    assert cal.temperature.bias == pytest.approx(platt.bias)
    # an old calibrator file (no bias keys) still reads as plain temperature scaling
    old = {k: v for k, v in plain.to_dict().items() if k not in ("fit_bias", "bias")}
    np.testing.assert_array_equal(BinaryTemperatureScaling.from_dict(old).transform(raw), plain.transform(raw))


def test_stacked_fusion_finds_the_informative_member_and_cross_fits():
    from calipers.calibrate import StackedFusion

    rng = np.random.default_rng(11)
    n = 20_000
    truth = rng.normal(0.0, 2.0, n)
    labels = _labels_from(truth, rng)
    # member 0 is the exact log-odds, member 1 pure noise: the fit weighs member 0 by 1
    members = np.stack([truth, rng.normal(0.0, 2.0, n)])
    fus = StackedFusion(l2=0.0).fit(members, labels)
    assert fus.weights[0] == pytest.approx(1.0, abs=0.05) and abs(fus.weights[1]) < 0.03
    assert fus.intercept == pytest.approx(0.0, abs=0.05)
    np.testing.assert_allclose(fus.transform(members), fus.weights @ members + fus.intercept)
    oof = fus.cross_fitted(members, labels, n_folds=4)
    assert oof.shape == (n,) and np.corrcoef(oof, truth)[0, 1] > 0.99
    back = StackedFusion.from_dict(json.loads(json.dumps(fus.to_dict())))
    np.testing.assert_array_equal(back.transform(members), fus.transform(members))
    with pytest.raises(ValueError, match="fitted on 2 members"):
        fus.transform(members[:1])
    with pytest.raises(ValueError, match="member 1, row 3"):
        bad = members.copy()
        bad[1, 3] = np.nan
        StackedFusion().fit(bad, labels)
