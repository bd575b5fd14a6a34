"""Global PIT recalibration of gridded p(z).

If a model's PIT values on held-out data have CDF G (not the identity), the recalibrated CDF
``G(F(z))`` has uniform PIT on data like the calibration set. G is estimated by a monotone
piecewise-linear interpolation of the empirical PIT quantiles, pinned at (0, 0) and (1, 1), so
the recalibrated density ``g(F(z)) f(z)`` stays non-negative and normalised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def grid_cdf(pdfs: np.ndarray, zgrid: np.ndarray) -> np.ndarray:
    """Normalised CDFs (trapezoid rule) of densities on a grid: (n, m), from 0 to 1."""
    inc = 0.5 * (pdfs[:, 1:] + pdfs[:, :-1]) * np.diff(zgrid)[None, :]
    cdf = np.concatenate([np.zeros((len(pdfs), 1)), np.cumsum(inc, axis=1)], axis=1)
    total = cdf[:, -1:]
    if np.any(total <= 0) or not np.all(np.isfinite(total)):
        bad = np.flatnonzero(~(np.isfinite(total[:, 0]) & (total[:, 0] > 0)))
        raise ValueError(f"{bad.size} p(z) row(s) do not normalise on the grid (first: row {bad[0]})")
    return cdf / total


@dataclass
class PITRecalibrator:
    """Remap CDFs through the calibration set's PIT distribution.

    Parameters
    ----------
    n_knots : int
        Number of PIT quantiles used to describe G (fewer = smoother).
    """

    n_knots: int = 100
    knots_pit: np.ndarray = field(default=None, repr=False)
    knots_g: np.ndarray = field(default=None, repr=False)

    def fit(self, pit: np.ndarray) -> "PITRecalibrator":
        """Estimate G from PIT values of a calibration set (NaNs are an error, not dropped)."""
        pit = np.asarray(pit, dtype=float)
        if pit.ndim != 1 or len(pit) < 10:
            raise ValueError(f"need a 1-d array of at least 10 PIT values, got shape {pit.shape}")
        bad = np.flatnonzero(~np.isfinite(pit))
        if bad.size:
            raise ValueError(f"PIT is not finite in {bad.size} row(s), first at row {bad[0]}")
        probs = np.linspace(0, 1, self.n_knots + 1)[1:-1]
        q = np.quantile(np.clip(pit, 0, 1), probs)
        # G maps PIT value q_i to probability p_i; make the knots strictly increasing
        x = np.concatenate([[0.0], q, [1.0]])
        y = np.concatenate([[0.0], probs, [1.0]])
        x = np.maximum.accumulate(x)
        keep = np.concatenate([[True], np.diff(x) > 1e-9])
        self.knots_pit, self.knots_g = x[keep], y[keep]
        self.knots_g[-1] = 1.0
        return self

    def transform_cdf(self, cdf: np.ndarray) -> np.ndarray:
        """Apply G to CDF values (any shape)."""
        if self.knots_pit is None:
            raise RuntimeError("PITRecalibrator.transform_cdf called before fit")
        return np.interp(cdf, self.knots_pit, self.knots_g)

    def transform_pdfs(self, pdfs: np.ndarray, zgrid: np.ndarray) -> np.ndarray:
        """Recalibrated densities on the same grid, normalised."""
        new_cdf = self.transform_cdf(grid_cdf(pdfs, zgrid))
        dens = np.gradient(new_cdf, zgrid, axis=1)
        dens = np.clip(dens, 0, None)
        return dens / np.trapezoid(dens, zgrid, axis=1)[:, None]

    def to_dict(self) -> dict:
        return {"kind": "PITRecalibrator", "n_knots": self.n_knots, "knots_pit": self.knots_pit.tolist(),
                "knots_g": self.knots_g.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "PITRecalibrator":
        return cls(n_knots=d["n_knots"], knots_pit=np.asarray(d["knots_pit"]), knots_g=np.asarray(d["knots_g"]))
