"""Calibration of Gaussian vectors ``(mu[N, K], sigma[N, K])``: one width factor per output.

:class:`PerOutputConformalScaling` is the shared layer's per-output step (transit depth per bin,
shear g1 and g2): for output k the factor is the split-conformal quantile of the calibration set's
``|y - mu| / sigma`` at the target coverage over the Gaussian's own quantile at that coverage,
``f_k = q_k / Phi^-1((1 + c) / 2)``, so that the interval ``mu +- z_c f_k sigma`` covers at least
``c`` of exchangeable new objects (finite-sample, per output) and the rescaled Gaussian keeps its
shape. Run it after a global :class:`~calipers.calibrate.GaussianWidthScaling` (temperature) or
alone; the factors are plain numbers, saved as JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from calipers.calibrate.conformal import conformal_quantile
from calipers.checks import gaussian_vectors

__all__ = ["PerOutputConformalScaling"]

ONE_SIGMA = float(2 * norm.cdf(1.0) - 1)  # 0.6827


@dataclass
class PerOutputConformalScaling:
    """Per-output width factors from split-conformal quantiles of ``|y - mu| / sigma``.

    Parameters
    ----------
    coverage : the target coverage ``c`` of ``mu +- Phi^-1((1 + c) / 2) f_k sigma`` (default: the
        one-sigma 0.6827, so that +-1 sigma covers 68.27%)
    window : pool the scores of the outputs ``k - window .. k + window`` (cut at the ends) into
        output k's quantile; for outputs ordered along a coordinate (wavelength bins) whose
        miscalibration varies slowly, it divides the calibration set's sampling noise by about
        ``sqrt(2 window + 1)``, at the price of exchangeability holding only approximately across
        neighbouring outputs (0: each output alone, the exact split-conformal guarantee)
    """

    coverage: float = ONE_SIGMA
    window: int = 0
    factors: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if not 0 < self.coverage < 1:
            raise ValueError(f"PerOutputConformalScaling.coverage must be in (0, 1), got {self.coverage}")
        if self.window < 0:
            raise ValueError(f"PerOutputConformalScaling.window must be >= 0, got {self.window}")

    def fit(self, mu, sigma, y) -> PerOutputConformalScaling:
        mu, sigma, y = gaussian_vectors(mu, sigma, y, "PerOutputConformalScaling.fit")
        scores = np.abs(y - mu) / sigma
        z_c = norm.ppf(0.5 * (1 + self.coverage))
        n_out, w = scores.shape[1], int(self.window)
        q = np.array([conformal_quantile(scores[:, max(k - w, 0):k + w + 1].ravel(), 1 - self.coverage)
                      for k in range(n_out)])
        if not np.all(np.isfinite(q)):
            raise ValueError(f"PerOutputConformalScaling.fit: {scores.shape[0]} calibration rows are too few for "
                             f"coverage {self.coverage} (need ceil((n + 1) c) <= n)")
        self.factors = q / z_c
        return self

    def transform(self, sigma) -> np.ndarray:
        if self.factors is None:
            raise RuntimeError("PerOutputConformalScaling.transform called before fit")
        sigma = np.asarray(sigma, dtype=np.float64)
        if sigma.shape[-1] != self.factors.size:
            raise ValueError(f"PerOutputConformalScaling: sigma has {sigma.shape[-1]} outputs, the factors were fitted "
                             f"for {self.factors.size}")
        return sigma * self.factors

    def to_dict(self) -> dict:
        return {"coverage": self.coverage, "window": self.window,
                "factors": None if self.factors is None else self.factors.tolist()}

    @classmethod
    def from_dict(cls, values: dict) -> PerOutputConformalScaling:
        out = cls(coverage=float(values["coverage"]), window=int(values.get("window", 0)))
        factors = np.asarray(values["factors"], dtype=np.float64)
        if factors.ndim != 1 or not np.all(np.isfinite(factors)) or np.any(factors <= 0):
            raise ValueError("PerOutputConformalScaling.from_dict: factors must be a list of positive numbers")
        out.factors = factors
        return out
