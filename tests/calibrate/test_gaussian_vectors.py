"""The shared Gaussian-vector layer: per-output conformal factors against their exact values and
their finite-sample guarantee; the log-likelihood, coverage and z-score metrics on exact cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from calipers.calibrate import GaussianWidthScaling
from calipers.calibrate.gaussian import PerOutputConformalScaling
from calipers.validate.gaussian import NOMINAL, coverage_per_output, gaussian_log_likelihood, z_score_summary


def test_conformal_factor_is_the_order_statistic_over_the_gaussian_quantile():
    # one output, scores |z| = 1..9: n = 9, c = 0.6827 -> ceil(10 c) = 7th smallest = 7
    z = np.arange(1.0, 10.0)[:, None]
    sc = PerOutputConformalScaling().fit(np.zeros_like(z), np.ones_like(z), z)
    assert sc.factors[0] == pytest.approx(7.0 / norm.ppf(0.5 * (1 + NOMINAL[1])), rel=1e-12)  # 7 / 1.0


def test_factors_recover_known_per_output_miscalibration_and_cover_new_data():
    rng = np.random.default_rng(1)
    true_scale = np.array([0.5, 1.0, 2.0, 3.0])  # sigma is that many times too small per output
    n = 20_000
    sigma = rng.uniform(0.5, 2.0, (n, 4))
    y = rng.normal(size=(n, 4)) * sigma * true_scale
    sc = PerOutputConformalScaling().fit(np.zeros_like(y), sigma, y)
    np.testing.assert_allclose(sc.factors, true_scale, rtol=0.03)
    new_sigma = rng.uniform(0.5, 2.0, (n, 4))
    new_y = rng.normal(size=(n, 4)) * new_sigma * true_scale
    cover = coverage_per_output(new_y, np.zeros_like(new_y), sc.transform(new_sigma), 1.0)
    np.testing.assert_allclose(cover, NOMINAL[1], atol=0.012)  # 3 sigma of 20,000 rows
    cover2 = coverage_per_output(new_y, np.zeros_like(new_y), sc.transform(new_sigma), 2.0)
    np.testing.assert_allclose(cover2, NOMINAL[2], atol=0.006)  # Gaussian errors: 2 sigma follows
    again = PerOutputConformalScaling.from_dict(sc.to_dict())
    np.testing.assert_array_equal(again.factors, sc.factors)
    with pytest.raises(ValueError, match="3 outputs"):
        sc.transform(np.ones((2, 3)))
    with pytest.raises(ValueError, match="too few"):
        PerOutputConformalScaling(coverage=0.99).fit(np.zeros((5, 1)), np.ones((5, 1)), np.ones((5, 1)))


def test_temperature_is_the_rms_z_for_vectors():
    y = np.array([[2.0, -2.0], [2.0, 2.0]])
    t = GaussianWidthScaling().fit(np.zeros_like(y), np.ones_like(y), y)
    assert t.temperature == pytest.approx(2.0)


def test_log_likelihood_coverage_and_z_summary_exact():
    mu = np.zeros((2, 3))
    sigma = np.full((2, 3), 2.0)
    y = np.array([[0.0, 3.0, 5.0], [-1.0, 0.0, -4.0]])
    gll = gaussian_log_likelihood(y, mu, sigma)
    assert gll[0, 0] == pytest.approx(-0.5 * math.log(2 * math.pi) - math.log(2.0))
    assert gll[0, 1] == pytest.approx(gll[0, 0] - 0.5 * 1.5 ** 2)  # 1.5 sigma away
    np.testing.assert_array_equal(coverage_per_output(y, mu, sigma, 1.0), [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(coverage_per_output(y, mu, sigma, 2.0), [1.0, 1.0, 0.5])
    s = z_score_summary(y, mu, sigma)
    assert s["z_mean"] == pytest.approx(np.mean(y / 2.0)) and s["coverage_1sigma_min"] == 0.0
    assert s["coverage_2sigma"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="not finite at row 1, output 2"):
        y[1, 2] = np.inf
        gaussian_log_likelihood(y, mu, sigma)


def test_window_pools_neighbouring_outputs():
    # outputs 0-2 with |z| 1..9, 10..18 and 19..27: window 1 pools 0-1 for output 0 (18 scores)
    z = np.stack([np.arange(1.0, 10.0), np.arange(10.0, 19.0), np.arange(19.0, 28.0)], axis=1)
    sc = PerOutputConformalScaling(window=1).fit(np.zeros_like(z), np.ones_like(z), z)
    z_c = norm.ppf(0.5 * (1 + NOMINAL[1]))
    # output 0: 18 scores 1..18, ceil(19 c) = 13th smallest = 13; output 1: 27 scores, ceil(28 c) = 20th = 20
    np.testing.assert_allclose(sc.factors[:2], np.array([13.0, 20.0]) / z_c, rtol=1e-12)
    assert PerOutputConformalScaling.from_dict(sc.to_dict()).window == 1
    with pytest.raises(ValueError, match="window"):
        PerOutputConformalScaling(window=-1)
