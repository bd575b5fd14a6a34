"""Per-galaxy support flags: is a p(z) made where the labelled (spec-z) sample has been?

Two scores, both arrays in and arrays out (a stage writes them into the p(z) ancil):

- :class:`KNNSupport` - the mean distance from a galaxy's features to its ``n_neighbors``
  nearest labelled galaxies (features standardised on the labelled sample), and ``ood`` where
  that distance exceeds the conformal quantile, at ``level``, of the labelled sample's own
  leave-one-out distances;
- :func:`member_mutual_information` - the ensemble's epistemic term: the mutual information
  between the redshift and the ensemble member, I(z; member) = H[mean_m p_m] - mean_m H[p_m]
  (the BALD score of :mod:`calipers.active`), with every differential entropy exact for the
  piecewise-linear p(z) of :mod:`calipers.gridpdf` (:func:`grid_entropy`), never a Riemann sum;
  :func:`member_grid_pdfs` and :func:`ensemble_entropies` evaluate a deep ensemble's mixture
  output (``DeepEnsemble.predict``: member-major columns) member by member on the grid.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import xlogy

# below this relative half-difference of a segment's end values the closed form of phi (below)
# loses digits to cancellation; its series, truncated after r^8, is then exact to ~r^10 / 990
_SERIES_BELOW = 1e-2


def _check_grid(zgrid) -> np.ndarray:
    zgrid = np.asarray(zgrid, dtype=float)
    if zgrid.ndim != 1 or len(zgrid) < 2 or not np.all(np.isfinite(zgrid)) or not np.all(np.diff(zgrid) > 0):
        raise ValueError("zgrid must be a finite, strictly increasing 1-d array of at least 2 points")
    return zgrid


def _normalised(pdfs: np.ndarray, zgrid: np.ndarray, what: str = "p(z)", first_row: int = 0) -> np.ndarray:
    """Rows divided by their integral (the trapezoid rule: exact for a piecewise-linear pdf);
    ``ValueError`` naming the first row that is non-finite, negative or without mass."""
    if pdfs.shape[-1] != len(zgrid):
        raise ValueError(f"{what} has {pdfs.shape[-1]} grid values per row, zgrid has {len(zgrid)} points")
    flat = pdfs.reshape(-1, len(zgrid))
    for test, problem in ((lambda a: np.all(np.isfinite(a), axis=1), "non-finite densities"),
                          (lambda a: np.all(a >= 0, axis=1), "negative densities")):
        bad = np.flatnonzero(~test(flat))
        if bad.size:
            raise ValueError(f"{what}: {bad.size} row(s) have {problem} "
                             f"(first: {_row_name(bad[0], pdfs.shape, first_row)})")
    norm = np.trapezoid(pdfs, zgrid, axis=-1)
    bad = np.flatnonzero(~(norm.reshape(-1) > 0))
    if bad.size:
        raise ValueError(f"{what}: {bad.size} row(s) have no mass on the grid "
                         f"(first: {_row_name(bad[0], pdfs.shape, first_row)})")
    return pdfs / norm[..., None]


def _row_name(flat_index: int, shape: tuple, first_row: int = 0) -> str:
    if len(shape) == 3:
        member, row = divmod(int(flat_index), shape[1])
        return f"member {member}, row {first_row + row}"
    return f"row {first_row + int(flat_index)}"


def _phi(r: np.ndarray) -> np.ndarray:
    """phi(r) = [(1+r)^2 log(1+r) - (1-r)^2 log(1-r)] / (4r) - 1/2 for r in [0, 1] (see
    :func:`grid_entropy`); its series sum_k r^(2k) / ((2k+1) 2k (2k-1)) below ``_SERIES_BELOW``."""
    r2 = r * r
    series = r2 * (1 / 6 + r2 * (1 / 60 + r2 * (1 / 210 + r2 / 504)))
    big = r >= _SERIES_BELOW
    rb = np.where(big, r, 1.0)
    closed = ((1 + rb) ** 2 * np.log1p(rb) - xlogy((1 - rb) ** 2, 1 - rb)) / (4 * rb) - 0.5
    return np.where(big, closed, series)


def _entropy_of_normalised(pdfs: np.ndarray, zgrid: np.ndarray) -> np.ndarray:
    """-int p log p of normalised piecewise-linear rows (last axis on ``zgrid``), segment by segment."""
    lo, hi = pdfs[..., :-1], pdfs[..., 1:]
    mid = 0.5 * (lo + hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(mid > 0, np.abs(hi - lo) / (hi + lo), 0.0)
    mean_plogp = xlogy(mid, mid) + mid * _phi(np.minimum(r, 1.0))
    return -np.sum(mean_plogp * np.diff(zgrid), axis=-1)


def grid_entropy(pdfs, zgrid) -> np.ndarray:
    """Exact differential entropy -int p(z) log p(z) dz of each gridded p(z) (nats).

    Parameters
    ----------
    pdfs : (..., m) array
        Non-negative densities at the points of ``zgrid``; each row is normalised on the grid
        first (divided by its trapezoid integral, the exact integral of the piecewise-linear pdf).
    zgrid : (m,) array
        Strictly increasing grid (need not be uniform).

    Returns
    -------
    (...,) array
        The entropy of each row's piecewise-linear pdf, zero outside the grid
        (:mod:`calipers.gridpdf`).

    Notes
    -----
    On a segment of width h where p runs linearly from a to b, write the mid value
    c = (a + b) / 2 and r = |b - a| / (a + b) in [0, 1]. Then, with u = p as the variable,
    int p log p dz = h / (b - a) int_a^b u log u du
    = h [(b^2 log b - a^2 log a) / (2 (b - a)) - (a + b) / 4]
    = h c [log c + phi(r)],
    phi(r) = [(1+r)^2 log(1+r) - (1-r)^2 log(1-r)] / (4r) - 1/2
    = sum_{k>=1} r^(2k) / ((2k+1) 2k (2k-1)) = r^2/6 + r^4/60 + r^6/210 + r^8/504 + ...,
    so phi(0) = 0 (a constant segment: h a log a) and phi(1) = log 2 - 1/2 (a segment from or to
    zero). The series is used for r < 1e-2 (truncation error below 1e-23), the closed form above,
    where it has no cancellation; 0 log 0 = 0. The entropy is minus the sum over segments.
    Examples: a uniform pdf on [a, b] gives log(b - a), a triangle of base w gives
    1/2 + log(w / 2), both exactly (up to rounding).

    Raises
    ------
    ValueError
        Naming the first row with non-finite or negative densities or no mass on the grid.
    """
    zgrid = _check_grid(zgrid)
    pdfs = np.asarray(pdfs, dtype=float)
    return _entropy_of_normalised(_normalised(pdfs, zgrid), zgrid)


class EnsembleEntropies(NamedTuple):
    """The decomposition of an ensemble p(z)'s entropy, per object (nats).

    ``total`` = H[mean_m p_m] (predictive entropy), ``aleatoric`` = mean_m H[p_m] (expected
    entropy), ``epistemic`` = total - aleatoric = I(z; member) (mutual information, BALD).
    """

    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray


def member_mutual_information(member_pdfs, zgrid) -> EnsembleEntropies:
    """Entropy of the mean p(z), mean member entropy and the mutual information between the
    redshift and the ensemble member, exactly for piecewise-linear p(z).

    Parameters
    ----------
    member_pdfs : (n_members, n, m) array
        Each member's density of each object on ``zgrid``; every member row is normalised on
        the grid, and the ensemble p(z) is their equal-weight mean.
    zgrid : (m,) array
        Strictly increasing grid.

    Returns
    -------
    EnsembleEntropies
        ``total`` H[p̄] with p̄ = mean_m p_m, ``aleatoric`` mean_m H[p_m] and ``epistemic``
        I(z; member) = H[p̄] - mean_m H[p_m], each (n,), every entropy from :func:`grid_entropy`.

    Notes
    -----
    The mean of piecewise-linear pdfs is piecewise linear on the same grid, and the entropy is
    concave, so I >= 0 (Jensen) and I <= log(n_members). Both means are taken about member 0
    (p̄ = p_0 + mean_m (p_m - p_0), likewise for the entropies), so that identical members give
    exactly I = 0; rounding elsewhere can leave I a few 1e-16 below zero, which is set to 0.
    Two members with disjoint support give I = log 2.

    Raises
    ------
    ValueError
        On a shape mismatch, or naming the first member and row that does not normalise.
    """
    return _mutual_information(member_pdfs, _check_grid(zgrid))


def _mutual_information(member_pdfs, zgrid: np.ndarray, first_row: int = 0) -> EnsembleEntropies:
    member_pdfs = np.asarray(member_pdfs, dtype=float)
    if member_pdfs.ndim != 3:
        raise ValueError(f"member_pdfs must be (n_members, n, n_grid), got shape {member_pdfs.shape}")
    members = _normalised(member_pdfs, zgrid, "member p(z)", first_row)
    mean_pdf = members[0] + np.mean(members - members[0], axis=0)
    member_h = _entropy_of_normalised(members, zgrid)
    total = _entropy_of_normalised(mean_pdf, zgrid)
    aleatoric = member_h[0] + np.mean(member_h - member_h[0], axis=0)
    return EnsembleEntropies(total, aleatoric, np.maximum(total - aleatoric, 0.0))


def member_grid_pdfs(weights, means, stds, n_members: int, zgrid) -> np.ndarray:
    """Each ensemble member's Gaussian-mixture p(z) on ``zgrid``: (n_members, n, m).

    Parameters
    ----------
    weights, means, stds : (n, n_members * K) arrays
        The ensemble's mixture (``DeepEnsemble.predict``): columns member-major (member 0's K
        components first), each member's weights summing to 1 / n_members.
    n_members : int
        Number of members.
    zgrid : (m,) array
        Grid.

    Returns
    -------
    (n_members, n, m) array
        Member densities (:func:`calipers.photoz.mixture.mixture_pdf`), each member's weights
        rescaled to sum to 1; not yet normalised on the grid (:func:`member_mutual_information`
        does that). Memory is n_members * n * m floats: call it on chunks of rows.
    """
    from calipers.photoz.mixture import mixture_pdf  # imports torch: only when mixtures are evaluated

    zgrid = _check_grid(zgrid)
    w, mu, s, mass = _member_mixtures(weights, means, stds, n_members)
    return np.stack([mixture_pdf(w[m] / mass[m][:, None], mu[m], s[m], zgrid) for m in range(n_members)])


def _member_mixtures(weights, means, stds, n_members: int):
    """(n_members, n, K) weights, means, stds and each member's weight sum (n_members, n),
    checked; ``ValueError`` naming the first bad row."""
    weights, means, stds = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (weights, means, stds))
    if not (weights.shape == means.shape == stds.shape):
        raise ValueError(f"weights, means and stds differ in shape: {weights.shape}, {means.shape}, {stds.shape}")
    n, columns = weights.shape
    if n_members < 1 or columns % n_members:
        raise ValueError(f"{columns} mixture components cannot be split into {n_members} members")
    k = columns // n_members
    per_member = [a.reshape(n, n_members, k).transpose(1, 0, 2) for a in (weights, means, stds)]
    mass = per_member[0].sum(axis=2)  # (n_members, n)
    checks = (("weights", "non-finite, negative, or a member without weight",
               np.all(np.isfinite(weights) & (weights >= 0), axis=1) & np.all(mass > 0, axis=0)),
              ("means", "non-finite", np.all(np.isfinite(means), axis=1)),
              ("stds", "non-finite or not positive", np.all(np.isfinite(stds) & (stds > 0), axis=1)))
    for name, problem, ok in checks:
        bad = np.flatnonzero(~ok)
        if bad.size:
            raise ValueError(f"mixture {name} {problem} in {bad.size} row(s), first: row {bad[0]}")
    return (*per_member, mass)


def ensemble_entropies(weights, means, stds, n_members: int, zgrid, chunk: int = 2000) -> EnsembleEntropies:
    """:func:`member_mutual_information` of a deep ensemble's mixture output, in chunks of
    ``chunk`` rows (memory n_members * chunk * m floats); arguments as :func:`member_grid_pdfs`."""
    zgrid = _check_grid(zgrid)
    _member_mixtures(weights, means, stds, n_members)  # every row checked once, named in the whole input
    weights, means, stds = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (weights, means, stds))
    parts = []
    for start in range(0, len(weights), chunk):
        rows = slice(start, start + chunk)
        pdfs = member_grid_pdfs(weights[rows], means[rows], stds[rows], n_members, zgrid)
        parts.append(_mutual_information(pdfs, zgrid, first_row=start))
    if not parts:
        empty = np.empty(0)
        return EnsembleEntropies(empty, empty.copy(), empty.copy())
    return EnsembleEntropies(*(np.concatenate(field) for field in zip(*parts)))


def _features(x, what: str, n_features: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{what} must be (n_rows, n_features), got shape {x.shape}")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"{what} have {x.shape[1]} features, the labelled sample had {n_features}")
    bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if bad.size:
        raise ValueError(f"{what}: non-finite features in {bad.size} row(s), first at row {bad[0]}")
    return x


class KNNSupport:
    """Support of the labelled sample in feature space, by k-nearest-neighbour distance.

    Parameters
    ----------
    n_neighbors : int
        k: the score is the mean Euclidean distance to the k nearest labelled rows, in features
        standardised by the labelled sample's mean and standard deviation.
    level : float
        In (0, 1). A row is ``ood`` when its score exceeds the threshold: the ⌈level (n+1)⌉-th
        smallest of the n labelled rows' leave-one-out scores (each row's distance to its k
        nearest *other* labelled rows). By the conformal argument (the labelled rows and a new
        row drawn like them are exchangeable, and a leave-one-out score is never smaller than
        the same row's score among all n + 1), a row drawn like the labelled sample is flagged
        with probability at most 1 - level, and close to it for large n; ``level=0.99`` flags
        ~1%.

    Attributes
    ----------
    threshold : float
        The score above which a row is out of support (after :meth:`fit`).
    loo_scores_ : (n,) array
        The labelled rows' leave-one-out scores (after :meth:`fit`; not kept by :meth:`to_dict`).

    Notes
    -----
    Scores of the labelled rows themselves from :meth:`score` include each row's own zero
    distance; use ``loo_scores_`` for them. The neighbour search is scipy's ``cKDTree``
    (exact). :meth:`to_dict` stores the labelled features themselves (n * d numbers), since
    the score needs them.
    """

    KIND = "knn_support"

    def __init__(self, n_neighbors: int = 10, level: float = 0.99):
        if int(n_neighbors) != n_neighbors or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors}")
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        self.n_neighbors = int(n_neighbors)
        self.level = float(level)
        self.threshold: float | None = None
        self.loo_scores_: np.ndarray | None = None
        self._labelled: np.ndarray | None = None

    def _build(self, labelled: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> None:
        self._labelled, self.mean_, self.scale_ = labelled, mean, scale
        self._tree = cKDTree((labelled - mean) / scale)

    def fit(self, features) -> KNNSupport:
        """Fit on the labelled rows' features (n, d); needs n > k and n >= level / (1 - level)."""
        labelled = _features(features, "labelled features")
        n = len(labelled)
        if n <= self.n_neighbors:
            raise ValueError(f"{n} labelled rows cannot give leave-one-out distances to {self.n_neighbors} neighbours")
        rank = math.ceil(self.level * (n + 1))
        if rank > n:
            raise ValueError(f"{n} labelled rows are too few for level {self.level}: the threshold would be "
                             f"infinite (need at least {math.ceil(self.level / (1 - self.level))} rows)")
        scale = labelled.std(axis=0)
        scale[scale == 0] = 1.0
        self._build(labelled, labelled.mean(axis=0), scale)
        distances, index = self._tree.query(self._tree.data, k=self.n_neighbors + 1)
        # drop each row's own entry by index, not by position (duplicated rows tie at distance 0);
        # if the row itself is not among its k + 1 (more than k + 1 duplicates), drop the last entry
        own = index == np.arange(n)[:, None]
        own[~own.any(axis=1), -1] = True
        self.loo_scores_ = distances[~own].reshape(n, self.n_neighbors).mean(axis=1)
        self.threshold = float(np.sort(self.loo_scores_)[rank - 1])
        return self

    def _check_fitted(self) -> None:
        if self._labelled is None:
            raise RuntimeError("KNNSupport used before fit or from_dict")

    def score(self, features, workers: int = 1) -> np.ndarray:
        """Mean distance (standardised units) of each row to its k nearest labelled rows: (n,).
        ``workers``: threads of the neighbour search (scipy's ``cKDTree.query``)."""
        self._check_fitted()
        x = _features(features, "features", self._labelled.shape[1])
        if not len(x):
            return np.empty(0)
        distances, _ = self._tree.query((x - self.mean_) / self.scale_, k=self.n_neighbors, workers=workers)
        return np.reshape(distances, (len(x), self.n_neighbors)).mean(axis=1)

    def ood(self, features=None, scores=None) -> np.ndarray:
        """Out-of-support flags (score > threshold) of ``features``, or of precomputed ``scores``."""
        self._check_fitted()
        if (features is None) == (scores is None):
            raise ValueError("pass either features or scores")
        scores = self.score(features) if scores is None else np.asarray(scores, dtype=float)
        return scores > self.threshold

    def flags(self, features, workers: int = 1) -> dict[str, np.ndarray]:
        """``{"support_score": (n,) float, "ood": (n,) bool}`` for a p(z) ancil."""
        scores = self.score(features, workers)
        return {"support_score": scores, "ood": self.ood(scores=scores)}

    def to_dict(self) -> dict:
        """JSON-able state (plain lists and numbers); :meth:`from_dict` gives back the same scores."""
        self._check_fitted()
        return {"kind": self.KIND, "n_neighbors": self.n_neighbors, "level": self.level,
                "threshold": self.threshold, "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                "labelled_features": self._labelled.tolist()}

    @classmethod
    def from_dict(cls, state: dict) -> KNNSupport:
        """Rebuild from :meth:`to_dict` output (e.g. read back from JSON)."""
        if state.get("kind") != cls.KIND:
            raise ValueError(f"not a KNNSupport state (kind {state.get('kind')!r})")
        support = cls(state["n_neighbors"], state["level"])
        labelled = _features(state["labelled_features"], "stored labelled features")
        mean, scale = (np.asarray(state[key], dtype=float) for key in ("mean", "scale"))
        if mean.shape != scale.shape or mean.shape != (labelled.shape[1],) or not np.all(scale > 0):
            raise ValueError(f"stored mean/scale of shape {mean.shape}/{scale.shape} do not fit "
                             f"{labelled.shape[1]} features, or a scale is not positive")
        support._build(labelled, mean, scale)
        support.threshold = float(state["threshold"])
        return support
