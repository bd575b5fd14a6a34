"""Depth extraction (exact without noise, honest formal errors under white noise, too small under
the correlated jitter), the Ariel score's fixed points, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from calipers.transit.extract import extract_depths
from calipers.transit.score import SIGMA_TRUE, NaivePredictor, ariel_score
from calipers.transit.simulate import TransitSimConfig, simulate_transits

pytest.importorskip("batman")


def extract(s):
    p = s.planets
    return extract_depths(s.time, s.flux, s.white, s.ld, s.ld_white, p["period"], p["a_rs"], p["inclination"])


def test_noise_free_light_curves_give_the_depths_back():
    cfg = TransitSimConfig(n_bins=15, n_times=150, block_size=32, s0_range=(1e-9, 1e-9), drift_scale=0.0)
    s = simulate_transits(cfg, 20, seed=1)
    fit = extract(s)
    # exact up to the shape of each bin computed at its first-pass radius
    np.testing.assert_allclose(fit["d_hat"], s.depth, rtol=2e-4)
    np.testing.assert_allclose(fit["white_depth"], s.white_depth, rtol=2e-4)  # 3 fixed-point refits


def test_formal_errors_are_right_for_white_noise_and_too_small_under_jitter():
    white_only = TransitSimConfig(n_bins=20, n_times=120, block_size=64, jitter_amplitude=0.0)
    s = simulate_transits(white_only, 128, seed=2)
    fit = extract(s)
    z = (fit["d_hat"] - s.depth) / fit["sigma_hat"]
    # 2,560 bins; the shape mismatch is ~1e-3 of the depth, far below the noise
    assert np.std(z) == pytest.approx(1.0, abs=0.06)
    jittered = simulate_transits(TransitSimConfig(n_bins=20, n_times=120, block_size=64), 128, seed=2)
    fit = extract(jittered)
    z = (fit["d_hat"] - jittered.depth) / fit["sigma_hat"]
    assert np.std(z) > 1.3  # the AR(1) residual is correlated in time: the formal sigma is too small


def test_non_finite_points_are_named():
    s = simulate_transits(TransitSimConfig(n_bins=6, n_times=40, block_size=8), 4, seed=3)
    s.flux[2, 4, 17] = np.nan
    with pytest.raises(ValueError, match="flux is not finite at planet 2, bin 4, time index 17"):
        extract(s)


def test_ariel_score_fixed_points():
    rng = np.random.default_rng(0)
    y = rng.uniform(0.005, 0.02, (50, 30))
    naive = NaivePredictor.fit(y)
    assert naive[0] == pytest.approx(y.mean()) and naive[1] == pytest.approx(y.std())
    assert ariel_score(y, y, np.full_like(y, SIGMA_TRUE), naive) == pytest.approx(1.0, abs=1e-12)
    assert ariel_score(y, np.full_like(y, naive[0]), np.full_like(y, naive[1]), naive, clip=False) == \
        pytest.approx(0.0, abs=1e-12)
    # a prediction worse than naive is clipped to 0 (the challenge's rule) unless asked not to
    bad = (y + 0.01, np.full_like(y, 1e-5))
    assert ariel_score(y, *bad, naive) == 0.0 and ariel_score(y, *bad, naive, clip=False) < 0
    # exactly halfway in GLL: sigma chosen so that GLL = (GLL_ideal + GLL_naive) / 2 for mu = y
    gll_ideal = -0.5 * np.log(2 * np.pi) - np.log(SIGMA_TRUE)
    gll_naive = np.mean(-0.5 * np.log(2 * np.pi) - np.log(naive[1]) - 0.5 * ((y - naive[0]) / naive[1]) ** 2)
    half_sigma = np.exp(-(0.5 * (gll_ideal + gll_naive) + 0.5 * np.log(2 * np.pi)))
    assert ariel_score(y, y, np.full_like(y, half_sigma), naive) == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="sigma must be positive.*row 3, output 7"):
        s = np.full_like(y, 1e-4)
        s[3, 7] = -1.0
        ariel_score(y, y, s, naive)


def test_per_bin_fit_equals_the_full_least_squares():
    from calipers.transit.extract import _fit_bins

    rng = np.random.default_rng(5)
    n, k, t = 3, 4, 50
    tau = np.linspace(-1, 1, t)
    shared = np.stack([np.ones((n, t)), np.broadcast_to(tau, (n, t)), np.broadcast_to(tau ** 2, (n, t)),
                       rng.normal(size=(n, t))], axis=-1)
    shapes = rng.uniform(0, 1, (n, k, t))
    flux = rng.normal(size=(n, k, t))
    d, sigma, rms, beta = _fit_bins(shared, shapes, flux)
    for i in range(n):
        for j in range(k):
            x = np.column_stack([shared[i], -shapes[i, j]])
            coef, rss, _, _ = np.linalg.lstsq(x, flux[i, j], rcond=None)
            s2 = rss[0] / (t - 5)
            assert d[i, j] == pytest.approx(coef[4], rel=1e-9)
            assert beta[i, j] == pytest.approx(coef[3], rel=1e-9)
            assert sigma[i, j] == pytest.approx(np.sqrt(s2 * np.linalg.inv(x.T @ x)[4, 4]), rel=1e-9)
            assert rms[i, j] == pytest.approx(np.sqrt(s2), rel=1e-9)
