import galsim
import numpy as np
import pytest

from calipers.shear.bias import bin_index, fit_bias, fit_bias_calibrated, mean_response, response_calibrate
from calipers.shear.metacal import MetacalOperators, metacal_galsim, reconvolution_psf, response_matrix
from calipers.shear.simulate import ShearSimConfig, psf_image, render


def _weighted_chi(image, scale, sigma_w):
    """chi of the second moments of ``image`` times a round Gaussian weight of ``sigma_w`` about the centre."""
    n_y, n_x = image.shape
    y, x = (np.mgrid[:n_y, :n_x] - (n_y - 1) / 2) * scale
    w = image * np.exp(-0.5 * (x * x + y * y) / sigma_w ** 2)
    q11, q22, q12 = (w * x * x).sum(), (w * y * y).sum(), (w * x * y).sum()
    return np.array([q11 - q22, 2 * q12]) / (q11 + q22)


def _analytic_weighted_chi(q: np.ndarray, sigma_w: float) -> np.ndarray:
    # a Gaussian of covariance Q times a round Gaussian weight: a Gaussian of covariance (Q^-1 + I / s_w^2)^-1
    qe = np.linalg.inv(np.linalg.inv(q) + np.eye(2) / sigma_w ** 2)
    return np.array([qe[0, 0] - qe[1, 1], 2 * qe[0, 1]]) / (qe[0, 0] + qe[1, 1])


def test_metacal_response_of_weighted_moments_is_the_analytic_one():
    # Gaussian galaxy (sigma_g) and PSF drawn with the pixel: the metacal image is the galaxy sheared by
    # +-step, convolved with the round Gaussian reconvolution PSF (sigma_r) and drawn with the pixel (p), whose
    # second moments are sigma_g^2 A A^T + (sigma_r^2 + p^2 / 12) I (A: GalSim's shear matrix); a round Gaussian
    # weight keeps the pixel's box and the image's edge from mattering.
    scale, n, sg, sp, step, sw = 0.2, 65, 0.5, 0.35, 0.01, 1.0
    psf = galsim.Gaussian(sigma=sp)
    image = galsim.Convolve(galsim.Gaussian(sigma=sg), psf).drawImage(nx=n, ny=n, scale=scale).array.astype(float)
    psf_im = psf.drawImage(nx=n, ny=n, scale=scale).array.astype(float)
    kinds = ("1p", "1m", "2p", "2m")
    chi = {k: _weighted_chi(metacal_galsim(image, psf_im, scale, k, step), scale, sw)[None] for k in kinds}
    r = response_matrix(chi | {"step": step})[0]
    sigma_r = reconvolution_psf(psf_im, scale, step).sigma
    assert sigma_r > (1 + 2 * step) * sp
    q_psf = sigma_r ** 2 + scale ** 2 / 12

    def model(g1, g2):
        a = np.array([[1 + g1, g2], [g2, 1 - g1]]) / np.sqrt(1 - g1 * g1 - g2 * g2)
        return _analytic_weighted_chi(sg ** 2 * a @ a.T + q_psf * np.eye(2), sw)

    expected = (model(step, 0)[0] - model(-step, 0)[0]) / (2 * step)
    assert expected == pytest.approx((model(0, step)[1] - model(0, -step)[1]) / (2 * step))
    assert r[0, 0] == pytest.approx(expected, rel=1e-4)
    assert r[1, 1] == pytest.approx(expected, rel=1e-4)
    assert abs(r[0, 1]) < 1e-4 and abs(r[1, 0]) < 1e-4
    assert np.abs(_weighted_chi(metacal_galsim(image, psf_im, scale, "noshear", step), scale, sw)).max() < 1e-6


def test_metacal_operators_reproduce_galsim_and_the_fixnoise_term():
    cfg = ShearSimConfig(stamp_size=11)
    psf = psf_image(cfg, 0.7)
    ops = MetacalOperators.build(psf, cfg.pixel_scale)
    gal = render(cfg, 1.2, 0.4, 0.2, -0.1, 0.03, 0.0, 0.7)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(11, 11)) * 1e-3
    for kind in ("noshear", "1p", "2m"):
        direct = metacal_galsim(gal, psf, cfg.pixel_scale, kind)
        assert np.abs(ops.apply(gal[None], kind)[0] - direct).max() < 1e-6 * np.abs(direct).max()
        fixed = np.rot90(metacal_galsim(np.rot90(noise, 1), psf, cfg.pixel_scale, kind), -1)
        both = ops.apply(gal[None], kind, noise=noise[None])[0]
        assert np.abs(both - direct - fixed).max() < 1e-6 * np.abs(direct).max()
    assert ops.reconv_psf_image.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="stamps must be"):
        ops.apply(np.zeros((2, 13, 13)), "1p")
    with pytest.raises(ValueError, match="unknown kind"):
        ops.apply(gal[None], "3p")
    with pytest.raises(ValueError, match="odd"):
        MetacalOperators.build(np.ones((10, 10)), 0.2)


def test_fit_bias_recovers_exact_m_and_c_and_errors_match_least_squares():
    rng = np.random.default_rng(1)
    g = rng.choice([-0.02, 0.02], size=(4000, 2))
    exact = fit_bias(g * np.array([1.01, 0.98]) + np.array([2e-4, -1e-4]), g, n_boot=20)
    assert exact["m1"] == pytest.approx(0.01, abs=1e-12) and exact["m2"] == pytest.approx(-0.02, abs=1e-12)
    assert exact["c1"] == pytest.approx(2e-4, abs=1e-12) and exact["c2"] == pytest.approx(-1e-4, abs=1e-12)
    assert exact["m1_err"] < 1e-10
    noisy = g + rng.normal(0, 0.1, g.shape)
    res = fit_bias(noisy, g, n_boot=400, seed=2)
    se_m = 0.1 / np.sqrt(np.sum((g[:, 0] - g[:, 0].mean()) ** 2))
    assert res["m1_err"] == pytest.approx(se_m, rel=0.15)
    assert res["c1_err"] == pytest.approx(0.1 / np.sqrt(4000), rel=0.15)
    # rows of one unit move together: pairs that cancel their noise give a much smaller error
    paired_g = np.repeat(g[:2000], 2, axis=0) * np.tile([[1], [-1]], (2000, 1))
    e = np.repeat(rng.normal(0, 0.1, (2000, 2)), 2, axis=0)  # the same noise in +g and -g
    units = np.repeat(np.arange(2000), 2)
    together = fit_bias(paired_g + e, paired_g, units=units, n_boot=200)
    apart = fit_bias(paired_g + e, paired_g, n_boot=200)
    assert together["m1_err"] < 1e-9 < apart["m1_err"]
    with pytest.raises(ValueError, match="one value"):
        fit_bias(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        fit_bias(np.full((3, 2), np.nan), g[:3])


def test_response_calibration_per_bin_removes_a_known_response():
    rng = np.random.default_rng(3)
    g = rng.uniform(-0.05, 0.05, (1000, 2))
    snr = rng.uniform(10, 100, 1000)
    bins = bin_index(snr, [10, 30, 100])
    r_true = {0: np.array([[0.6, 0.02], [0.01, 0.62]]), 1: np.array([[0.9, 0.0], [0.0, 0.88]])}
    response = np.stack([r_true[b] for b in bins])
    g_hat = np.einsum("nij,nj->ni", response, g)
    assert np.allclose(response_calibrate(g_hat, response, bins), g)
    assert np.allclose(mean_response(response, bins)[1], r_true[1])
    assert list(bin_index([5, 10, 29.9, 30, 500], [10, 30, 100])) == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="no mean response"):
        response_calibrate(g_hat, response, bins, mean_r={0: r_true[0]})


def test_calibrated_fit_propagates_the_response_measurement_error():
    # noise-cancelling pairs: the +g and -g rows of a unit share their noise and their response r_i, so
    # m = <r> / <R> - 1 is limited by the metacal response's error R_i - r_i, not by the spread of r_i
    rng = np.random.default_rng(4)
    n_units = 3000
    r = np.clip(rng.normal(0.5, 0.3, n_units), 0.05, None)  # each galaxy's true (isotropic) response
    g = rng.choice([-0.02, 0.02], size=(n_units, 2))
    noise = rng.normal(0, 0.1, (n_units, 2))
    eps = np.concatenate([r[:, None] * g + noise, -r[:, None] * g + noise])
    g_all = np.concatenate([g, -g])
    units = np.concatenate([np.arange(n_units)] * 2)

    def responses(measured):
        return np.concatenate([measured, measured])[:, None, None] * np.eye(2)

    exact = fit_bias_calibrated(eps, responses(r), g_all, units=units, n_boot=100, seed=1)
    assert abs(exact["m1"]) < 1e-10 and exact["m1_err"] < 1e-9  # <R>^-1 <r g> = g in every resample
    # holding <R> fixed while resampling would report the spread of r instead: sd(r) / <r> / sqrt(N)
    fixed = fit_bias(response_calibrate(eps, responses(r)), g_all, units, n_boot=100)
    assert fixed["m1_err"] == pytest.approx(np.std(r) / np.mean(r) / np.sqrt(n_units), rel=0.25)
    delta = rng.normal(0, 0.2, n_units)  # the metacal response's error per galaxy
    res = fit_bias_calibrated(eps, responses(r + delta), g_all, units=units, n_boot=300, seed=1)
    expected = 0.2 / np.mean(r) / np.sqrt(n_units)
    assert res["m1_err"] == pytest.approx(expected, rel=0.3) and res["m2_err"] == pytest.approx(expected, rel=0.3)
    assert abs(res["m1"] - (np.mean(r) / np.mean(r + delta) - 1)) < 1e-10


def test_ellipse_coverage_is_the_chi2_probability():
    from calipers.validate.gaussian import ellipse_coverage, mahalanobis2

    # a diagonal covariance: d^2 is the sum of squared z-scores
    mu = np.array([[0.1, -0.2]])
    cov = np.array([[[0.04, 0.0], [0.0, 0.01]]])
    assert mahalanobis2(np.array([[0.3, -0.1]]), mu, cov)[0] == pytest.approx((0.2 / 0.2) ** 2 + (0.1 / 0.1) ** 2)
    # draws from the stated Gaussians are inside the p ellipse a fraction p of the time; the 68% ellipse
    # of a 2-D Gaussian is d^2 <= -2 ln(0.32) = 2.279
    rng = np.random.default_rng(0)
    n = 200_000
    a = rng.uniform(0.01, 0.1, (n, 2))
    rho = rng.uniform(-0.8, 0.8, n)
    c = np.empty((n, 2, 2))
    c[:, 0, 0], c[:, 1, 1] = a[:, 0] ** 2, a[:, 1] ** 2
    c[:, 0, 1] = c[:, 1, 0] = rho * a[:, 0] * a[:, 1]
    y = np.einsum("nij,nj->ni", np.linalg.cholesky(c), rng.normal(size=(n, 2)))
    cover = ellipse_coverage(y, np.zeros((n, 2)), c, (0.68, 0.95))
    assert cover[0.68] == pytest.approx(0.68, abs=0.004) and cover[0.95] == pytest.approx(0.95, abs=0.002)
    assert ellipse_coverage(2 * y, np.zeros((n, 2)), c, (0.68,))[0.68] < 0.35  # over-confident by 2
    with pytest.raises(ValueError, match="need y, mu"):
        mahalanobis2(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2)))
