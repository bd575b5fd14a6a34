"""Fisher / Cramer-Rao ceiling of log g: the autograd Jacobian against central finite differences, and
every bound against the exact linear-Gaussian case (closed-form Fisher matrix, Schur complement and
posterior variance, and a Monte Carlo check that the posterior mean attains the Bayesian bound)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calipers.spectra.fisher import (bayesian_crlb, ceiling_table, continuum_nuisance_jacobian, fisher_matrix,
                                     jacobian, marginal_crlb, prior_information, r2_ceiling)
from calipers.spectra.simulate import SpectrumModel


@pytest.fixture(scope="module")
def model():
    return SpectrumModel()


def test_jacobian_matches_central_differences(model):
    """Forward-mode autograd against central differences in float64, to <= 1e-5 relative (per label,
    max abs error / max abs derivative). Steps: 0.1 K, 2e-4 dex, 2e-4 dex (truncation ~h^2 and
    rounding ~1e-16 / h both far below 1e-5; the error falls as h^2 from 4x larger steps)."""
    theta = torch.tensor([[3800.0, 4.6, 0.5], [4500.0, 2.0, 0.0], [5900.0, 1.2, -0.2], [5000.0, 3.5, 0.3]],
                         dtype=torch.float64)
    flux, jac = jacobian(model, theta, return_flux=True)
    assert jac.shape == (4, 4096, 3) and jac.dtype == torch.float64
    assert torch.equal(flux, model.flux(theta))
    steps = (0.1, 2e-4, 2e-4)
    for k, h in enumerate(steps):
        d = torch.zeros_like(theta)
        d[:, k] = h
        fd = (model.flux(theta + d) - model.flux(theta - d)) / (2 * h)
        rel = float((jac[..., k] - fd).abs().max() / fd.abs().max())
        assert rel <= 1e-5, (k, rel)


class _LinearModel:
    """y = A theta: the exact case."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = torch.tensor(matrix)

    def check_labels(self, theta, allow_outside=False):
        theta = torch.as_tensor(theta, dtype=torch.float64)
        if theta.ndim != 2 or theta.shape[1] != self.matrix.shape[1]:
            raise ValueError("shape")
        return theta

    def flux(self, theta, allow_outside=False):
        return theta @ self.matrix.T


@pytest.fixture
def linear_case():
    rng = np.random.default_rng(0)
    n_pix, p = 50, 3
    a = rng.normal(size=(n_pix, p))
    ivar = rng.uniform(0.5, 2.0, n_pix)
    return a, ivar


def test_linear_gaussian_closed_form(linear_case):
    a, ivar = linear_case
    model = _LinearModel(a)
    theta = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.5]])
    jac = jacobian(model, theta, chunk_size=1).numpy()
    assert np.allclose(jac, np.broadcast_to(a, (2, *a.shape)), atol=1e-14)
    fisher = fisher_matrix(jac, np.tile(ivar, (2, 1)))
    exact = a.T @ np.diag(ivar) @ a
    assert np.allclose(fisher, exact[None], rtol=1e-12)
    # Schur complement of the others: 1 / (F_gg - F_go F_oo^-1 F_og)
    g, o = 1, [0, 2]
    schur = exact[g, g] - exact[g, o] @ np.linalg.solve(exact[np.ix_(o, o)], exact[o, g])
    assert np.allclose(marginal_crlb(fisher), 1.0 / schur, rtol=1e-12)
    # with a Gaussian prior of precision L, the posterior variance is [(F + L)^-1]_gg
    prec = np.array([0.3, 2.0, 0.7])
    post = np.linalg.inv(exact + np.diag(prec))[g, g]
    assert np.allclose(bayesian_crlb(fisher, prec), post, rtol=1e-12)
    assert np.allclose(bayesian_crlb(fisher, np.diag(prec)), post, rtol=1e-12)
    assert post < 1.0 / schur


def test_bayes_bound_is_attained_by_the_posterior_mean(linear_case):
    """Monte Carlo: theta ~ N(0, diag(1 / prec)), y = A theta + noise; the posterior mean's mean squared
    error on theta_g equals the Bayesian bound and R^2 matches r2_ceiling."""
    a, ivar = linear_case
    a = a * 0.15  # weak data, so the prior matters
    prec = np.array([0.5, 1.0, 2.0])
    rng = np.random.default_rng(1)
    n = 40000
    theta = rng.normal(size=(n, 3)) / np.sqrt(prec)
    y = theta @ a.T + rng.normal(size=(n, a.shape[0])) / np.sqrt(ivar)
    fisher = a.T @ np.diag(ivar) @ a
    post_cov = np.linalg.inv(fisher + np.diag(prec))
    mean = (y * ivar) @ a @ post_cov
    mse = np.mean((mean[:, 1] - theta[:, 1]) ** 2)
    bound = bayesian_crlb(np.broadcast_to(fisher, (n, 3, 3)), prec)
    assert mse == pytest.approx(bound[0], rel=0.03)
    r2_emp = 1.0 - mse / np.var(theta[:, 1])
    assert r2_ceiling(bound, theta[:, 1]) == pytest.approx(r2_emp, abs=0.02)


def test_nuisances_only_loosen_the_bound(linear_case):
    a, ivar = linear_case
    flux = np.abs(a[:, 0])[None] + 1.0
    wavelength = np.linspace(7100, 8850, a.shape[0])
    nuis = continuum_nuisance_jacobian(flux, wavelength)
    assert nuis.shape == (1, a.shape[0], 2)
    assert np.allclose(nuis[0, :, 0], flux[0])
    assert nuis[0, 0, 1] == pytest.approx(-0.5 * flux[0, 0]) and nuis[0, -1, 1] == pytest.approx(0.5 * flux[0, -1])
    jac = np.concatenate([a[None], nuis], axis=-1)
    f5 = fisher_matrix(jac, ivar[None])
    f3 = fisher_matrix(a[None], ivar[None])
    assert marginal_crlb(f5)[0] >= marginal_crlb(f3)[0]
    assert np.allclose(marginal_crlb(f5), np.linalg.inv(f5[0])[1, 1], rtol=1e-10)


def test_marginal_crlb_is_stable_and_flags_singular():
    # badly scaled but regular: Teff in K, log g in dex (entries differ by 1e8)
    base = np.array([[2.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 3.0]])
    scale = np.diag([1e-4, 1.0, 1e3])
    fisher = (scale @ base @ scale)[None]
    assert marginal_crlb(fisher)[0] == pytest.approx(np.linalg.inv(base)[1, 1], rel=1e-10)
    # log g exactly degenerate with Teff: no bound
    sing = np.array([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert np.isinf(marginal_crlb(sing)[0])
    # a parameter with no information at all does not spoil the others (block diagonal)
    zero = np.array([[[1.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])
    assert np.isinf(marginal_crlb(zero)[0])  # the full matrix is singular: treat as unbounded
    assert bayesian_crlb(zero, [1.0, 1.0, 1.0])[0] == pytest.approx(1.0 / 5.0)


def test_prior_information_and_r2():
    ranges = [[3750.0, 6000.0], [1.0, 5.0], [-0.25, 0.75]]
    info = prior_information(ranges, "gaussian", n_nuisance=2)
    assert info.shape == (5,) and info[1] == pytest.approx(12.0 / 16.0) and info[3] == 0.0
    assert prior_information(ranges, "cosine")[1] == pytest.approx(4 * math.pi ** 2 / 16.0)
    with pytest.raises(ValueError, match="kind"):
        prior_information(ranges, "flat")
    with pytest.raises(ValueError, match="low < high"):
        prior_information([[1.0, 1.0]])
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    assert r2_ceiling(np.full(4, 0.25), labels) == pytest.approx(1.0 - 0.25 / 1.25)
    assert r2_ceiling(np.full(4, 2.5), labels) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same"):
        r2_ceiling(np.ones(3), labels)


def test_fisher_matrix_checks_input():
    with pytest.raises(ValueError, match="ivar"):
        fisher_matrix(np.ones((2, 5, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=">= 0"):
        fisher_matrix(np.ones((1, 5, 3)), -np.ones((1, 5)))


def test_ceiling_table(model):
    theta = torch.tensor([[4000.0, 1.5, 0.0], [4800.0, 4.5, 0.5], [5600.0, 2.5, -0.2], [4400.0, 3.3, 0.2]],
                         dtype=torch.float64)
    rows = ceiling_table(model, theta, [3.0, 20.0])
    assert [r["snr"] for r in rows] == [3.0, 20.0]
    lo, hi = rows
    for suffix in ("", "_continuum"):
        assert hi[f"sigma_crlb_median{suffix}"] < lo[f"sigma_crlb_median{suffix}"]
        assert hi[f"r2_bayes{suffix}"] > lo[f"r2_bayes{suffix}"]
        for r in rows:
            assert r[f"r2_bayes{suffix}"] >= r[f"r2_crlb{suffix}"]
            assert r[f"r2_bayes{suffix}"] <= 1.0
    for r in rows:
        assert r["sigma_crlb_median_continuum"] >= r["sigma_crlb_median"]
    # sigma_CRLB scales as 1 / S/N where the noise is source-dominated or sky-dominated alike
    assert lo["sigma_crlb_median"] / hi["sigma_crlb_median"] == pytest.approx(20.0 / 3.0, rel=0.01)
