"""Split-conformal calibration (Vovk et al. 2005; Lei et al. 2018).

- :class:`SplitConformalInterval` - intervals ``[lo - q, hi + q]`` around any base interval
  (e.g. a p(z)'s central interval) with the finite-sample guarantee
  ``P(z in interval) >= 1 - alpha`` for exchangeable data, and ``<= 1 - alpha + 1/(n+1)``
  when scores have no ties.
- :class:`ConformalPredictiveDistribution` - a conformal CDF per object.

Weighted conformal prediction under covariate shift (Tibshirani, Barber, Candes & Ramdas 2019)
-----------------------------------------------------------------------------------------------
When the calibration objects come from the labelled population and the test objects from a
target population with the same p(z | x), exchangeability fails, and so does the guarantee.
With the density ratio w(x) = p_target(x) / p_labelled(x)
(:mod:`calipers.calibrate.shift_weights`), calibration object i gets probability mass
``p_i = w_i / (sum_j w_j + w_test)`` and the test point itself the mass
``p_test = w_test / (sum_j w_j + w_test)``, placed at score +inf. The margin is the
(1 - alpha) quantile of that distribution, the smallest calibration score s with
``sum_{i: s_i <= s} p_i >= 1 - alpha`` (+inf if there is none); with the true ratio,
``P_target(z in interval) >= 1 - alpha`` (their Corollary 1). The weighted conformal
predictive distribution is built the same way: the weighted share of calibration PIT values
below F(z), the test point's own mass w_test counted with the ties.

The test point's weight enters the answer. Pass each test object's weight (``test_weights``,
from the same :class:`~calipers.calibrate.shift_weights.DensityRatio`, so that calibration and
test weights are on one scale) and the method is exactly that of Tibshirani et al., one margin /
one Q per object. Without ``test_weights`` every test object gets the same weight, the
expected weight of a *target* object, ``sum w^2 / sum w`` over the calibration set (an estimate
of E_target[w] = E_labelled[w^2] / E_labelled[w]; the mean calibration weight would understate
it, since target objects sit where w is large): one margin / one Q for all, an approximation
whose effect is bounded by the test point's mass w_test / (sum w + w_test), O(1 / n) for
bounded weights, and which makes no finite-sample guarantee.

Both are scale-free (multiplying every calibration and test weight by one constant changes
nothing), and with weights all
equal (test weights equal to them, or omitted) they give exactly, bit for bit, the unweighted
result: the weights are divided by their maximum, so equal weights become exact ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calipers.calibrate.shift_weights import check_weights


def _finite_scores(scores: np.ndarray, what: str = "conformity score") -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("scores must be a non-empty 1-d array")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"{what} not finite in {bad.size} row(s), first at row {bad[0]}")
    return scores


def _test_mass(test_weights, scale: float, relative: np.ndarray):
    """Test weights divided by ``scale`` (the largest calibration weight); None: the expected
    weight of a target object, sum r^2 / sum r of the relative calibration weights ``relative``."""
    if test_weights is None:
        return float(np.sum(relative * relative) / np.sum(relative))
    tw = np.asarray(test_weights, dtype=float)
    bad = np.flatnonzero(~(np.isfinite(tw) & (tw >= 0)).ravel())
    if bad.size:
        raise ValueError(f"test weights not finite and non-negative in {bad.size} row(s), first at row {bad[0]}")
    return tw / scale


def conformal_quantile(scores: np.ndarray, alpha: float, weights: np.ndarray | None = None,
                       test_weight=None):
    """The conformal (1 - alpha) quantile of calibration scores.

    Unweighted: the ceil((n+1)(1-alpha))-th smallest score (inf when n is too small for alpha).
    With ``weights`` (importance weights of the calibration rows): the weighted split-conformal
    quantile of Tibshirani et al. (2019) described in the module docstring, the test point's
    weight ``test_weight`` placed at +inf; ``test_weight`` may be an array (one quantile per
    test object, returned as an array) or None (the expected weight of a target object, one
    float).
    """
    scores = _finite_scores(scores)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if weights is None:
        if test_weight is not None:
            raise ValueError("a test weight needs calibration weights: pass weights= as well")
        n = scores.size
        k = int(np.ceil((n + 1) * (1 - alpha)))
        if k > n:
            return float("inf")
        return float(np.sort(scores)[k - 1])
    w = check_weights(weights, scores.size, what="calibration weights")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    relative = w[order] / w.max()
    cum = np.cumsum(relative)
    mass = _test_mass(test_weight, w.max(), relative)
    # first k with sum_{i <= k} w_i >= (1 - alpha) (W + w_test); none: the +inf of the test point
    k = np.searchsorted(cum, (1 - alpha) * (cum[-1] + mass), side="left")
    q = np.where(k < scores.size, sorted_scores[np.minimum(k, scores.size - 1)], np.inf)
    return float(q) if np.ndim(q) == 0 else q


@dataclass
class SplitConformalInterval:
    """Conformalised intervals: widen (or shrink, if q < 0) base intervals by a learned margin.

    The conformity score of a calibration object is ``max(lo - z, z - hi)`` (CQR, Romano et al.
    2019), so the method works for any base interval, calibrated or not.
    """

    alpha: float = 0.32
    margin: float | None = None
    calibration_scores: np.ndarray | None = None
    calibration_weights: np.ndarray | None = None

    @staticmethod
    def scores(lo: np.ndarray, hi: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(np.asarray(lo) - z, np.asarray(z) - hi)

    def fit(self, lo: np.ndarray, hi: np.ndarray, z: np.ndarray,
            weights: np.ndarray | None = None) -> "SplitConformalInterval":
        """Learn the margin; with ``weights`` (importance weights of the calibration rows) the
        weighted split-conformal margin, and the scores and weights are kept for per-object
        margins (:meth:`predict` with ``test_weights``)."""
        if weights is None:
            self.margin = conformal_quantile(self.scores(lo, hi, z), self.alpha)
            self.calibration_scores = self.calibration_weights = None
            return self
        s = self.scores(lo, hi, z)
        self.margin = conformal_quantile(s, self.alpha, weights)
        self.calibration_scores = np.asarray(s, dtype=float)
        self.calibration_weights = check_weights(weights, len(s), what="calibration weights")
        return self

    def predict(self, lo: np.ndarray, hi: np.ndarray,
                test_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Widened intervals. ``test_weights`` (only after a weighted fit; on the calibration
        weights' scale) give each object its own weighted-conformal margin; without them every
        object gets :attr:`margin`."""
        if self.margin is None:
            raise RuntimeError("SplitConformalInterval.predict called before fit")
        if test_weights is None:
            return np.asarray(lo) - self.margin, np.asarray(hi) + self.margin
        if self.calibration_weights is None:
            raise ValueError("test_weights need a weighted fit: call fit(..., weights=...)")
        tw = np.asarray(test_weights, dtype=float)
        if tw.shape != np.shape(lo):
            raise ValueError(f"test_weights have shape {tw.shape}, the intervals {np.shape(lo)}")
        margin = conformal_quantile(self.calibration_scores, self.alpha, self.calibration_weights, tw)
        return np.asarray(lo) - margin, np.asarray(hi) + margin


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
    weights: np.ndarray | None = None

    def fit(self, pit: np.ndarray, weights: np.ndarray | None = None) -> "ConformalPredictiveDistribution":
        """Keep the sorted calibration PIT values and, when given, their importance ``weights``
        (weighted conformal predictive distribution, module docstring)."""
        pit = np.asarray(pit, dtype=float)
        if pit.ndim != 1 or pit.size == 0:
            raise ValueError("need a non-empty 1-d array of calibration PIT values")
        bad = np.flatnonzero(~np.isfinite(pit))
        if bad.size:
            raise ValueError(f"PIT is not finite in {bad.size} row(s), first at row {bad[0]}")
        if not 0 <= self.tau <= 1:
            raise ValueError(f"tau must be in [0, 1], got {self.tau}")
        if weights is None:
            self.scores = np.sort(np.clip(pit, 0, 1))
            self.weights = None
            return self
        w = check_weights(weights, len(pit), what="calibration weights")
        order = np.argsort(np.clip(pit, 0, 1), kind="stable")
        self.scores, self.weights = np.clip(pit, 0, 1)[order], w[order]
        return self

    def transform_cdf(self, cdf: np.ndarray, test_weights=None) -> np.ndarray:
        """Q for CDF values of the base model (any shape).

        After a weighted fit, ``test_weights`` (on the calibration weights' scale) is each test
        object's weight w(x_test): a scalar, or an array whose shape is the leading axes of
        ``cdf`` (one weight per row of an (n, m) array of CDF values); None gives every object
        the expected weight of a target object (module docstring)."""
        if self.scores is None:
            raise RuntimeError("ConformalPredictiveDistribution used before fit")
        cdf = np.asarray(cdf, dtype=float)
        if self.weights is None:
            if test_weights is not None:
                raise ValueError("test_weights need a weighted fit: call fit(pit, weights=...)")
            below = np.searchsorted(self.scores, cdf, side="left")
            ties = np.searchsorted(self.scores, cdf, side="right") - below
            return (below + self.tau * (ties + 1)) / (len(self.scores) + 1)
        scale = self.weights.max()
        relative = self.weights / scale
        cum = np.concatenate([[0.0], np.cumsum(relative)])
        mass = _test_mass(test_weights, scale, relative)
        if np.ndim(mass):
            if np.shape(mass) != cdf.shape[:np.ndim(mass)]:
                raise ValueError(f"test_weights of shape {np.shape(mass)} do not match CDF values of shape {cdf.shape}")
            mass = np.reshape(mass, np.shape(mass) + (1,) * (cdf.ndim - np.ndim(mass)))
        below = cum[np.searchsorted(self.scores, cdf, side="left")]
        ties = cum[np.searchsorted(self.scores, cdf, side="right")] - below
        return (below + self.tau * (ties + mass)) / (cum[-1] + mass)

    def transform_pdfs(self, pdfs: np.ndarray, zgrid: np.ndarray, test_weights=None) -> np.ndarray:
        """Densities of Q on the grid: the base density times the slope of Q over the grid cells
        around each point (:func:`calipers.gridpdf.remap_pdfs`), renormalised on the grid.
        ``test_weights``: one per row of ``pdfs`` after a weighted fit (:meth:`transform_cdf`).

        On a grid, Q's steps of 1/(n+1) are averaged over the CDF range of two grid cells, so
        the gridded distribution is a smoothed Q: its PIT is uniform up to that resolution and
        the sampling noise of the calibration set, not exactly."""
        from calipers.gridpdf import remap_pdfs

        if test_weights is None:
            return remap_pdfs(pdfs, zgrid, self.transform_cdf)
        return remap_pdfs(pdfs, zgrid, lambda cdf: self.transform_cdf(cdf, test_weights))

    def to_dict(self) -> dict:
        d = {"kind": "ConformalPredictiveDistribution", "tau": self.tau, "scores": self.scores.tolist()}
        if self.weights is not None:
            d["weights"] = self.weights.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ConformalPredictiveDistribution":
        weights = d.get("weights")
        return cls(tau=d["tau"], scores=np.asarray(d["scores"], dtype=float),
                   weights=None if weights is None else np.asarray(weights, dtype=float))
