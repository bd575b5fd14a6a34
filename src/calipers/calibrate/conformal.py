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


@dataclass
class ConformalPredictiveDistribution:
    """Split-conformal predictive distribution built on any predictive CDF (Vovk et al. 2017).

    The conformity score of a calibration object is its PIT, ``F_i(z_i)``. For a new object with
    CDF ``F`` the conformal predictive CDF is

        Q(z) = ( #{i : s_i < F(z)} + tau * (#{i : s_i = F(z)} + 1) ) / (n + 1),

    with ``tau`` in [0, 1]. For exchangeable data and ``tau ~ U(0, 1)``, ``Q(z_true)`` is exactly
    uniform, whatever the base model: every central interval of Q has coverage equal to its level
    up to the 1/(n+1) resolution (the finite-sample guarantee of conformal prediction). That
    holds for Q itself (:meth:`transform_cdf`); the gridded densities of :meth:`transform_pdfs`
    smooth its steps over grid cells and are calibrated only to that resolution. With the
    default ``tau = 0.5`` it is the mid-rank version. Q is a step function of F with steps of
    1/(n+1); it puts mass tau/(n+1) below and (1-tau)/(n+1) above the base support, which
    :meth:`transform_pdfs` drops when it renormalises on the grid.
    """

    tau: float = 0.5
    scores: np.ndarray | None = None

    def fit(self, pit: np.ndarray) -> "ConformalPredictiveDistribution":
        pit = np.asarray(pit, dtype=float)
        if pit.ndim != 1 or pit.size == 0:
            raise ValueError("need a non-empty 1-d array of calibration PIT values")
        bad = np.flatnonzero(~np.isfinite(pit))
        if bad.size:
            raise ValueError(f"PIT is not finite in {bad.size} row(s), first at row {bad[0]}")
        if not 0 <= self.tau <= 1:
            raise ValueError(f"tau must be in [0, 1], got {self.tau}")
        self.scores = np.sort(np.clip(pit, 0, 1))
        return self

    def transform_cdf(self, cdf: np.ndarray) -> np.ndarray:
        """Q for CDF values of the base model (any shape)."""
        if self.scores is None:
            raise RuntimeError("ConformalPredictiveDistribution used before fit")
        cdf = np.asarray(cdf, dtype=float)
        below = np.searchsorted(self.scores, cdf, side="left")
        ties = np.searchsorted(self.scores, cdf, side="right") - below
        return (below + self.tau * (ties + 1)) / (len(self.scores) + 1)

    def transform_pdfs(self, pdfs: np.ndarray, zgrid: np.ndarray) -> np.ndarray:
        """Densities of Q on the grid: the base density times the slope of Q over the grid cells
        around each point (:func:`calipers.gridpdf.remap_pdfs`), renormalised on the grid.

        On a grid, Q's steps of 1/(n+1) are averaged over the CDF range of two grid cells, so
        the gridded distribution is a smoothed Q: its PIT is uniform up to that resolution and
        the sampling noise of the calibration set, not exactly."""
        from calipers.gridpdf import remap_pdfs

        return remap_pdfs(pdfs, zgrid, self.transform_cdf)

    def to_dict(self) -> dict:
        return {"kind": "ConformalPredictiveDistribution", "tau": self.tau, "scores": self.scores.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ConformalPredictiveDistribution":
        return cls(tau=d["tau"], scores=np.asarray(d["scores"], dtype=float))
