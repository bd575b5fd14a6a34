"""Metrics of Gaussian vectors ``(mu[N, K], sigma[N, K])`` against the truth ``y[N, K]``: the
Gaussian log-likelihood, coverage per output at +-1 and +-2 sigma, and z-score summaries (the
shared layer of transit spectra and shear)."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from calipers.checks import gaussian_vectors

__all__ = ["coverage_per_output", "gaussian_log_likelihood", "z_score_summary", "NOMINAL"]

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
