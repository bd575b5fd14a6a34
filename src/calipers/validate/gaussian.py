"""Metrics of Gaussian vectors ``(mu[N, K], sigma[N, K])`` against the truth ``y[N, K]``: the
Gaussian log-likelihood, coverage per output at +-1 and +-2 sigma, and z-score summaries (the
shared layer of transit spectra and shear)."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from calipers.checks import gaussian_vectors

__all__ = ["coverage_per_output", "ellipse_coverage", "gaussian_log_likelihood", "mahalanobis2", "z_score_summary",
           "NOMINAL"]

NOMINAL = {1: float(2 * norm.cdf(1.0) - 1), 2: float(2 * norm.cdf(2.0) - 1)}  # 0.6827, 0.9545


def gaussian_log_likelihood(y, mu, sigma) -> np.ndarray:
    """Elementwise ``log N(y; mu, sigma)`` [N, K] (nats)."""
    mu, sigma, y = gaussian_vectors(mu, sigma, y, "gaussian_log_likelihood")
    return -0.5 * (math.log(2 * math.pi) + 2 * np.log(sigma) + ((y - mu) / sigma) ** 2)


def coverage_per_output(y, mu, sigma, k: float = 1.0) -> np.ndarray:
    """Fraction of rows with ``|y - mu| <= k sigma``, per output [K]."""
    mu, sigma, y = gaussian_vectors(mu, sigma, y, "coverage_per_output")
    return np.mean(np.abs(y - mu) <= k * sigma, axis=0)


def z_score_summary(y, mu, sigma) -> dict:
    """Mean and standard deviation of ``z = (y - mu) / sigma`` over all values (0 and 1 for
    calibrated Gaussians), and the coverage at 1 and 2 sigma over all values and its range over
    outputs."""
    mu, sigma, y = gaussian_vectors(mu, sigma, y, "z_score_summary")
    z = (y - mu) / sigma
    out = {"z_mean": float(z.mean()), "z_std": float(z.std())}
    for k in (1, 2):
        per = np.mean(np.abs(z) <= k, axis=0)
        out |= {f"coverage_{k}sigma": float(np.mean(np.abs(z) <= k)), f"coverage_{k}sigma_min": float(per.min()),
                f"coverage_{k}sigma_max": float(per.max())}
    return out


def mahalanobis2(y, mu, cov) -> np.ndarray:
    """``(y - mu)^T C^-1 (y - mu)`` per row for full covariances ``cov[N, K, K]`` (K small: shear)."""
    y, mu, cov = (np.asarray(a, dtype=float) for a in (y, mu, cov))
    if mu.ndim != 2 or y.shape != mu.shape or cov.shape != (*mu.shape, mu.shape[1]):
        raise ValueError(f"mahalanobis2: need y, mu [N, K] and cov [N, K, K], got {y.shape}, {mu.shape}, {cov.shape}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
        raise ValueError("mahalanobis2: non-finite values")
    r = y - mu
    try:
        return np.einsum("ni,ni->n", r, np.linalg.solve(cov, r[..., None])[..., 0])
    except np.linalg.LinAlgError as err:
        raise ValueError(f"mahalanobis2: a covariance is singular ({err})") from err


def ellipse_coverage(y, mu, cov, levels=(0.68, 0.95)) -> dict:
    """Fraction of rows inside the ``p`` credible ellipsoid of ``N(mu, cov)``, ``d^2 <= chi2_K(p)``, for
    each level ``p`` (in 2-D ``chi2_2(p) = -2 ln(1 - p)``)."""
    from scipy.stats import chi2

    d2 = mahalanobis2(y, mu, cov)
    k = np.asarray(mu).shape[1]
    return {float(p): float(np.mean(d2 <= chi2.ppf(p, k))) for p in levels}
