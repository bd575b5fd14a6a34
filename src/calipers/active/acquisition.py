"""Active spec-z targeting: which galaxies to observe next, and in what order.

Three steps, arrays in and arrays out:

1. :func:`acquisition_scores` - how much a spectrum of each galaxy would teach the model:
   ``random`` (seeded uniform scores, the baseline), ``entropy`` (differential entropy of the
   ensemble p(z)) or ``bald`` (the mutual information between z and the ensemble member,
   Houlsby et al. 2011), both exact on the p(z) grid (:mod:`calipers.validate.support`);
2. :func:`exposure_cost` - the exposure time a spectrum costs, relative to a reference magnitude;
3. :func:`select_batch` - a batch of targets: the top scores (``topk``), a stochastic
   power-BALD batch (``power``, Kirsch et al. 2021; or ``softmax``), or a diverse batch from
   score-weighted k-means (``kmeans``, Zhdanov 2019); cost-aware by score per unit cost, and
   optionally limited by a total exposure budget.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from calipers.validate.support import EnsembleEntropies, member_mutual_information

ACQUISITION_METHODS = ("random", "entropy", "bald")
SELECTION_METHODS = ("topk", "power", "softmax", "kmeans")
EXPOSURE_REGIMES = {"background": 0.8, "source": 0.4}  # exponent of 10^(a (m - m_ref))


def acquisition_scores(method: str, member_pdfs=None, zgrid=None, *, entropies: EnsembleEntropies | None = None,
                       n_objects: int | None = None, seed: int = 0) -> np.ndarray:
    """Acquisition score of every candidate galaxy (higher: more worth a spectrum).

    Parameters
    ----------
    method : {"random", "entropy", "bald"}
        ``random``: uniform [0, 1) draws from ``numpy.random.default_rng(seed)`` (a random
        selection once ranked); ``entropy``: H[p̄], the differential entropy (nats) of the
        ensemble p(z) p̄ = mean of the members (can be negative: a narrow p(z)); ``bald``:
        I(z; member) = H[p̄] - mean_m H[p_m] >= 0, the part of the uncertainty that a label
        would remove from the model (epistemic) rather than from the galaxy (aleatoric).
    member_pdfs : (n_members, n, m) array, optional
        Each member's p(z) of each candidate on ``zgrid`` (``calipers.validate.support.
        member_grid_pdfs`` evaluates a deep ensemble's mixtures).
    zgrid : (m,) array, optional
        The grid of ``member_pdfs``.
    entropies : EnsembleEntropies, optional
        Precomputed ``member_mutual_information(member_pdfs, zgrid)`` (e.g. the values already
        written to the p(z) ancil), instead of ``member_pdfs`` and ``zgrid``.
    n_objects : int, optional
        Number of candidates, for ``random`` when neither pdfs nor entropies are passed.
    seed : int
        Seed of ``random``.

    Returns
    -------
    (n,) array
        The scores.
    """
    if method not in ACQUISITION_METHODS:
        raise ValueError(f"unknown acquisition method {method!r}; choose from {ACQUISITION_METHODS}")
    if method == "random":
        if n_objects is None:
            if entropies is not None:
                n_objects = len(entropies.total)
            elif member_pdfs is not None:
                n_objects = np.shape(member_pdfs)[1]
            else:
                raise ValueError("random scores need n_objects, member_pdfs or entropies")
        return np.random.default_rng(seed).random(int(n_objects))
    if entropies is None:
        if member_pdfs is None or zgrid is None:
            raise ValueError(f"{method} scores need member_pdfs and zgrid, or entropies")
        entropies = member_mutual_information(member_pdfs, zgrid)
    return np.asarray(entropies.total if method == "entropy" else entropies.epistemic, dtype=float)


def exposure_cost(mag, *, ref_mag: float, ref_time: float = 1.0, overhead: float = 0.0,
                  regime: str = "background") -> np.ndarray:
    """Exposure time to reach a fixed signal-to-noise on an object of magnitude ``mag``.

    Parameters
    ----------
    mag : array
        Magnitudes (in the band that sets the spectroscopic S/N).
    ref_mag : float
        The magnitude that needs ``ref_time``.
    ref_time : float
        Exposure time at ``ref_mag`` (any unit; 1 makes the cost relative).
    overhead : float
        Fixed time added per target (slewing, fibre positioning, read-out), same unit.
    regime : {"background", "source"}
        Noise regime of the faint targets.

    Returns
    -------
    array
        ``overhead + ref_time * 10^(a (mag - ref_mag))``, with a = 0.8 (``background``) or 0.4
        (``source``).

    Notes
    -----
    An object of flux F = F_ref 10^(-0.4 (m - m_ref)) collects F t counts in time t. Background
    limited (sky counts B t dominate), S/N = F t / sqrt(B t) ∝ F sqrt(t), so a fixed S/N needs
    t ∝ F^-2 = 10^(0.8 (m - m_ref)): 1.25 mag fainter costs 10 times the time. Source limited,
    S/N = sqrt(F t) and t ∝ F^-1 = 10^(0.4 (m - m_ref)).

    Raises
    ------
    ValueError
        Naming the first row whose magnitude is not finite (a non-detection has no cost).
    """
    if regime not in EXPOSURE_REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose from {sorted(EXPOSURE_REGIMES)}")
    for name, value in (("ref_mag", ref_mag), ("ref_time", ref_time), ("overhead", overhead)):
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if ref_time <= 0 or overhead < 0:
        raise ValueError(f"ref_time must be positive and overhead non-negative, got {ref_time} and {overhead}")
    mag = np.asarray(mag, dtype=float)
    bad = np.flatnonzero(~np.isfinite(mag.reshape(-1)))
    if bad.size:
        raise ValueError(f"magnitudes not finite in {bad.size} row(s), first at row {bad[0]}")
    return overhead + ref_time * 10.0 ** (EXPOSURE_REGIMES[regime] * (mag - ref_mag))


class TargetSelection(NamedTuple):
    """Selected targets, in the order to observe them (rank 1 first)."""

    ids: np.ndarray     #: object ids (``ids`` passed to :func:`select_batch`, else the rows)
    rows: np.ndarray    #: row index into the candidate arrays
    ranks: np.ndarray   #: 1, 2, ...
    scores: np.ndarray  #: acquisition score of each target
    costs: np.ndarray   #: its cost (1 each when no cost was given)


def _check_1d(values, what: str, n: int | None = None) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or (n is not None and len(values) != n):
        expected = "1-d" if n is None else f"({n},) like the scores"
        raise ValueError(f"{what} must be {expected}, got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{what} not finite in {bad.size} row(s), first at row {bad[0]}")
    return values


def _non_negative(priority: np.ndarray, method: str) -> None:
    bad = np.flatnonzero(priority < 0)
    if bad.size:
        raise ValueError(f"{method} selection needs non-negative scores (BALD is; a differential entropy need "
                         f"not be): {bad.size} negative, first at row {bad[0]} ({priority[bad[0]]:.4g})")


def _gumbel_order(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows by decreasing ``keys + Gumbel noise`` (the Gumbel top-k trick), ties (-inf keys) at
    random: the first b rows are a sample without replacement with probabilities ∝ exp(keys)."""
    noise = rng.gumbel(size=len(keys))
    return np.lexsort((-noise, -(keys + noise)))


def _kmeans_order(priority: np.ndarray, features, batch_size: int, pool_factor: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=float)
    if features.ndim == 1:
        features = features[:, None]
    if features.ndim != 2 or len(features) != len(priority):
        raise ValueError(f"features must be ({len(priority)}, n_features), got shape {features.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(features), axis=1))
    if bad.size:
        raise ValueError(f"features not finite in {bad.size} row(s), first at row {bad[0]}")
    by_priority = np.argsort(-priority, kind="stable")
    pool = by_priority[:max(batch_size, pool_factor * batch_size)]
    x = features[pool]
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    x = (x - x.mean(axis=0)) / scale
    weight = priority[pool] if priority[pool].sum() > 0 else np.ones(len(pool))
    labels = KMeans(n_clusters=batch_size, n_init=3, random_state=seed).fit(x, sample_weight=weight).labels_
    # the pool is in priority order, so the first row of each cluster is its best
    _, first = np.unique(labels, return_index=True)
    chosen = pool[np.sort(first)]
    # fewer non-empty clusters than batch_size (e.g. duplicated features): fill up by priority
    rest = pool[~np.isin(pool, chosen)][:batch_size - len(chosen)]
    return np.concatenate([chosen, rest])


def select_batch(scores, batch_size: int | None = None, cost=None, method: str = "topk", features=None,
                 seed: int = 0, *, beta: float = 1.0, budget: float | None = None, ids=None,
                 pool_factor: int = 10) -> TargetSelection:
    """Choose a batch of spec-z targets from acquisition scores.

    Parameters
    ----------
    scores : (n,) array
        Acquisition scores (:func:`acquisition_scores`), higher is better.
    batch_size : int, optional
        Most targets to select (required for ``kmeans``; with ``budget`` alone, no limit).
    cost : (n,) array, optional
        Positive cost of each candidate (:func:`exposure_cost`). Candidates are then ranked by
        their priority ``score / cost``, the information per unit exposure time; without it
        the priority is the score and every target costs 1.
    method : {"topk", "power", "softmax", "kmeans"}
        ``topk``: decreasing priority (ties by row). ``power``: power-BALD (Kirsch et al. 2021),
        a draw without replacement with probabilities ∝ priority^beta, by the Gumbel top-k trick
        (order by beta log(priority) + Gumbel noise; seeded): the batch spreads over the
        high-score region instead of piling onto near-duplicates of the best row, and tends to
        ``topk`` as beta grows; needs non-negative scores. ``softmax``: the same with
        probabilities ∝ exp(beta priority) (any sign). ``kmeans``: diversity (Zhdanov 2019):
        the ``pool_factor * batch_size`` rows of highest priority are clustered, in
        ``features`` standardised on that pool, into ``batch_size`` clusters by k-means with
        each row weighted by its (non-negative) priority, and the best row of each cluster is
        taken, in order of priority.
    features : (n, d) array, optional
        Features of the candidates (``kmeans`` only), e.g. colours and magnitude.
    seed : int
        Seed of ``power``, ``softmax`` and ``kmeans``.
    beta : float
        Exponent (``power``) or inverse temperature (``softmax``).
    budget : float, optional
        Total cost allowed. Rows are taken in the method's order, skipping any whose cost no
        longer fits (the greedy knapsack rule), until ``batch_size`` or no remaining row fits;
        the summed cost never exceeds ``budget``.
    ids : (n,) array, optional
        Object ids returned for the selected rows (default: the row indices).
    pool_factor : int
        Size of the ``kmeans`` candidate pool in batches.

    Returns
    -------
    TargetSelection
        ``ids``, ``rows``, ``ranks`` (1 first), ``scores`` and ``costs`` of the targets, in
        observing order.

    Raises
    ------
    ValueError
        Naming the first row of a non-finite score, a non-finite or non-positive cost, a
        negative score where ``power`` or ``kmeans`` needs non-negative ones, or bad features.
    """
    if method not in SELECTION_METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose from {SELECTION_METHODS}")
    scores = _check_1d(scores, "acquisition scores")
    n = len(scores)
    if cost is None:
        cost = np.ones(n)
    else:
        cost = _check_1d(cost, "costs", n)
        bad = np.flatnonzero(cost <= 0)
        if bad.size:
            raise ValueError(f"costs must be positive: {bad.size} row(s) are not, first at row {bad[0]} "
                             f"({cost[bad[0]]:.4g})")
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise ValueError(f"ids must be ({n},) like the scores, got shape {ids.shape}")
    if batch_size is None and budget is None:
        raise ValueError("give batch_size, budget or both")
    if batch_size is not None and (int(batch_size) != batch_size or not 1 <= batch_size <= n):
        raise ValueError(f"batch_size must be an integer from 1 to the {n} candidates, got {batch_size}")
    if budget is not None and not (np.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be finite and non-negative, got {budget}")
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be finite and non-negative, got {beta}")
    limit = n if batch_size is None else int(batch_size)
    priority = scores / cost
    rng = np.random.default_rng(seed)

    if method == "topk":
        order = np.argsort(-priority, kind="stable")
    elif method == "power":
        _non_negative(priority, "power")
        with np.errstate(divide="ignore"):  # a zero score: key -inf, drawn only after every positive one
            keys = beta * np.log(priority) if beta > 0 else np.zeros(n)
        order = _gumbel_order(keys, rng)
    elif method == "softmax":
        order = _gumbel_order(beta * priority, rng)
    else:
        if batch_size is None:
            raise ValueError("kmeans selection needs batch_size (the number of clusters)")
        if features is None:
            raise ValueError("kmeans selection needs the candidates' features")
        _non_negative(priority, "kmeans")
        order = _kmeans_order(priority, features, limit, int(pool_factor), seed)

    if budget is None:
        rows = order[:limit]
    else:
        rows, spent, cheapest = [], 0.0, cost.min()
        for row in order:
            if spent + cheapest > budget:
                break
            if spent + cost[row] <= budget:
                rows.append(row)
                spent += cost[row]
                if len(rows) == limit:
                    break
        rows = np.asarray(rows, dtype=int)
    return TargetSelection(ids=rows.copy() if ids is None else ids[rows], rows=rows,
                           ranks=np.arange(1, len(rows) + 1), scores=scores[rows], costs=cost[rows])
