"""Global PIT recalibration of gridded p(z).

If a model's PIT values on held-out data have CDF G (not the identity), the recalibrated CDF
``G(F(z))`` has uniform PIT on data like the calibration set. G is estimated by a monotone
piecewise-linear interpolation of the empirical PIT quantiles, pinned at (0, 0) and (1, 1), so
the recalibrated density ``g(F(z)) f(z)`` stays non-negative and normalised. F is the exact CDF
of the piecewise-linear gridded pdf (:mod:`calipers.gridpdf`), the same CDF the PIT the
calibrator is fitted on and judged by is computed with: a perfectly calibrated model is left as
it is, up to the sampling noise of its calibration set.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calipers.gridpdf import remap_pdfs


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
        """Recalibrated densities g(F(z)) f(z) on the same grid, normalised
        (:func:`calipers.gridpdf.remap_pdfs`)."""
        return remap_pdfs(pdfs, zgrid, self.transform_cdf)

    def to_dict(self) -> dict:
        return {"kind": "PITRecalibrator", "n_knots": self.n_knots, "knots_pit": self.knots_pit.tolist(),
                "knots_g": self.knots_g.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "PITRecalibrator":
        return cls(n_knots=d["n_knots"], knots_pit=np.asarray(d["knots_pit"]), knots_g=np.asarray(d["knots_g"]))
