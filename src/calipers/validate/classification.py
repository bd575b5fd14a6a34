"""Calibration and ranking metrics for predicted probabilities.

- :func:`reliability` - ECE, MCE and the reliability curve of binary-event probabilities in
  equal-width bins (used for p(z) interval events; see :func:`interval_probabilities`).
- Binary classifiers (a class probability per object, e.g. lens or not): :func:`calibration_errors`
  (equal-mass ECE), :func:`binary_nll`, :func:`brier_score`, :func:`auroc` and
  :func:`auroc_interval`, :func:`roc_curve`, :func:`threshold_at_fpr`, :func:`tpr_at_fpr`,
  :func:`clopper_pearson` and :func:`purity_calibration` (purity in top-score bins at a deployment
  prevalence), with the :func:`sigmoid` / :func:`logit` helpers.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from scipy import special, stats


def reliability(prob: np.ndarray, outcome: np.ndarray, bins: int = 15) -> dict:
    """Expected and maximum calibration error of binary-event probabilities.

    Parameters
    ----------
    prob : (n,) predicted probability of the event (e.g. the top-class confidence)
    outcome : (n,) 1 if the event happened (e.g. the top class was right), else 0
    bins : number of equal-width confidence bins

    Returns
    -------
    dict with ``ece`` (bin-weighted mean |accuracy - confidence|), ``mce`` (largest bin gap),
    ``n_invalid`` (rows with NaN/inf dropped and counted) and the per-bin curve.
    """
    prob = np.asarray(prob, dtype=float)
    outcome = np.asarray(outcome, dtype=float)
    if prob.shape != outcome.shape:
        raise ValueError(f"prob and outcome differ in shape: {prob.shape} vs {outcome.shape}")
    valid = np.isfinite(prob) & np.isfinite(outcome)
    if np.any((prob[valid] < 0) | (prob[valid] > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    p, o = prob[valid], outcome[valid]
    if p.size == 0:
        raise ValueError("no valid rows")
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf = np.bincount(idx, p, bins) / np.maximum(count, 1)
    acc = np.bincount(idx, o, bins) / np.maximum(count, 1)
    gap = np.abs(acc - conf)
    used = count > 0
    return {"ece": float(np.sum(count[used] * gap[used]) / p.size), "mce": float(gap[used].max()),
            "n_invalid": int((~valid).sum()), "bin_count": count.tolist(), "bin_confidence": conf.tolist(),
            "bin_accuracy": acc.tolist()}


def interval_probabilities(pdfs: np.ndarray, zgrid: np.ndarray, edges, cdf: np.ndarray | None = None) -> np.ndarray:
    """Probability each p(z) (rows on ``zgrid``) gives to each redshift interval: (n, len(edges) - 1).

    Together with the indicator of the true redshift in each interval this turns p(z) into
    binary-event forecasts, so their calibration can be judged by a reliability diagram and ECE -
    the question a tomographic binning by p(z) mass depends on. ``cdf`` (the
    :func:`calipers.gridpdf.grid_cdf` of ``pdfs``) may be passed to save recomputing it.
    """
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges must be strictly increasing with at least 2 values, got {edges.tolist()}")
    from calipers.gridpdf import cdf_at, grid_cdf

    if cdf is None:
        cdf = grid_cdf(pdfs, zgrid)
    at = np.stack([cdf_at(pdfs, zgrid, np.full(len(pdfs), e), cdf) for e in edges], axis=1)
    return np.clip(np.diff(at, axis=1), 0.0, 1.0)


def interval_outcomes(ztrue: np.ndarray, edges) -> np.ndarray:
    """Indicator of each true redshift in each interval: (n, len(edges) - 1)."""
    edges = np.asarray(edges, dtype=float)
    z = np.asarray(ztrue, dtype=float)[:, None]
    return ((z >= edges[None, :-1]) & (z < edges[None, 1:])).astype(float)


# ---------------------------------------------------------------------------------------------
# Binary classifiers (scores / logits and 0/1 labels): calibration, ranking and rates at low FPR.
# Shared by every family whose output is a class probability (lens finders first). Conventions:
#   * a label is 1 for the positive class (e.g. a lens), 0 otherwise;
#   * an object is *selected* (called positive) when its score is strictly greater than the
#     threshold, ``score > t``; every function below uses this one convention;
#   * a rate comes with its exact (Clopper-Pearson) interval, and a rate that the sample cannot
#     resolve is reported with a status and NaN, never as a bare number.
# ---------------------------------------------------------------------------------------------

logger = logging.getLogger(__name__)

#: relative slack on ``fpr * n_neg`` so that e.g. 1e-3 * 1000 counts as exactly one negative
_COUNT_RTOL = 1e-9


def sigmoid(x):
    """Logistic function ``1 / (1 + exp(-x))`` without overflow for any finite or infinite x
    (``scipy.special.expit``); scalars in, float out; arrays in, arrays out."""
    out = special.expit(np.asarray(x, dtype=float))
    return float(out) if np.ndim(out) == 0 else out


def logit(p):
    """Log-odds ``log(p / (1 - p))`` (``scipy.special.logit``): -inf at 0, +inf at 1.

    Raises ValueError for a probability outside [0, 1] (a NaN included), naming the first index.
    """
    arr = np.asarray(p, dtype=float)
    bad = ~((arr >= 0) & (arr <= 1))
    if np.any(bad):
        first = np.argwhere(bad)[0].tolist() if arr.ndim else []
        raise ValueError(f"logit: probabilities must lie in [0, 1]; {int(bad.sum())} do not, first at index {first}")
    out = special.logit(arr)
    return float(out) if np.ndim(out) == 0 else out


def _binary_inputs(name: str, values, labels, weights=None, what: str = "scores"):
    """Validate 1-d finite values, 0/1 labels of the same length and non-negative weights."""
    values = np.asarray(values, dtype=float)
    labels_arr = np.asarray(labels)
    if values.ndim != 1 or labels_arr.ndim != 1:
        raise ValueError(f"{name}: {what} and labels must be 1-d, got shapes {values.shape} and {labels_arr.shape}")
    if values.shape != labels_arr.shape:
        raise ValueError(f"{name}: {what} and labels differ in length: {values.size} vs {labels_arr.size}")
    if values.size == 0:
        raise ValueError(f"{name}: no objects")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{name}: {what} not finite in {bad.size} row(s), first at row {bad[0]}")
    lab = labels_arr.astype(float)
    bad = np.flatnonzero((lab != 0) & (lab != 1))
    if bad.size:
        raise ValueError(f"{name}: labels must be 0 or 1; {bad.size} are not, first at row {bad[0]} "
                         f"(value {labels_arr[bad[0]]!r})")
    if weights is None:
        return values, lab.astype(np.int64), None
    w = np.asarray(weights, dtype=float)
    if w.shape != values.shape:
        raise ValueError(f"{name}: weights must have the shape of the {what}, got {w.shape} vs {values.shape}")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(f"{name}: weights must be finite and >= 0; {bad.size} are not, first at row {bad[0]}")
    if not w.sum() > 0:
        raise ValueError(f"{name}: the weights sum to zero")
    return values, lab.astype(np.int64), w


def _check_prob(name: str, prob: np.ndarray) -> None:
    bad = np.flatnonzero((prob < 0) | (prob > 1))
    if bad.size:
        raise ValueError(f"{name}: probabilities must lie in [0, 1]; {bad.size} do not, first at row {bad[0]} "
                         f"(value {prob[bad[0]]:g})")


def _check_cl(name: str, cl: float) -> None:
    if not 0 < cl < 1:
        raise ValueError(f"{name}: cl (confidence level) must be in (0, 1), got {cl}")


def calibration_errors(prob, labels, n_bins: int = 15, strategy: str = "equal_mass", weights=None) -> dict:
    """Expected and maximum calibration error of binary probabilities, with the reliability curve.

    Parameters
    ----------
    prob : (n,) predicted probability of the positive class, in [0, 1]
    labels : (n,) 0/1 outcomes
    n_bins : number of bins asked for
    strategy : ``"equal_mass"`` (default) - quantile bins of ``prob``: the sorted objects are
        cut into ``n_bins`` runs of equal (weighted) mass; objects with *tied* probabilities are
        always kept in one bin (the run that holds the first of them), so with heavy ties there
        are fewer, unequal bins and empty ones are dropped. ``"equal_width"`` - bins
        ``[j / n_bins, (j + 1) / n_bins)`` (the last closed), empty bins kept with NaN.
        Equal-mass bins are the right choice for a rare class: equal-width bins put almost every
        object of a 1:1000 sample into the first bin.
    weights : (n,) optional non-negative weights (e.g. to reweight a test set to a deployment
        prevalence); bins, means and the ECE are then weighted.

    Returns
    -------
    dict with ``ece`` (sum over bins of bin mass x |frequency - confidence|), ``mce`` (largest
    gap over non-empty bins), ``bin_edges`` (n_used + 1, a probability; for equal-mass bins the
    outer edges are 0 and 1 and an inner edge is the midpoint between the neighbouring bins'
    extreme probabilities), ``bin_count`` (objects per bin), ``bin_weight`` (weight per bin),
    ``bin_confidence`` (mean ``prob``), ``bin_frequency`` (mean label), ``strategy``, ``n``.
    Arrays are numpy arrays.
    """
    prob, lab, w = _binary_inputs("calibration_errors", prob, labels, weights, what="prob")
    _check_prob("calibration_errors", prob)
    if int(n_bins) < 1:
        raise ValueError(f"calibration_errors: n_bins must be >= 1, got {n_bins}")
    n_bins = int(n_bins)
    w = np.ones_like(prob) if w is None else w
    if strategy == "equal_width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        idx = np.clip((prob * n_bins).astype(np.int64), 0, n_bins - 1)
        n_used = n_bins
    elif strategy == "equal_mass":
        order = np.argsort(prob, kind="stable")
        p_sorted, w_sorted = prob[order], w[order]
        mass_before = np.concatenate([[0.0], np.cumsum(w_sorted)[:-1]])
        raw = np.minimum((n_bins * mass_before / w_sorted.sum()).astype(np.int64), n_bins - 1)
        # ties: every member of a run of equal probabilities goes to the bin of its first member
        new_value = np.concatenate([[True], p_sorted[1:] != p_sorted[:-1]])
        first_of_run = np.maximum.accumulate(np.where(new_value, np.arange(p_sorted.size), 0))
        raw = raw[first_of_run]
        used, idx_sorted = np.unique(raw, return_inverse=True)
        n_used = used.size
        idx = np.empty_like(idx_sorted)
        idx[order] = idx_sorted
        lo = np.array([p_sorted[idx_sorted == j][0] for j in range(n_used)])
        hi = np.array([p_sorted[idx_sorted == j][-1] for j in range(n_used)])
        edges = np.concatenate([[0.0], 0.5 * (hi[:-1] + lo[1:]), [1.0]])
    else:
        raise ValueError(f"calibration_errors: strategy must be 'equal_mass' or 'equal_width', got {strategy!r}")
    count = np.bincount(idx, minlength=n_used)
    wsum = np.bincount(idx, w, minlength=n_used)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, w * prob, minlength=n_used) / wsum
        freq = np.bincount(idx, w * lab, minlength=n_used) / wsum
    gap = np.abs(freq - conf)
    filled = wsum > 0
    ece = float(np.sum(wsum[filled] * gap[filled]) / wsum.sum())
    return {"ece": ece, "mce": float(gap[filled].max()), "bin_edges": edges, "bin_count": count,
            "bin_weight": wsum, "bin_confidence": conf, "bin_frequency": freq, "strategy": strategy,
            "n": int(prob.size)}


def binary_nll(scores, labels, *, from_logits: bool = False, weights=None) -> float:
    """Mean negative log-likelihood (nats per object) of 0/1 labels.

    ``scores`` are probabilities in [0, 1] (default) or logits (``from_logits=True``, computed as
    ``softplus(l) - y l`` without overflow). A probability of exactly 0 for a positive (or 1 for a
    negative) gives ``inf``: nothing is clipped. ``weights``: optional weighted mean.
    """
    scores, lab, w = _binary_inputs("binary_nll", scores, labels, weights)
    if from_logits:
        per = np.logaddexp(0.0, scores) - lab * scores
    else:
        _check_prob("binary_nll", scores)
        with np.errstate(divide="ignore"):
            per = -(special.xlogy(lab, scores) + special.xlogy(1 - lab, 1 - scores))
    return float(np.average(per, weights=w))


def brier_score(prob, labels, weights=None) -> float:
    """Mean squared difference between probability and 0/1 outcome (0 is perfect, 0.25 is a coin)."""
    prob, lab, w = _binary_inputs("brier_score", prob, labels, weights, what="prob")
    _check_prob("brier_score", prob)
    return float(np.average((prob - lab) ** 2, weights=w))


def _split_classes(name: str, scores, labels):
    scores, lab, _ = _binary_inputs(name, scores, labels)
    pos, neg = scores[lab == 1], scores[lab == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"{name}: needs both classes; got {pos.size} positive(s) and {neg.size} negative(s)")
    return pos, neg


def auroc(scores, labels) -> float:
    """Area under the ROC curve: P(score_pos > score_neg) + P(equal) / 2.

    The exact Mann-Whitney U statistic from mid-ranks (ties count one half), O(n log n).
    """
    pos, neg = _split_classes("auroc", scores, labels)
    ranks = stats.rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def _bootstrap_win_fraction(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator,
                            max_cells: int = 20_000_000) -> np.ndarray:
    """Bootstrap replicates of P(A > B) + P(A = B) / 2, resampling a and b separately.

    Resampling only needs counts on the sorted order: with u_1 < ... < u_m the distinct values of
    ``a``, an element of ``b`` matters only through its slot (below u_1, equal to u_1, between u_1
    and u_2, ...: 2m + 1 slots). A bootstrap sample of b is then a multinomial draw of its size
    over the slots with the observed slot frequencies, and one of a a multinomial draw over the m
    values, so one replicate costs O(m) whatever the size of b (100k negatives x 1000 replicates
    in well under a second when m is a few thousand).
    """
    u, a_count = np.unique(a, return_counts=True)
    m = u.size
    left = np.searchsorted(u, b, side="left")
    equal = (left < m) & (u[np.minimum(left, m - 1)] == b)
    slot = 2 * left + equal  # 2g: strictly between u_{g-1} and u_g; 2g + 1: equal to u_g
    p_slot = np.bincount(slot, minlength=2 * m + 1) / b.size
    p_a = a_count / a.size
    out = np.empty(n_boot)
    chunk = max(1, max_cells // (3 * m + 1))
    for start in range(0, n_boot, chunk):
        nb = min(chunk, n_boot - start)
        cb = rng.multinomial(b.size, p_slot, size=nb)
        ca = rng.multinomial(a.size, p_a, size=nb)
        cum = np.cumsum(cb, axis=1)
        below = cum[:, 0:2 * m:2] if m else cum[:, :0]  # b strictly below u_g: slots 0 .. 2g
        eq = cb[:, 1:2 * m + 1:2]
        out[start:start + nb] = np.sum(ca * (below + 0.5 * eq), axis=1) / (a.size * b.size)
    return out


def auroc_interval(scores, labels, n_boot: int = 1000, cl: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the AUROC from a stratified bootstrap.

    Positives and negatives are resampled separately (their numbers fixed, as in a test set built
    at a chosen ratio), ``n_boot`` times; the interval is the (1 - cl)/2 and (1 + cl)/2 quantiles
    of the replicates. Vectorised through multinomial counts on the sorted order (see
    ``_bootstrap_win_fraction``), over whichever class has fewer distinct scores.
    """
    _check_cl("auroc_interval", cl)
    if int(n_boot) < 1:
        raise ValueError(f"auroc_interval: n_boot must be >= 1, got {n_boot}")
    pos, neg = _split_classes("auroc_interval", scores, labels)
    rng = np.random.default_rng(seed)
    if np.unique(pos).size <= np.unique(neg).size:
        boots = _bootstrap_win_fraction(pos, neg, int(n_boot), rng)
    else:  # P(pos > neg) + P(=)/2 = 1 - [P(neg > pos) + P(=)/2]
        boots = 1.0 - _bootstrap_win_fraction(neg, pos, int(n_boot), rng)
    lo, hi = np.quantile(boots, [(1 - cl) / 2, (1 + cl) / 2])
    return float(lo), float(hi)


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with the ``score > t`` convention.

    Returns ``(fpr, tpr, thresholds)``, each of length m + 1 for m distinct scores: thresholds are
    the distinct scores in decreasing order followed by ``-inf``; point k holds the fractions of
    negatives and positives with score strictly greater than ``thresholds[k]``, so the curve runs
    from (0, 0) (threshold = the largest score) to (1, 1) (threshold = -inf).
    """
    pos, neg = _split_classes("roc_curve", scores, labels)
    levels = np.unique(np.concatenate([pos, neg]))[::-1]
    thresholds = np.concatenate([levels, [-np.inf]])
    # number strictly above each threshold: count >= the previous (larger) distinct level
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    n_neg_above = neg.size - np.searchsorted(neg_sorted, thresholds, side="right")
    n_pos_above = pos.size - np.searchsorted(pos_sorted, thresholds, side="right")
    return n_neg_above / neg.size, n_pos_above / pos.size, thresholds


def negatives_needed(fpr: float) -> int:
    """Fewest negatives that can resolve a false-positive rate ``fpr``: ceil(1 / fpr)."""
    return int(math.ceil(1.0 / fpr * (1 - _COUNT_RTOL)))


def threshold_at_fpr(negative_scores, fpr: float) -> float:
    """The smallest threshold t with ``(#negatives with score > t) / n_neg <= fpr``.

    Convention: an object counts as positive when ``score > t`` (strictly). With the negatives
    sorted ascending s_1 <= ... <= s_n and K = floor(fpr n), t = s_{n-K}: at most K negatives lie
    strictly above it, and none lie above t with a smaller t possible. Granularity: the achieved
    FPR is a multiple of 1 / n_neg (fewer than K negatives lie above t when scores tie at t), so
    the target can only be resolved when n_neg >= 1 / fpr; below that a ValueError says how many
    negatives are needed (with one negative in 1 / fpr the threshold would be the largest negative
    score, an FPR of exactly 0 that says nothing about 1 / fpr).
    """
    neg = np.asarray(negative_scores, dtype=float).ravel()
    if not 0 < fpr < 1:
        raise ValueError(f"threshold_at_fpr: fpr must be in (0, 1), got {fpr}")
    bad = np.flatnonzero(~np.isfinite(neg))
    if bad.size:
        raise ValueError(f"threshold_at_fpr: negative scores not finite in {bad.size} row(s), first at row {bad[0]}")
    need = negatives_needed(fpr)
    if neg.size < need:
        raise ValueError(f"threshold_at_fpr: an FPR of {fpr:g} needs at least {need} negatives to resolve "
                         f"(one false positive in 1/fpr); got {neg.size}")
    k_allowed = int(math.floor(fpr * neg.size * (1 + _COUNT_RTOL)))
    return float(np.partition(neg, neg.size - k_allowed - 1)[neg.size - k_allowed - 1])


def clopper_pearson(k, n, cl: float = 0.95):
    """Exact (Clopper-Pearson) central interval for a binomial proportion k / n.

    ``lo = Beta^-1((1 - cl)/2; k, n - k + 1)`` (0 when k = 0) and
    ``hi = Beta^-1((1 + cl)/2; k + 1, n - k)`` (1 when k = n); n = 0 gives (0, 1). Coverage is at
    least ``cl`` for every true proportion. Vectorised: scalars in, floats out; arrays in, arrays out.
    """
    _check_cl("clopper_pearson", cl)
    k_arr = np.asarray(k, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    k_arr, n_arr = np.broadcast_arrays(k_arr, n_arr)
    if np.any(~np.isfinite(k_arr) | ~np.isfinite(n_arr)) or np.any((k_arr < 0) | (k_arr > n_arr)) \
            or np.any(k_arr != np.round(k_arr)) or np.any(n_arr != np.round(n_arr)):
        raise ValueError("clopper_pearson: needs integer counts with 0 <= k <= n")
    alpha = 1.0 - cl
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k_arr > 0, stats.beta.ppf(alpha / 2, np.maximum(k_arr, 1), n_arr - k_arr + 1), 0.0)
        hi = np.where(k_arr < n_arr, stats.beta.ppf(1 - alpha / 2, k_arr + 1, np.maximum(n_arr - k_arr, 1)), 1.0)
    lo = np.where(n_arr == 0, 0.0, lo)
    hi = np.where(n_arr == 0, 1.0, hi)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def tpr_at_fpr(scores, labels, fprs=(1e-2, 1e-3, 1e-4), cl: float = 0.95) -> list[dict]:
    """True-positive rate at fixed false-positive rates, with exact intervals on both.

    For each target the threshold is :func:`threshold_at_fpr` on the negatives (``score > t`` is
    positive); ``k_neg`` negatives and ``k_pos`` positives lie above it. Each row holds
    ``fpr_target, status, threshold, fpr, fpr_lo, fpr_hi, tpr, tpr_lo, tpr_hi, n_pos, n_neg,
    k_pos, k_neg, negatives_needed`` with Clopper-Pearson intervals at ``cl``. A target the
    negatives cannot resolve (n_neg < 1 / fpr) gives ``status = "insufficient negatives"``, NaN
    for every rate and the threshold, and None for the counts above threshold - never a bare
    number. Note the TPR interval treats the threshold as fixed (it is set on the same
    negatives, whose own uncertainty is the FPR interval).
    """
    _check_cl("tpr_at_fpr", cl)
    pos, neg = _split_classes("tpr_at_fpr", scores, labels)
    rows = []
    for target in np.atleast_1d(np.asarray(fprs, dtype=float)):
        target = float(target)
        if not 0 < target < 1:
            raise ValueError(f"tpr_at_fpr: each fpr target must be in (0, 1), got {target}")
        row = {"fpr_target": target, "n_pos": int(pos.size), "n_neg": int(neg.size),
               "negatives_needed": negatives_needed(target)}
        if neg.size < row["negatives_needed"]:
            nan = float("nan")
            row |= {"status": "insufficient negatives", "threshold": nan, "fpr": nan, "fpr_lo": nan, "fpr_hi": nan,
                    "tpr": nan, "tpr_lo": nan, "tpr_hi": nan, "k_pos": None, "k_neg": None}
            logger.info("tpr_at_fpr: FPR %g needs %d negatives, have %d", target, row["negatives_needed"], neg.size)
        else:
            t = threshold_at_fpr(neg, target)
            k_neg, k_pos = int(np.sum(neg > t)), int(np.sum(pos > t))
            f_lo, f_hi = clopper_pearson(k_neg, neg.size, cl)
            t_lo, t_hi = clopper_pearson(k_pos, pos.size, cl)
            row |= {"status": "ok", "threshold": t, "fpr": k_neg / neg.size, "fpr_lo": f_lo, "fpr_hi": f_hi,
                    "tpr": k_pos / pos.size, "tpr_lo": t_lo, "tpr_hi": t_hi, "k_pos": k_pos, "k_neg": k_neg}
        rows.append(row)
    return rows


def purity_calibration(prob_deploy, labels, prevalence: float, n_bins: int = 10,
                       min_score_quantile: float = 0.99, cl: float = 0.95, n_draws: int = 20_000,
                       seed: int = 0) -> dict:
    """Is the predicted purity of the top-scoring objects the purity met at deployment?

    A lens finder is used at a prevalence pi of about 1e-3 but tested on a sample that is not (a
    few lenses per non-lens plus a large negative set). ``prob_deploy`` is the calibrated,
    prior-shifted probability at ``prevalence`` (the purity it predicts). In a bin of score holding
    k_pos of the N_pos positives and k_neg of the N_neg negatives the purity met at prevalence pi is

        P = pi a / (pi a + (1 - pi) b),   a = k_pos / N_pos,  b = k_neg / N_neg,

    with a cl interval from the percentiles of P over ``n_draws`` draws of
    a ~ Beta(k_pos + 1/2, N_pos - k_pos + 1/2) and b ~ Beta(k_neg + 1/2, N_neg - k_neg + 1/2)
    (Jeffreys posteriors, so a bin with no negatives still gets an honest interval; as for the
    Jeffreys binomial interval, a bin with k_neg = 0 has its upper end set to 1, one with k_pos = 0
    its lower end to 0, so the observed value always lies inside). The predicted
    purity of a bin is the mean of ``prob_deploy`` over its members weighted to the deployment
    mixture (a positive weighs pi / N_pos, a negative (1 - pi) / N_neg).

    Bins: the top-score region is ``prob_deploy > t_region`` with t_region the
    ``min_score_quantile`` quantile of the negatives' scores (default 0.99: the region a threshold
    at FPR 1e-2 selects); it is cut into ``n_bins`` bins holding equal numbers of positives
    (quantiles of the positives' ``prob_deploy`` in the region; tied scores never straddle a bin
    edge, so with ties there may be fewer bins). Equal positive counts keep every bin's a
    measured; the negatives thin out towards the top, which the Jeffreys interval on b carries.

    Returns
    -------
    dict with ``bins`` (list of rows: ``edge_lo, edge_hi`` (bin is edge_lo < p <= edge_hi),
    ``predicted, observed, lo, hi, k_pos, k_neg, inside`` (predicted within [lo, hi])),
    ``fraction_inside``, ``prevalence``, ``region_threshold``, ``n_pos``, ``n_neg``, ``cl``.
    """
    prob, lab, _ = _binary_inputs("purity_calibration", prob_deploy, labels, what="prob_deploy")
    _check_prob("purity_calibration", prob)
    _check_cl("purity_calibration", cl)
    if not 0 < prevalence < 1:
        raise ValueError(f"purity_calibration: prevalence must be in (0, 1), got {prevalence}")
    if not 0 <= min_score_quantile < 1:
        raise ValueError(f"purity_calibration: min_score_quantile must be in [0, 1), got {min_score_quantile}")
    if int(n_bins) < 1:
        raise ValueError(f"purity_calibration: n_bins must be >= 1, got {n_bins}")
    pos, neg = prob[lab == 1], prob[lab == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"purity_calibration: needs both classes; got {pos.size} positive(s) and "
                         f"{neg.size} negative(s)")
    t_region = float(np.quantile(neg, min_score_quantile, method="inverted_cdf")) if min_score_quantile > 0 \
        else float(-np.inf)
    top_pos = np.sort(pos[pos > t_region])
    if top_pos.size == 0:
        raise ValueError(f"purity_calibration: no positive scores above the region threshold {t_region:g} "
                         f"(the {min_score_quantile} quantile of the negatives)")
    # inner edges: upper ends of runs of equal positive counts, moved to the end of a run of ties
    cuts = np.unique(top_pos[np.ceil(np.arange(1, int(n_bins)) * top_pos.size / int(n_bins)).astype(int) - 1])
    inner = cuts[cuts < top_pos[-1]]
    edges = np.concatenate([[t_region], inner, [1.0]])
    if edges.size - 1 < int(n_bins):
        logger.warning("purity_calibration: %d bins asked, %d made (tied or too few positive scores: %d in region)",
                       n_bins, edges.size - 1, top_pos.size)
    w_pos, w_neg = prevalence / pos.size, (1 - prevalence) / neg.size
    rng = np.random.default_rng(seed)
    alpha = 1 - cl
    rows = []
    for lo_edge, hi_edge in zip(edges[:-1], edges[1:]):
        in_pos = pos[(pos > lo_edge) & (pos <= hi_edge)]
        in_neg = neg[(neg > lo_edge) & (neg <= hi_edge)]
        k_pos, k_neg = in_pos.size, in_neg.size
        predicted = (w_pos * in_pos.sum() + w_neg * in_neg.sum()) / (w_pos * k_pos + w_neg * k_neg)
        a, b = k_pos / pos.size, k_neg / neg.size
        observed = prevalence * a / (prevalence * a + (1 - prevalence) * b)
        a_draw = rng.beta(k_pos + 0.5, pos.size - k_pos + 0.5, size=int(n_draws))
        b_draw = rng.beta(k_neg + 0.5, neg.size - k_neg + 0.5, size=int(n_draws))
        purity = prevalence * a_draw / (prevalence * a_draw + (1 - prevalence) * b_draw)
        lo, hi = np.quantile(purity, [alpha / 2, 1 - alpha / 2])
        if k_neg == 0:  # b = 0 is possible: purity 1 is too (Brown, Cai & DasGupta's Jeffreys end fix)
            hi = 1.0
        if k_pos == 0:
            lo = 0.0
        rows.append({"edge_lo": float(lo_edge), "edge_hi": float(hi_edge), "predicted": float(predicted),
                     "observed": float(observed), "lo": float(lo), "hi": float(hi), "k_pos": int(k_pos),
                     "k_neg": int(k_neg), "inside": bool(lo <= predicted <= hi)})
    return {"bins": rows, "fraction_inside": float(np.mean([r["inside"] for r in rows])),
            "prevalence": float(prevalence), "region_threshold": t_region, "n_pos": int(pos.size), "n_neg": int(neg.size), "cl": float(cl)}
