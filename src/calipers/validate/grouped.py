"""Calibration of 1-D predictive distributions judged per group of objects.

A distribution calibrated on the whole sample can still be over-confident at low S/N and
under-confident at high S/N, the two errors cancelling in the pooled coverage. These functions
split the probability integral transform (PIT) values by a grouping (an S/N value, a metallicity
third, a magnitude bin) and report, per group, the coverage of the central 68 and 95% intervals
and the KS distance of the PIT from uniform; :func:`grouped_coverage_checks` turns the table into
gate checks. Arrays in, rows out: no files, no configuration.
"""
from __future__ import annotations

import numpy as np

from calipers.validate.gate import Check
from calipers.validate.metrics import pit_summary

LEVELS = (0.68, 0.95)


def quantile_bins(values, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``values`` into ``n_bins`` groups of (nearly) equal size by their quantiles.

    Returns the bin index of every value (0 .. n_bins - 1) and the ``n_bins + 1`` edges (the
    quantiles; the first and last are the minimum and maximum). Non-finite values get index -1.
    """
    v = np.asarray(values, dtype=float)
    if n_bins < 1:
        raise ValueError(f"quantile_bins: n_bins must be >= 1, got {n_bins}")
    finite = np.isfinite(v)
    if not finite.any():
        raise ValueError("quantile_bins: no finite value to bin")
    edges = np.quantile(v[finite], np.linspace(0.0, 1.0, n_bins + 1))
    index = np.full(v.shape, -1, dtype=int)
    index[finite] = np.clip(np.searchsorted(edges, v[finite], side="right") - 1, 0, n_bins - 1)
    return index, edges


def edge_bins(values, edges) -> np.ndarray:
    """Bin index of every value for the given increasing ``edges`` (the last bin is closed on the
    right); -1 outside the edges or not finite."""
    v = np.asarray(values, dtype=float)
    e = np.asarray(edges, dtype=float)
    if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0):
        raise ValueError(f"edge_bins: edges must be at least two increasing numbers, got {list(e)}")
    index = np.searchsorted(e, v, side="right") - 1
    index[v == e[-1]] = e.size - 2
    index[~np.isfinite(v) | (v < e[0]) | (v > e[-1])] = -1
    return index


def coverage_by_group(pit, groups: dict[str, np.ndarray], labels: dict[str, dict] | None = None,
                      levels=LEVELS) -> list[dict]:
    """Coverage of the central intervals and PIT KS distance per group.

    Parameters
    ----------
    pit : (n,) PIT values (the predictive CDF at the truth)
    groups : grouping name -> (n,) group key per object (numbers or strings); objects with the
        integer key -1 (as from :func:`quantile_bins`) or a NaN key belong to no group of that grouping
    labels : grouping name -> {key -> label written into the row} (e.g. the bin's edges)
    levels : central-interval probabilities

    Returns
    -------
    One row per (grouping, group) in increasing key order, plus one row ``grouping: "all"``
    first: ``n``, ``pit_ks``, ``coverage68``, ``coverage95`` and ``error68``, ``error95``
    (coverage minus nominal).
    """
    u = np.asarray(pit, dtype=float)
    if u.ndim != 1:
        raise ValueError(f"coverage_by_group: pit must be 1-D, got shape {u.shape}")
    bad = np.flatnonzero(~np.isfinite(u) | (u < 0) | (u > 1))
    if bad.size:
        raise ValueError(f"coverage_by_group: {bad.size} PIT value(s) not in [0, 1], first at row {bad[0]} ({u[bad[0]]})")
    labels = labels or {}

    def row(grouping, key, sel):
        n = int(sel.sum())
        out = {"grouping": grouping, "group": labels.get(grouping, {}).get(key, _text(key)), "n": n}
        if n == 0:
            return out | {"pit_ks": None} | {f"coverage{round(100 * lv)}": None for lv in levels} \
                | {f"error{round(100 * lv)}": None for lv in levels}
        summary = _summary(u[sel], levels)
        return out | summary

    rows = [row("all", "all", np.ones(u.shape, dtype=bool))]
    for name, keys in groups.items():
        k = np.asarray(keys)
        if k.shape != u.shape:
            raise ValueError(f"coverage_by_group: grouping {name!r} has {k.size} keys for {u.size} PIT values")
        for key in np.unique(k):
            if _is_none(key):
                continue
            rows.append(row(name, key, k == key))
    return rows


def grouped_coverage_checks(rows: list[dict], max_coverage_error: float, max_pit_ks: float | None = None,
                            min_group_size: int = 1) -> list[Check]:
    """Gate checks from :func:`coverage_by_group` rows: |coverage - nominal| <= max_coverage_error
    at every level in every group with at least ``min_group_size`` objects (smaller groups are
    too noisy to judge and are not checked; the table still shows them), and PIT KS of every
    such group <= ``max_pit_ks`` when given."""
    checks = []
    for r in rows:
        if r["n"] < max(min_group_size, 1):
            continue
        where = "all objects" if r["grouping"] == "all" else f"{r['grouping']} {r['group']}"
        tag = "" if r["grouping"] == "all" else f"[{r['grouping']}={r['group']}]"
        for key in sorted(k for k in r if k.startswith("coverage")):
            level = int(key.removeprefix("coverage")) / 100
            checks.append(Check(f"{key}{tag}", r[key], "abs<=", max_coverage_error, target=level,
                                why=f"{round(100 * level)}% central-interval coverage, {where} (n={r['n']})"))
        if max_pit_ks is not None:
            checks.append(Check(f"pit_ks{tag}", r["pit_ks"], "<=", max_pit_ks,
                                why=f"PIT uniformity, {where} (n={r['n']})"))
    return checks


def _summary(pit: np.ndarray, levels) -> dict:
    base = pit_summary(pit)
    out = {"pit_ks": base["pit_ks"]}
    for lv in levels:
        cov = float(np.mean((pit > (1 - lv) / 2) & (pit < (1 + lv) / 2)))
        out[f"coverage{round(100 * lv)}"] = cov
        out[f"error{round(100 * lv)}"] = cov - lv
    return out


def _is_none(key) -> bool:
    """The key of rows in no group: -1 from the binning functions (integer keys), NaN for values."""
    if isinstance(key, (int, np.integer)):
        return int(key) == -1
    return isinstance(key, (float, np.floating)) and not np.isfinite(key)


def _text(key) -> str:
    if isinstance(key, (float, np.floating)) and float(key).is_integer():
        return str(int(key))
    return str(key.item() if isinstance(key, np.generic) else key)
