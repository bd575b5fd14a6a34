"""Per-batch covariate and prediction drift tests against a reference sample.

- :func:`mmd_drift` - kernel MMD (Gaussian kernel, median-heuristic bandwidth) with a permutation
  p-value: :func:`calipers.validate.shift.mmd_test`, subsampling the reference to ``max_n`` rows
  with a generator seeded per batch;
- :func:`ks_bonferroni` - a two-sample Kolmogorov-Smirnov test per feature; the batch is flagged
  when the smallest p-value is below ``alpha / n_features`` (Bonferroni), so the family-wise
  false-alarm rate per batch is at most ``alpha``;
- :func:`mean_shift_z` - the Welch z-score of each feature's mean against the reference's, N(0, 1)
  before a drift (central limit theorem): the input of a sequential detector per feature
  (:mod:`~calipers.monitor.sequential`), which accumulates a small, lasting offset (a photometric
  zero point) over batches where a per-batch test sees nothing;
- :func:`colour_features` - adjacent differences of magnitudes (colours), where a zero-point error
  of one band stands out against a scatter much smaller than that of the magnitudes;
- :func:`prediction_drift` - the same KS tests on what a model predicts (point estimates and
  predictive widths), which needs no labels.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from calipers.validate.shift import mmd_test


def _as_2d(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or len(a) < 2:
        raise ValueError(f"{name}: need a [n, n_features] array with n >= 2, got shape {a.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(a), axis=1))
    if bad.size:
        raise ValueError(f"{name}: non-finite values in {bad.size} row(s), first at row {bad[0]}")
    return a


def ks_bonferroni(reference, batch, alpha: float = 0.05, names=None) -> dict:
    """Two-sample KS per feature (exact p-values where scipy computes them); ``alarm`` when the
    smallest p-value is below ``alpha / n_features``; ``p_bonferroni = min(1, n_features * min p)``."""
    x, y = _as_2d(reference, "reference"), _as_2d(batch, "batch")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"reference and batch have {x.shape[1]} and {y.shape[1]} features")
    names = list(names) if names is not None else [f"feature_{j}" for j in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise ValueError(f"ks_bonferroni: {len(names)} names for {x.shape[1]} features")
    res = [stats.ks_2samp(x[:, j], y[:, j]) for j in range(x.shape[1])]
    p = np.array([r.pvalue for r in res])
    worst = int(np.argmin(p))
    return {"ks_statistic": {n: float(r.statistic) for n, r in zip(names, res)},
            "ks_p": {n: float(v) for n, v in zip(names, p)},
            "ks_worst_feature": names[worst], "p_bonferroni": float(min(1.0, len(p) * p[worst])),
            "alarm": bool(p[worst] < alpha / len(p))}


def mean_shift_z(reference, batch) -> np.ndarray:
    """Per feature ``(mean_batch - mean_ref) / sqrt(var_batch / n_batch + var_ref / n_ref)``."""
    x, y = _as_2d(reference, "reference"), _as_2d(batch, "batch")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"reference and batch have {x.shape[1]} and {y.shape[1]} features")
    se = np.sqrt(x.var(0, ddof=1) / len(x) + y.var(0, ddof=1) / len(y))
    se[se == 0] = np.inf
    return (y.mean(0) - x.mean(0)) / se


def colour_features(mags, names, anchor: str = "") -> tuple[np.ndarray, list[str]]:
    """Adjacent differences ``m_j - m_(j+1)`` of the columns of ``mags`` (in the order of ``names``),
    and the column ``anchor`` itself when given (a magnitude that sets the brightness)."""
    m = _as_2d(mags, "magnitudes")
    names = list(names)
    if m.shape[1] != len(names) or len(names) < 2:
        raise ValueError(f"colour_features: need >= 2 named columns, got {m.shape[1]} columns and names {names}")
    cols = [m[:, j] - m[:, j + 1] for j in range(len(names) - 1)]
    out = [f"{names[j]}-{names[j + 1]}" for j in range(len(names) - 1)]
    if anchor:
        if anchor not in names:
            raise ValueError(f"colour_features: anchor {anchor!r} is not one of {names}")
        cols.append(m[:, names.index(anchor)])
        out.append(anchor)
    return np.column_stack(cols), out


def mmd_drift(reference, batch, alpha: float = 0.05, n_permutations: int = 200, max_n: int = 1000,
              seed: int = 0) -> dict:
    """Unbiased MMD^2 of the batch against the reference and its permutation p-value (exact: the
    ``(1 + count) / (1 + n_permutations)`` form); ``alarm`` when ``p < alpha``. Both samples are
    shuffled and cut to ``max_n`` rows (seeded), standardised on the pooled sample."""
    x, y = _as_2d(reference, "reference"), _as_2d(batch, "batch")
    if n_permutations < 1:
        raise ValueError(f"mmd_drift: n_permutations must be >= 1, got {n_permutations}")
    r = mmd_test(x, y, n_permutations=n_permutations, max_n=max_n, seed=seed)
    return {"mmd2": r.statistic, "mmd_p": r.p_value, "alarm": bool(r.p_value < alpha),
            "n_reference": r.n_reference, "n_batch": r.n_target}


def prediction_drift(reference_point, reference_width, point, width, alpha: float = 0.05) -> dict:
    """Label-free drift of the predictions: KS on the point estimates and on the predictive widths
    (two features, Bonferroni)."""
    ref = np.column_stack([np.ravel(reference_point), np.ravel(reference_width)])
    new = np.column_stack([np.ravel(point), np.ravel(width)])
    return ks_bonferroni(ref, new, alpha=alpha, names=["point", "width"])
