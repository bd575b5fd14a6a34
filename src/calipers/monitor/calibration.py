"""Calibration drift per labelled batch, from the probability integral transform (PIT).

Under a calibrated model the PIT ``u = F(y)`` of each object is uniform on (0, 1), whatever the
output kind:

- a 1-D predictive distribution (p(z)): its CDF at the truth (:func:`calipers.validate.metrics.pit_values`);
- a Gaussian vector: ``Phi(z)`` of each z-score (:func:`pit_from_zscores`);
- a class probability: the randomised PIT of a Bernoulli outcome (:func:`pit_binary`).

:func:`pit_batch_statistics` reduces a batch to two standardised statistics with their exact
moments under uniformity: the mean (``E = 1/2``, ``Var(mean) = 1 / (12 n)``) and the dispersion, the
sample variance (``E = 1/12``; ``Var = mu_4 / n - sigma^4 (n - 3) / (n (n - 1))`` with ``mu_4 = 1/80``,
``sigma^4 = 1/144``). A positive dispersion z means PITs pile up at both ends: predictive
distributions too narrow (over-confident); negative, too wide; the mean z moves with a bias.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

PIT_MEAN = 0.5
PIT_VAR = 1.0 / 12.0
_MU4 = 1.0 / 80.0


def sample_variance_sd(n: int) -> float:
    """Standard deviation of the unbiased sample variance of ``n`` uniform values."""
    if n < 2:
        raise ValueError(f"need at least 2 values, got {n}")
    return float(np.sqrt(_MU4 / n - PIT_VAR ** 2 * (n - 3) / (n * (n - 1))))


def pit_from_zscores(z) -> np.ndarray:
    """``Phi(z)``: the PIT of a Gaussian prediction whose z-score is ``z = (y - mu) / sigma``."""
    return stats.norm.cdf(np.asarray(z, dtype=float))


def pit_binary(prob, label, rng: np.random.Generator) -> np.ndarray:
    """Randomised PIT of Bernoulli outcomes ``label`` (0/1) with predicted ``P(label = 1) = prob``:
    ``F(y-) + V P(Y = y)`` with ``V ~ U(0, 1)``, uniform when the probabilities are calibrated."""
    p = np.asarray(prob, dtype=float)
    y = np.asarray(label)
    if p.shape != y.shape or np.any((p < 0) | (p > 1)) or not np.all(np.isin(y, (0, 1))):
        raise ValueError("pit_binary: need probabilities in [0, 1] and labels 0/1 of the same shape")
    v = rng.random(p.shape)
    return np.where(y == 1, (1.0 - p) + v * p, v * (1.0 - p))


def pit_batch_statistics(pit) -> dict:
    """The batch's PIT mean and variance, their z-scores against a uniform PIT, two-sided normal
    p-values, and the KS test of uniformity."""
    u = np.asarray(pit, dtype=float).ravel()
    bad = np.flatnonzero(~np.isfinite(u) | (u < 0) | (u > 1))
    if bad.size:
        raise ValueError(f"PIT values must lie in [0, 1]: {bad.size} do not, first at row {bad[0]} ({u[bad[0]]})")
    n = len(u)
    mean, var = float(u.mean()), float(u.var(ddof=1))
    z_mean = (mean - PIT_MEAN) / np.sqrt(PIT_VAR / n)
    z_disp = (var - PIT_VAR) / sample_variance_sd(n)
    ks = stats.kstest(u, "uniform")
    return {"n": n, "pit_mean": mean, "pit_var": var, "z_mean": float(z_mean), "z_dispersion": float(z_disp),
            "p_mean": float(2 * stats.norm.sf(abs(z_mean))), "p_dispersion": float(2 * stats.norm.sf(abs(z_disp))),
            "ks": float(ks.statistic), "p_ks": float(ks.pvalue)}


def pit_batch_alarm(statistics: dict, alpha: float = 0.05) -> bool:
    """The per-batch calibration test: the mean or the dispersion off at family-wise level ``alpha``
    (Bonferroni over the two)."""
    return bool(min(statistics["p_mean"], statistics["p_dispersion"]) < alpha / 2)
