"""Importance weights for covariate shift: w(x) = p_target(x) / p_labelled(x) (arrays in, arrays out).

A model trained and calibrated on a labelled sample (spectroscopic redshifts) is used on a
target population (the photometric sample) whose photometry is distributed differently. If
p(z | x) is the same in both (covariate shift), weighting each labelled object by the density
ratio w(x) makes averages over the labelled sample estimate averages over the target:
E_labelled[w(x) g(x, z)] = E_target[g(x, z)]. The weighted calibrators of
:mod:`calipers.calibrate` (weighted PIT recalibration, weighted split conformal after Tibshirani,
Barber, Candes & Ramdas 2019) use these weights so that coverage is targeted on the target
population, not on the labelled one; a training loss can use them as sample weights.

Two estimators of the ratio from the features alone (no redshifts):

- ``method="classifier"`` - a probabilistic classifier tells target (label 1) from labelled
  (label 0) rows; with class sizes n_l and n_t, Bayes' rule gives
  ``w(x) = (n_l / n_t) * p(x) / (1 - p(x))``, p = P(target | x). The classifier is
  **cross-fitted**: the pooled sample is split into ``n_folds`` stratified folds and each
  labelled row's weight comes from the classifier trained on the other folds (out-of-fold
  probabilities), so that no row's weight comes from a classifier that saw it (a classifier that
  memorised its training rows would push their weights towards 0). New rows (a calibration
  split, test objects) get the geometric mean of the fold classifiers' ratios. The classifier is
  a logistic regression on polynomial features of the standardised inputs (``degree``; degree
  2 is exact for two Gaussian populations), a histogram gradient-boosted classifier or a small
  MLP (scikit-learn).
- ``method="knn"`` - among the k nearest neighbours of x in the pooled, standardised sample,
  k_t are target and k_l labelled rows:
  ``w(x) = (n_l / n_t) * (k_t + pi_t) / (k_l + pi_l)``, with pseudo-counts ``pi_t = n_t / n``,
  ``pi_l = n_l / n`` (n = n_l + n_t) that pull the ratio towards 1 where the neighbourhood is
  uninformative and keep it finite where k_l = 0. A labelled row is left out of its own
  neighbourhood (the kNN form of cross-fitting). Default ``k = clip(sqrt(n), 20, 500)``.

Clipping: ``clip_quantile`` caps the ratio at that quantile of the labelled rows' ratios,
``max_ratio`` at a fixed value (both may be given; the lower cap wins). Clipping trades the
bias of an untrue ratio for variance; the number of clipped rows is reported.

Weights of the labelled rows are normalised to mean 1 (so their total is the number of rows, the
convention of the frequency-weighted :class:`~calipers.calibrate.PITRecalibrator`);
:meth:`DensityRatio.weights` divides by the same constant, so calibration and test weights stay
on one scale, which weighted conformal prediction needs.

A weighted sample is worth its Kish effective sample size ``ESS = (sum w)^2 / sum w^2`` objects.
When the target lies where the labelled sample has almost no objects, a few rows carry nearly
all the weight and every weighted estimate rests on them: :class:`WeightCollapseError` is raised
when ``ESS / n`` falls below ``min_ess_fraction``, naming the ESS, the floor and the rows with
the largest weights.

Features: pass the same feature matrix for both samples - for photometry, cleaned magnitudes and
adjacent colours made with one preprocessor fitted on the labelled sample
(:func:`photometry_shift_features`, the same features as ``calipers.core.features``, which this
package may not import).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("classifier", "knn")
CLASSIFIERS = ("logistic", "gradient_boosting", "mlp")


class WeightCollapseError(ValueError):
    """Importance weights whose effective sample size is below the configured floor."""

    def __init__(self, message: str, ess: float, floor: float, rows: np.ndarray):
        super().__init__(message)
        self.ess, self.floor, self.rows = ess, floor, rows


def check_weights(weights, n_rows: int | None = None, what: str = "weights") -> np.ndarray:
    """Validated float copy of a 1-d array of non-negative, finite weights with a positive sum.

    Raises
    ------
    ValueError
        Wrong shape or length, or the first row that is not finite or negative, or all zero.
    """
    w = np.array(weights, dtype=float)
    if w.ndim != 1:
        raise ValueError(f"{what} must be a 1-d array, got shape {w.shape}")
    if n_rows is not None and len(w) != n_rows:
        raise ValueError(f"{what}: {len(w)} weights for {n_rows} rows")
    bad = np.flatnonzero(~np.isfinite(w))
    if bad.size:
        raise ValueError(f"{what} not finite in {bad.size} row(s), first at row {bad[0]}")
    bad = np.flatnonzero(w < 0)
    if bad.size:
        raise ValueError(f"{what} negative in {bad.size} row(s), first at row {bad[0]} ({w[bad[0]]:g})")
    if not w.sum() > 0:
        raise ValueError(f"{what} are all zero")
    return w


def effective_sample_size(weights) -> float:
    """Kish effective sample size ``(sum w)^2 / sum w^2``: n for equal weights, 1 when one is nonzero."""
    w = check_weights(weights)
    w = w / w.max()  # scale-free, and no overflow of the squares
    return float(w.sum() ** 2 / np.sum(w * w))


def check_effective_sample_size(weights, min_ess_fraction: float, what: str = "labelled rows") -> float:
    """ESS of ``weights``; raises :class:`WeightCollapseError` when ESS / n < ``min_ess_fraction``.

    The message gives the ESS, the floor and the rows (indices into ``weights``) of the five
    largest weights.
    """
    w = check_weights(weights, what=f"importance weights of the {what}")
    ess = effective_sample_size(w)
    if not 0 <= min_ess_fraction <= 1:
        raise ValueError(f"min_ess_fraction must be in [0, 1], got {min_ess_fraction}")
    if ess < min_ess_fraction * len(w):
        top = np.argsort(w)[::-1][:5]
        share = w[top] / w.sum()
        rows = ", ".join(f"row {r} (weight {w[r] / w.mean():.3g}, {s:.1%} of the total)" for r, s in zip(top, share))
        raise WeightCollapseError(
            f"importance weights of the {what} collapse: effective sample size {ess:.1f} of {len(w)} rows "
            f"(fraction {ess / len(w):.4f}) is below the floor min_ess_fraction={min_ess_fraction:g}; the largest "
            f"weights are on {rows}. The target population lies where the labelled sample has almost no "
            "objects: extend the labelled sample there, restrict the target, or cap the weights "
            "(clip_quantile / max_ratio).", ess, min_ess_fraction, top)
    return ess


@dataclass
class ShiftWeightReport:
    """What a density-ratio fit produced for its labelled rows."""

    method: str
    classifier: str | None
    n_labelled: int
    n_target: int
    ess: float
    ess_fraction: float
    n_clipped: int
    clip_ratio: float | None
    max_weight: float
    min_ess_fraction: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _features(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} features must be (n, d), got shape {a.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(a), axis=1))
    if bad.size:
        raise ValueError(f"{name} sample: non-finite features in {bad.size} row(s), first at row {bad[0]}")
    return a


def photometry_shift_features(mags: np.ndarray, errs: np.ndarray, preprocessor, include_flags: bool = False
                              ) -> np.ndarray:
    """Cleaned magnitudes followed by adjacent colours m_i - m_(i+1), an (n, 2 n_bands - 1) array.

    ``preprocessor`` is anything with ``transform(mags, errs) -> (mags, errs, flags)``, normally a
    :class:`calipers.photoz.PhotometryPreprocessor` fitted on the *labelled* sample and used for
    both samples, so that a non-detection becomes the same fill magnitude in both (the
    treatment, and the feature layout, of ``calipers.core.features.photometry_features``).
    ``include_flags`` appends the 0/1 non-detection flags, letting the ratio tell a non-detection
    from a detection at the fill magnitude.
    """
    clean, _, flags = preprocessor.transform(mags, errs)
    clean = np.asarray(clean, dtype=float)
    parts = [clean, clean[:, :-1] - clean[:, 1:]]
    if include_flags:
        parts.append(np.asarray(flags, dtype=float))
    return np.hstack(parts)


def _make_classifier(name: str, degree: int, seed: int):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    if name == "logistic":
        from sklearn.linear_model import LogisticRegression

        return make_pipeline(StandardScaler(), PolynomialFeatures(degree, include_bias=False), StandardScaler(),
                             LogisticRegression(C=1.0, max_iter=5000))
    if name == "gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, min_samples_leaf=50,
                                              early_stopping=True, random_state=seed)
    if name == "mlp":
        from sklearn.neural_network import MLPClassifier

        return make_pipeline(StandardScaler(), MLPClassifier((32, 32), alpha=1e-3, early_stopping=True, max_iter=500,
                                                             random_state=seed))
    raise ValueError(f"unknown classifier {name!r}; expected one of {CLASSIFIERS}")


def _log_odds(model, x: np.ndarray) -> np.ndarray:
    """log P(target | x) / P(labelled | x) of a fitted binary classifier (class 1 = target)."""
    if hasattr(model, "decision_function"):
        return np.asarray(model.decision_function(x), dtype=float)
    p = np.clip(model.predict_proba(x)[:, 1], 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


@dataclass(eq=False)
class DensityRatio:
    """Estimate w(x) = p_target(x) / p_labelled(x) from the features of two samples.

    Parameters
    ----------
    method : {"classifier", "knn"}
        Cross-fitted probabilistic classifier, or k-nearest-neighbour counts (module docstring).
    classifier : {"logistic", "gradient_boosting", "mlp"}
        The classifier of ``method="classifier"``.
    degree : int
        Degree of the polynomial features of the logistic classifier.
    n_folds : int
        Folds of the cross-fitting (classifier).
    n_neighbors : int or None
        k of the kNN ratio; None: ``clip(sqrt(n_l + n_t), 20, 500)``.
    clip_quantile : float in (0, 1) or None
        Cap the ratio at this quantile of the labelled rows' ratios.
    max_ratio : float or None
        Cap the ratio at this value (on the scale of p_target / p_labelled, whose labelled mean is 1).
    min_ess_fraction : float
        Raise :class:`WeightCollapseError` when the labelled rows' ESS / n is below it.
    max_target : int or None
        Use a seeded random subset of at most this many target rows (the ratio's n_t is its size).
    seed : int
        Seed of the folds, the target subset and the classifiers.
    """

    method: str = "classifier"
    classifier: str = "logistic"
    degree: int = 2
    n_folds: int = 5
    n_neighbors: int | None = None
    clip_quantile: float | None = None
    max_ratio: float | None = None
    min_ess_fraction: float = 0.05
    max_target: int | None = 200_000
    seed: int = 0
    labelled_weights: np.ndarray | None = field(default=None, repr=False)
    report: ShiftWeightReport | None = field(default=None, repr=False)
    clip_ratio: float | None = field(default=None, repr=False)
    scale: float | None = field(default=None, repr=False)
    _state: dict = field(default_factory=dict, repr=False)

    def _check_config(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown density-ratio method {self.method!r}; expected one of {METHODS}")
        if self.method == "classifier" and self.classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {self.classifier!r}; expected one of {CLASSIFIERS}")
        if self.clip_quantile is not None and not 0 < self.clip_quantile < 1:
            raise ValueError(f"clip_quantile must be in (0, 1) or None, got {self.clip_quantile}")
        if self.max_ratio is not None and not self.max_ratio > 0:
            raise ValueError(f"max_ratio must be positive or None, got {self.max_ratio}")
        if not 0 <= self.min_ess_fraction <= 1:
            raise ValueError(f"min_ess_fraction must be in [0, 1], got {self.min_ess_fraction}")
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be at least 2, got {self.n_folds}")

    # ------------------------------------------------------------------ fitting
    def fit(self, labelled: np.ndarray, target: np.ndarray) -> "DensityRatio":
        """Fit the ratio; sets ``labelled_weights`` (out-of-fold, clipped, mean 1) and ``report``.

        Raises
        ------
        ValueError
            Non-finite features (naming the sample and row), mismatched feature counts, too few rows.
        WeightCollapseError
            The labelled rows' ESS fraction is below ``min_ess_fraction``.
        """
        self._check_config()
        xl, xt = _features(labelled, "labelled"), _features(target, "target")
        if xl.shape[1] != xt.shape[1]:
            raise ValueError(f"samples have different numbers of features: {xl.shape[1]} and {xt.shape[1]}")
        rng = np.random.default_rng(self.seed)
        if self.max_target is not None and len(xt) > self.max_target:
            xt = xt[rng.permutation(len(xt))[:self.max_target]]
        need = max(10, 2 * self.n_folds)
        for name, a in (("labelled", xl), ("target", xt)):
            if len(a) < need:
                raise ValueError(f"the {name} sample has {len(a)} rows; a density ratio needs at least {need}")
        self._state = {"n_labelled": len(xl), "n_target": len(xt), "n_features": xl.shape[1]}
        raw = self._fit_classifier(xl, xt) if self.method == "classifier" else self._fit_knn(xl, xt)
        caps = []
        if self.clip_quantile is not None:
            caps.append(float(np.quantile(raw, self.clip_quantile)))
        if self.max_ratio is not None:
            caps.append(float(self.max_ratio))
        self.clip_ratio = min(caps) if caps else None
        n_clipped = int(np.sum(raw > self.clip_ratio)) if caps else 0
        clipped = np.minimum(raw, self.clip_ratio) if caps else raw
        self.scale = float(np.mean(clipped))
        w = clipped / self.scale
        self.labelled_weights = w
        ess = effective_sample_size(w)
        self.report = ShiftWeightReport(self.method, self.classifier if self.method == "classifier" else None,
                                        len(xl), len(xt), ess, ess / len(w), n_clipped, self.clip_ratio,
                                        float(w.max()), self.min_ess_fraction)
        check_effective_sample_size(w, self.min_ess_fraction)
        return self

    def _fit_classifier(self, xl: np.ndarray, xt: np.ndarray) -> np.ndarray:
        from sklearn.model_selection import StratifiedKFold

        x = np.vstack([xl, xt])
        y = np.r_[np.zeros(len(xl)), np.ones(len(xt))]
        folds = StratifiedKFold(self.n_folds, shuffle=True, random_state=self.seed)
        log_ratio = np.empty(len(xl))
        models, offsets = [], []
        for train, held in folds.split(x, y):
            model = _make_classifier(self.classifier, self.degree, self.seed).fit(x[train], y[train])
            n_t = np.sum(y[train] == 1)
            offset = float(np.log((len(train) - n_t) / n_t))  # log(n_l / n_t) of this fold's training set
            held_l = held[held < len(xl)]
            log_ratio[held_l] = offset + _log_odds(model, x[held_l])
            models.append(model)
            offsets.append(offset)
        self._state |= {"models": models, "offsets": offsets}
        return np.exp(log_ratio)

    def _knn_ratio(self, index: np.ndarray, n_l: int, n_t: int) -> np.ndarray:
        """Ratio from neighbour indices (rows of ``index`` into the pooled sample, first n_l labelled)."""
        k_t = np.sum(index >= self._state["n_labelled"], axis=1)
        k_l = index.shape[1] - k_t
        n = n_l + n_t
        return (n_l / n_t) * (k_t + n_t / n) / (k_l + n_l / n)

    def _fit_knn(self, xl: np.ndarray, xt: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import NearestNeighbors

        pooled = np.vstack([xl, xt])
        mean, sd = pooled.mean(0), pooled.std(0)
        sd[sd == 0] = 1.0
        k = self.n_neighbors or int(np.clip(round(np.sqrt(len(pooled))), 20, 500))
        if k >= len(pooled):
            raise ValueError(f"n_neighbors={k} is not below the pooled sample size {len(pooled)}")
        nn = NearestNeighbors(n_neighbors=k + 1).fit((pooled - mean) / sd)
        self._state |= {"nn": nn, "mean": mean, "sd": sd, "k": k}
        raw = np.empty(len(xl))
        for a in range(0, len(xl), 20_000):
            rows = np.arange(a, min(a + 20_000, len(xl)))
            idx = nn.kneighbors((xl[rows] - mean) / sd, return_distance=False)
            # leave the row itself out: move it to the last column (or drop the last if not found)
            last = np.argsort(idx == rows[:, None], axis=1, kind="stable")
            idx = np.take_along_axis(idx, last, axis=1)[:, :k]
            raw[rows] = self._knn_ratio(idx, len(xl) - 1, len(xt))
        return raw

    # ------------------------------------------------------------------ applying
    def ratio(self, features: np.ndarray) -> np.ndarray:
        """Estimated p_target / p_labelled at new rows (not rows of the fit), capped like the fit.

        For the classifier, the geometric mean of the fold classifiers' ratios; for kNN, the
        counts among the k nearest rows of the fitted pooled sample.
        """
        if self.scale is None:
            raise RuntimeError("DensityRatio used before fit")
        x = _features(features, "new")
        if x.shape[1] != self._state["n_features"]:
            raise ValueError(f"the ratio was fitted on {self._state['n_features']} features, got {x.shape[1]}")
        if self.method == "classifier":
            fits = zip(self._state["models"], self._state["offsets"])
            log_ratio = np.mean([offset + _log_odds(model, x) for model, offset in fits], axis=0)
            raw = np.exp(log_ratio)
        else:
            s = self._state
            raw = np.empty(len(x))
            for a in range(0, len(x), 20_000):
                b = slice(a, a + 20_000)
                idx = s["nn"].kneighbors((x[b] - s["mean"]) / s["sd"], n_neighbors=s["k"], return_distance=False)
                raw[b] = self._knn_ratio(idx, s["n_labelled"], s["n_target"])
        return raw if self.clip_ratio is None else np.minimum(raw, self.clip_ratio)

    def weights(self, features: np.ndarray, min_ess_fraction: float | None = None) -> np.ndarray:
        """Weights of new rows on the scale of ``labelled_weights`` (divided by the same constant).

        Use it for a calibration split and for test objects, so that the weights of weighted
        conformal prediction are on one scale. With ``min_ess_fraction`` the ESS of these rows is
        checked as well (:class:`WeightCollapseError`).
        """
        w = self.ratio(features) / self.scale
        if min_ess_fraction is not None:
            check_effective_sample_size(w, min_ess_fraction, what="rows given to DensityRatio.weights")
        return w


def density_ratio_weights(labelled: np.ndarray, target: np.ndarray, method: str = "classifier", *,
                          classifier: str = "logistic", degree: int = 2, n_folds: int = 5,
                          n_neighbors: int | None = None, clip_quantile: float | None = None,
                          max_ratio: float | None = None, min_ess_fraction: float = 0.05,
                          max_target: int | None = 200_000, seed: int = 0) -> tuple[np.ndarray, ShiftWeightReport]:
    """Importance weights of the labelled rows, mean 1, and their :class:`ShiftWeightReport`.

    A shortcut for ``DensityRatio(...).fit(labelled, target)``; keep the :class:`DensityRatio`
    instead when the same ratio must weight other rows (a calibration split, test objects).

    Raises
    ------
    WeightCollapseError
        The weights' effective sample size is below ``min_ess_fraction`` of the labelled rows.
    """
    ratio = DensityRatio(method=method, classifier=classifier, degree=degree, n_folds=n_folds,
                         n_neighbors=n_neighbors, clip_quantile=clip_quantile, max_ratio=max_ratio,
                         min_ess_fraction=min_ess_fraction, max_target=max_target, seed=seed).fit(labelled, target)
    return ratio.labelled_weights, ratio.report
