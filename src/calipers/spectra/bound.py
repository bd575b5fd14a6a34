"""How close a log g regression comes to its information ceiling: R^2, RMSE and efficiency per group.

For the objects of one group (one S/N, one [M/H] third) with true labels y and point estimates m,

    R^2 = 1 - sum (m - y)^2 / sum (y - <y>)^2,      RMSE = sqrt(<(m - y)^2>),

and the efficiency is ``R^2 / R^2_max`` with ``R^2_max`` the ceiling of that group
(:func:`calipers.spectra.fisher.r2_ceiling`; the Bayesian form by default, which is the one that
bounds a shrinking estimator at low S/N). An efficiency above ``leakage_threshold`` (1.05) says
the model knows more than the data carry: probable leakage (of the truth through an input channel,
or of test objects into training), and a gate fails it. R^2 is the mean-squared-error form, not
the squared correlation, so a biased model is not flattered.
Arrays in, rows out; no file is opened here.
"""
from __future__ import annotations

import numpy as np

__all__ = ["r2_score", "rmse", "bound_comparison", "group_ceilings", "bootstrap_interval", "LEAKAGE_THRESHOLD"]

LEAKAGE_THRESHOLD = 1.05


def _pair(pred, truth, what: str = "predictions") -> tuple[np.ndarray, np.ndarray]:
    """Both as finite 1-d float arrays of one length, or a ValueError naming the first bad row."""
    m = np.asarray(pred, dtype=float)
    y = np.asarray(truth, dtype=float)
    if m.shape != y.shape or m.ndim != 1:
        raise ValueError(f"{what} and truth must be 1-d of one length; got {m.shape} and {y.shape}")
    bad = np.flatnonzero(~(np.isfinite(m) & np.isfinite(y)))
    if bad.size:
        raise ValueError(f"{what} or truth not finite in {bad.size} row(s), first at row {bad[0]}")
    return m, y


def r2_score(pred, truth) -> float:
    """1 - SSE / SST (NaN for fewer than 2 objects or constant truth)."""
    m, y = _pair(pred, truth)
    sst = float(np.sum((y - y.mean()) ** 2)) if y.size else 0.0
    if y.size < 2 or sst == 0:
        return float("nan")
    return 1.0 - float(np.sum((m - y) ** 2)) / sst


def rmse(pred, truth) -> float:
    m, y = _pair(pred, truth)
    return float(np.sqrt(np.mean((m - y) ** 2))) if y.size else float("nan")


def bound_comparison(pred, truth, groups: dict[str, np.ndarray], ceilings: dict[str, dict], model: str = "model",
                     leakage_threshold: float = LEAKAGE_THRESHOLD) -> list[dict]:
    """One row per (grouping, value): n, R^2, RMSE, the ceiling's R^2_max and the efficiency.

    Parameters
    ----------
    pred, truth : point estimates and true labels (n,)
    groups : grouping name -> per-object group value (n,), e.g. ``{"snr": snr, "m_h_third": k}``
    ceilings : grouping name -> {group value (as a string) -> R^2_max}; a group without a ceiling
        gets ``r2_max`` and ``efficiency`` None
    model : name written into every row
    """
    m, y = _pair(pred, truth)
    rows = []
    for name, values in groups.items():
        v = np.asarray(values)
        if v.shape != y.shape:
            raise ValueError(f"group {name!r} has {v.size} values for {y.size} objects")
        for value in np.unique(v):
            sel = v == value
            key = _key(value)
            r2 = r2_score(m[sel], y[sel])
            ceiling = ceilings.get(name, {}).get(key)
            eff = None if ceiling is None or not ceiling > 0 or not np.isfinite(r2) else r2 / ceiling
            rows.append({"model": model, "grouping": name, "group": key, "n": int(sel.sum()), "r2": r2,
                         "rmse": rmse(m[sel], y[sel]), "r2_max": ceiling, "efficiency": eff,
                         "leakage": bool(eff is not None and eff > leakage_threshold)})
    return rows


def bootstrap_interval(statistic, arrays: tuple[np.ndarray, ...], n_boot: int = 200, seed: int = 0,
                       level: float = 0.68) -> tuple[float, float]:
    """Central ``level`` interval of ``statistic(*arrays)`` over ``n_boot`` bootstrap resamples of the
    rows (seeded); (nan, nan) for fewer than 2 rows or ``n_boot`` < 1."""
    n = len(arrays[0])
    if n < 2 or n_boot < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        rows = rng.integers(0, n, n)
        values[b] = statistic(*(a[rows] for a in arrays))
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def group_ceilings(sigma, truth, groups: dict[str, np.ndarray], n_boot: int = 200, seed: int = 0) -> dict[str, dict]:
    """R^2_max of every group from per-object ceiling sigmas, with a bootstrap band over the objects.

    ``R^2_max = 1 - mean(sigma^2) / Var(truth)`` over the group's objects
    (:func:`calipers.spectra.fisher.r2_ceiling`, repeated here on arrays so that this module needs no
    torch). The band (16th-84th percentile of ``n_boot`` resamples) is the sampling uncertainty of the
    ceiling from a finite set of stars, the band drawn around it in the R^2-vs-S/N figure.

    Returns
    -------
    grouping name -> {group key (as :func:`bound_comparison` writes it) -> {"r2_max", "lo", "hi", "n"}}
    """
    sig, y = _pair(sigma, truth, "group_ceilings: sigma")

    def ceiling(s, t):
        var = float(np.var(t))
        return 1.0 - float(np.mean(s ** 2)) / var if var > 0 else float("nan")

    out: dict[str, dict] = {}
    for name, values in groups.items():
        v = np.asarray(values)
        if v.shape != y.shape:
            raise ValueError(f"group {name!r} has {v.size} values for {y.size} objects")
        table = {}
        for k, value in enumerate(np.unique(v)):
            sel = v == value
            lo, hi = bootstrap_interval(ceiling, (sig[sel], y[sel]), n_boot, seed + k)
            table[_key(value)] = {"r2_max": ceiling(sig[sel], y[sel]) if sel.sum() >= 2 else float("nan"),
                                  "lo": lo, "hi": hi, "n": int(sel.sum())}
        out[name] = table
    return out


def _key(value) -> str:
    """A group value as a stable string key ('5' for 5.0, '0.5' for 0.5)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value)
