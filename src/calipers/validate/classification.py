"""Calibration metrics for predicted probabilities: ECE, MCE and the reliability curve."""
from __future__ import annotations

import numpy as np


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
