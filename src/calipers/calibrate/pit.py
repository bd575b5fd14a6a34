"""Global PIT recalibration of gridded p(z).

If a model's PIT values on held-out data have CDF G (not the identity), the recalibrated CDF
``G(F(z))`` has uniform PIT on data like the calibration set. G is estimated by a monotone
piecewise-linear interpolation of the empirical PIT quantiles, pinned at (0, 0) and (1, 1), so
the recalibrated density ``g(F(z)) f(z)`` stays non-negative and normalised. F is the exact CDF
of the piecewise-linear gridded pdf (:mod:`calipers.gridpdf`), the same CDF the PIT the
calibrator is fitted on and judged by is computed with: a perfectly calibrated model is left as
it is, up to the sampling noise of its calibration set.

Under covariate shift the calibration set can be importance-weighted (``fit(pit, weights=w)``,
w(x) = p_target(x) / p_labelled(x) from :mod:`calipers.calibrate.shift_weights`): G is then the
weighted CDF of the PIT values, the PIT distribution of the *target* population when p(z | x) is
the same in both, so that the recalibrated PIT is uniform on the target.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calipers.calibrate.shift_weights import check_weights
from calipers.gridpdf import remap_pdfs


def weighted_quantile(values: np.ndarray, weights: np.ndarray, probs) -> np.ndarray:
    """Quantiles of frequency-weighted values; numpy's default (linear, type 7) quantile for unit weights.

    Sort the values and lay them end to end, value x_i occupying an interval of length w_i of a
    "position" axis [0, W], W = sum w (a step function S). The type-7 quantile of n unit-weight
    values at probability p is the mean of S over the window [h, h + 1], h = p (W - 1); that is
    the definition used here for any non-negative weights. It is monotone in p, equals
    ``np.quantile`` for unit weights and, for integer weights, ``np.quantile`` of the values
    repeated w_i times (to rounding), and depends on the weights' scale only through the
    one-object width of the window - hence weights of mean 1.

    Raises
    ------
    ValueError
        Weights of the wrong length, not finite or negative (naming the first row), or a total
        weight below 2 (the window does not fit).
    """
    values = np.asarray(values, dtype=float)
    w = check_weights(weights, len(values), what="PIT weights")
    keep = w > 0
    x, tie = np.unique(values[keep], return_inverse=True)  # equal values make one step
    w = np.bincount(tie, weights=w[keep], minlength=len(x))
    edge = np.cumsum(w)  # step i covers [edge[i] - w[i], edge[i])
    total = edge[-1]
    if total < 2:
        raise ValueError(f"PIT weights sum to {total:g}; they are frequency weights (a row of weight k counts as "
                         "k rows): scale them to mean 1")
    start = np.concatenate([[0.0], edge[:-1]])
    out = np.empty(len(np.atleast_1d(probs)))
    for j, p in enumerate(np.atleast_1d(np.asarray(probs, dtype=float))):
        h = p * (total - 1)
        a = min(int(np.searchsorted(edge, h, side="right")), len(x) - 1)   # step holding h
        b = min(int(np.searchsorted(edge, h + 1, side="left")), len(x) - 1)  # step holding h + 1
        if a == b:
            out[j] = x[a]
        else:  # overlap of the window with steps a (partial), a+1..b-1 (whole) and b (partial)
            out[j] = (x[a] * (edge[a] - h) + np.dot(x[a + 1:b], w[a + 1:b]) + x[b] * (h + 1 - start[b]))
    return out


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

    def fit(self, pit: np.ndarray, weights: np.ndarray | None = None) -> "PITRecalibrator":
        """Estimate G from PIT values of a calibration set (NaNs are an error, not dropped).

        Parameters
        ----------
        pit : (n,) array
            PIT values of the calibration objects.
        weights : (n,) array or None
            Optional non-negative **frequency weights** (importance weights for covariate shift,
            normalised to mean 1 as :mod:`calipers.calibrate.shift_weights` returns them). The
            knots are then the weighted quantiles of :func:`weighted_quantile`: a row of integer
            weight k counts as k rows, so integer weights give exactly the fit on the rows
            repeated that many times, and weights all 1 the unweighted fit (to rounding). Their
            total is the number of objects the quantile interpolation counts in, so weights that
            sum to less than 2 (probabilities summing to 1) are an error: scale them to mean 1.
        """
        pit = np.asarray(pit, dtype=float)
        if pit.ndim != 1 or len(pit) < 10:
            raise ValueError(f"need a 1-d array of at least 10 PIT values, got shape {pit.shape}")
        bad = np.flatnonzero(~np.isfinite(pit))
        if bad.size:
            raise ValueError(f"PIT is not finite in {bad.size} row(s), first at row {bad[0]}")
        probs = np.linspace(0, 1, self.n_knots + 1)[1:-1]
        if weights is None:
            q = np.quantile(np.clip(pit, 0, 1), probs)
        else:
            q = weighted_quantile(np.clip(pit, 0, 1), weights, probs)
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
