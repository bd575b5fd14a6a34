"""Covariate-shift tests between a training and a target sample (arrays in, results out).

- :func:`mmd_test` - kernel maximum mean discrepancy (Gretton et al. 2012) with a Gaussian
  kernel (median-distance bandwidth) and a permutation p-value;
- :func:`classifier_two_sample_test` - train a classifier to tell the samples apart
  (Lopez-Paz & Oquab 2017); cross-validated accuracy above 1/2 with a binomial p-value.

Both shuffle each sample (seeded) before anything takes a subset of rows, standardise features on
the pooled sample and subsample to ``max_n`` rows per sample so the cost stays bounded on large
catalogs. Catalogs are often sorted (the DC2 training file is sorted by redshift), so a subset
taken by position would compare one end of a sample with the whole of the other.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class ShiftResult:
    test: str
    statistic: float
    p_value: float
    n_reference: int
    n_target: int

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _prepare(x: np.ndarray, y: np.ndarray, max_n: int, rng: np.random.Generator):
    """Validated, shuffled (at most ``max_n`` rows each), pooled-standardised copies of both samples."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim == 1:
        x, y = x[:, None], y[:, None]
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"samples have different numbers of features: {x.shape[1]} and {y.shape[1]}")
    for name, a in (("reference", x), ("target", y)):
        bad = np.flatnonzero(~np.all(np.isfinite(a), axis=1))
        if bad.size:
            raise ValueError(f"{name} sample: non-finite features in {bad.size} row(s), first at row {bad[0]}")
    # a random order, so that any later "first n rows" is a random subset of a possibly sorted input
    x = x[rng.permutation(len(x))[:max_n]]
    y = y[rng.permutation(len(y))[:max_n]]
    pooled = np.vstack([x, y])
    mu, sd = pooled.mean(0), pooled.std(0)
    sd[sd == 0] = 1.0
    return (x - mu) / sd, (y - mu) / sd


def _sq_dists(a: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * a @ a.T, 0)


def gaussian_kernel(z: np.ndarray, bandwidth: float | None = None) -> tuple[np.ndarray, float]:
    """The Gaussian kernel matrix ``k_ij = exp(-|z_i - z_j|^2 / (2 sigma^2))`` of the rows of ``z``
    and ``sigma``: given, or by the median heuristic (``sigma^2`` half the median squared distance
    between distinct rows, so ``k = exp(-d^2 / median d^2)``)."""
    d2 = _sq_dists(z)
    if bandwidth is None:
        med = float(np.median(d2[np.triu_indices(len(z), 1)])) if len(z) > 1 else 0.0
        bandwidth = float(np.sqrt(med / 2.0)) if med > 0 else 1.0
    return np.exp(-d2 / (2.0 * bandwidth ** 2)), float(bandwidth)


def mmd2_unbiased_permutations(k: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) for each column of ``labels[N, P]`` (True: the
    row is in the first sample), from the kernel matrix ``k[N, N]`` of the pooled rows: one matrix
    product for all ``P`` labellings."""
    a = np.asarray(labels, dtype=k.dtype)
    n = a.sum(0)
    m = len(k) - n
    if np.any(n < 2) or np.any(m < 2):
        raise ValueError("MMD: each sample needs at least 2 rows")
    ka = k @ a
    diag = np.diag(k)
    kxx = (a * ka).sum(0) - a.T @ diag          # sum over i != j, both in the first sample
    kxy = ((1.0 - a) * ka).sum(0)
    kyy = k.sum() - 2.0 * kxy - (a * ka).sum(0) - (1.0 - a).T @ diag
    return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (n * m)


def mmd_test(reference: np.ndarray, target: np.ndarray, n_permutations: int = 200, max_n: int = 1500,
             seed: int = 0) -> ShiftResult:
    """Unbiased MMD^2 with a Gaussian kernel (median-heuristic bandwidth on the pooled, standardised
    sample) and the permutation p-value ``(1 + #{null >= observed}) / (1 + n_permutations)``, exact
    under exchangeability."""
    rng = np.random.default_rng(seed)
    x, y = _prepare(reference, target, max_n, rng)
    z = np.vstack([x, y])
    k, _ = gaussian_kernel(z)
    n, m = len(x), len(y)
    labels = np.zeros((n + m, n_permutations + 1), dtype=bool)
    labels[:n, 0] = True
    for j in range(1, n_permutations + 1):
        labels[rng.permutation(n + m)[:n], j] = True
    stat = mmd2_unbiased_permutations(k, labels)
    observed, null = stat[0], stat[1:]
    p = (1 + np.sum(null >= observed)) / (1 + n_permutations)
    return ShiftResult("mmd", float(observed), float(p), n, m)


def classifier_two_sample_test(reference: np.ndarray, target: np.ndarray, max_n: int = 20000, folds: int = 5,
                               seed: int = 0) -> ShiftResult:
    """Cross-validated accuracy of a gradient-boosted classifier telling the samples apart.

    Under no shift the held-out accuracy of balanced samples is Binomial(N, 1/2)/N; the p-value
    is that binomial tail. The larger sample is balanced to the smaller by a seeded random subset
    (the rows are shuffled first), never by its first rows: on a sorted catalog those are one end
    of its distribution.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    x, y = _prepare(reference, target, max_n, rng)
    n = min(len(x), len(y))  # balance the classes so chance accuracy is exactly 1/2
    x, y = x[:n], y[:n]  # a random subset: _prepare shuffled the rows
    features = np.vstack([x, y])
    labels = np.r_[np.zeros(n), np.ones(n)]
    clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    pred = cross_val_predict(clf, features, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    correct = int(np.sum(pred == labels))
    p = float(stats.binom.sf(correct - 1, 2 * n, 0.5))
    return ShiftResult("classifier", correct / (2 * n), p, n, n)
