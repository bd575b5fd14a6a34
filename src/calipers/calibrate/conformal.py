"""Split-conformal calibration (Vovk et al. 2005; Lei et al. 2018).

- :class:`SplitConformalInterval` - intervals ``[lo - q, hi + q]`` around any base interval
  (e.g. a p(z)'s central interval) with the finite-sample guarantee
  ``P(z in interval) >= 1 - alpha`` for exchangeable data, and ``<= 1 - alpha + 1/(n+1)``
  when scores have no ties.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score (inf when n is too small for alpha)."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("scores must be a non-empty 1-d array")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"conformity score not finite in {bad.size} row(s), first at row {bad[0]}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = scores.size
    k = int(np.ceil((n + 1) * (1 - alpha)))
    if k > n:
        return float("inf")
    return float(np.sort(scores)[k - 1])


@dataclass
class SplitConformalInterval:
    """Conformalised intervals: widen (or shrink, if q < 0) base intervals by a learned margin.

    The conformity score of a calibration object is ``max(lo - z, z - hi)`` (CQR, Romano et al.
    2019), so the method works for any base interval, calibrated or not.
    """

    alpha: float = 0.32
    margin: float | None = None

    @staticmethod
    def scores(lo: np.ndarray, hi: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(np.asarray(lo) - z, np.asarray(z) - hi)

    def fit(self, lo: np.ndarray, hi: np.ndarray, z: np.ndarray) -> "SplitConformalInterval":
        self.margin = conformal_quantile(self.scores(lo, hi, z), self.alpha)
        return self

    def predict(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.margin is None:
            raise RuntimeError("SplitConformalInterval.predict called before fit")
        return np.asarray(lo) - self.margin, np.asarray(hi) + self.margin
