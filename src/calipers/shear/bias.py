"""Shear bias as the field reports it: ``<g_hat> = (1 + m) g_true + c`` per component, with errors.

:func:`fit_bias` fits the two components by least squares on per-object estimates and true shears,
with bootstrap errors over resampling units (ring pairs with their noise-cancelling partners, so that
the cancellation survives the resampling). :func:`response_calibrate` divides each object's
estimate by the mean metacal response of its bin (S/N and size bins), the calibration of
Sheldon & Huff (2017). Requirements: DESC SRD year 10, ``|m| < 0.003``; LSST for isolated galaxies
``|m| < 0.001``; ``|c| < 5e-4`` in the issue's benchmark.
"""
from __future__ import annotations

import numpy as np

SRD_Y10_M = 0.003
LSST_ISOLATED_M = 0.001


def _linear_fit(g_true: np.ndarray, g_hat: np.ndarray) -> tuple[float, float]:
    x = g_true - g_true.mean()
    slope = float(np.sum(x * (g_hat - g_hat.mean())) / np.sum(x * x))
    return slope - 1.0, float(g_hat.mean() - slope * g_true.mean())


def fit_bias(g_hat, g_true, units=None, n_boot: int = 200, seed: int = 0) -> dict:
    """``m1, m2, c1, c2`` and their bootstrap standard errors (``*_err``) from ``g_hat[n, 2]`` and
    ``g_true[n, 2]``; rows sharing a ``units`` value are resampled together (default: each row)."""
    g_hat = np.asarray(g_hat, dtype=float)
    g_true = np.asarray(g_true, dtype=float)
    if g_hat.shape != g_true.shape or g_hat.ndim != 2 or g_hat.shape[1] != 2:
        raise ValueError(f"fit_bias: g_hat and g_true must both be [n, 2], got {g_hat.shape} and {g_true.shape}")
    if not np.all(np.isfinite(g_hat)) or not np.all(np.isfinite(g_true)):
        raise ValueError("fit_bias: non-finite shear estimates or truths")
    units = np.arange(len(g_hat)) if units is None else np.asarray(units)
    uniq, inv = np.unique(units, return_inverse=True)
    out: dict = {"n_objects": int(len(g_hat)), "n_units": int(len(uniq))}
    for i in (0, 1):
        if np.ptp(g_true[:, i]) == 0:
            raise ValueError(f"fit_bias: the true shear's component {i + 1} takes one value: m cannot be fitted")
        out[f"m{i + 1}"], out[f"c{i + 1}"] = _linear_fit(g_true[:, i], g_hat[:, i])
    if n_boot > 0 and len(uniq) > 1:
        rng = np.random.default_rng(seed)
        # per-unit sums of the moments the fit needs, so that each resample is a weighted sum
        sums = {}
        for i in (0, 1):
            x, y = g_true[:, i], g_hat[:, i]
            sums[i] = np.stack([np.bincount(inv, w, len(uniq)) for w in (np.ones_like(x), x, y, x * x, x * y)])
        boot = {k: [] for k in ("m1", "m2", "c1", "c2")}
        for _ in range(n_boot):
            w = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))
            for i in (0, 1):
                n, sx, sy, sxx, sxy = sums[i] @ w
                slope = (sxy - sx * sy / n) / (sxx - sx * sx / n)
                boot[f"m{i + 1}"].append(slope - 1.0)
                boot[f"c{i + 1}"].append(sy / n - slope * sx / n)
        for k, v in boot.items():
            out[f"{k}_err"] = float(np.std(v, ddof=1))
    return out


def fit_bias_calibrated(eps, response, g_true, bins=None, units=None, n_boot: int = 200, seed: int = 0) -> dict:
    """:func:`fit_bias` of the response-calibrated estimates ``<R>_b^-1 eps``, with bootstrap errors
    that include the uncertainty of the mean responses: each resample of units recomputes every bin's
    ``<R>`` from its own rows before fitting (with noise-cancelling pairs the response's scatter
    between galaxies, not the shape noise, limits m)."""
    eps = np.asarray(eps, dtype=float)
    response = np.asarray(response, dtype=float)
    g_true = np.asarray(g_true, dtype=float)
    bins = np.zeros(len(eps), int) if bins is None else np.asarray(bins)
    units = np.arange(len(eps)) if units is None else np.asarray(units)
    out = fit_bias(response_calibrate(eps, response, bins), g_true, units, n_boot=0)
    if n_boot > 0:
        uniq, inv = np.unique(units, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        starts = np.searchsorted(inv[order], np.arange(len(uniq)))
        counts = np.diff(np.append(starts, len(order)))
        rng = np.random.default_rng(seed)
        boot = {k: [] for k in ("m1", "m2", "c1", "c2")}
        for _ in range(n_boot):
            pick = rng.integers(0, len(uniq), len(uniq))
            rows = order[np.repeat(starts[pick], counts[pick]) + _ranges(counts[pick])]
            b = bins[rows]
            mean_r = {int(k): response[rows][b == k].mean(axis=0) for k in np.unique(b)}
            res = fit_bias(response_calibrate(eps[rows], None, b, mean_r), g_true[rows], n_boot=0)
            for k in boot:
                boot[k].append(res[k])
        for k, v in boot.items():
            out[f"{k}_err"] = float(np.std(v, ddof=1))
    return out


def _ranges(counts: np.ndarray) -> np.ndarray:
    """``[0..c0-1, 0..c1-1, ...]`` for the given counts."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1]) - np.repeat(ends - counts, counts) if len(counts) else np.zeros(0, int)


def bin_index(values, edges) -> np.ndarray:
    """The bin of each value among ``edges`` (values outside go to the first or last bin)."""
    edges = np.asarray(edges, dtype=float)
    return np.clip(np.searchsorted(edges, np.asarray(values, dtype=float), side="right") - 1, 0, len(edges) - 2)


def mean_response(response, bins=None) -> dict:
    """``{bin: <R>}`` (2x2) over the objects of each bin (one bin ``0`` without ``bins``)."""
    response = np.asarray(response, dtype=float)
    bins = np.zeros(len(response), int) if bins is None else np.asarray(bins)
    return {int(b): response[bins == b].mean(axis=0) for b in np.unique(bins)}


def response_calibrate(g_hat, response, bins=None, mean_r: dict | None = None) -> np.ndarray:
    """``<R>_b^-1 g_hat`` per object, ``<R>_b`` the mean 2x2 response of its bin (from ``response``
    unless ``mean_r`` is given, e.g. measured on another sample)."""
    g_hat = np.asarray(g_hat, dtype=float)
    bins = np.zeros(len(g_hat), int) if bins is None else np.asarray(bins)
    mean_r = mean_response(response, bins) if mean_r is None else mean_r
    out = np.empty_like(g_hat)
    for b in np.unique(bins):
        if int(b) not in mean_r:
            raise ValueError(f"response_calibrate: no mean response for bin {int(b)}")
        sel = bins == b
        out[sel] = g_hat[sel] @ np.linalg.inv(mean_r[int(b)]).T
    return out
