"""Tomographic bins: edges and the assignment of galaxies to them."""
from __future__ import annotations

import numpy as np


def _check_edges(edges) -> np.ndarray:
    e = np.asarray(edges, dtype=float)
    if e.ndim != 1 or len(e) < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError(f"bin edges must be finite and strictly increasing, at least 2 of them; got {list(e)}")
    return e


def equal_number_edges(zpoint: np.ndarray, n_bins: int, zmin: float, zmax: float) -> np.ndarray:
    """Edges giving each of ``n_bins`` bins the same number of galaxies with zmin <= zpoint < zmax."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    z = np.asarray(zpoint, dtype=float)
    z = z[np.isfinite(z) & (z >= zmin) & (z < zmax)]
    if len(z) < n_bins:
        raise ValueError(f"only {len(z)} galaxies with {zmin} <= z < {zmax}: too few for {n_bins} bins")
    inner = np.quantile(z, np.linspace(0, 1, n_bins + 1)[1:-1])
    return _check_edges(np.concatenate([[zmin], inner, [zmax]]))


def assign_by_point(zpoint: np.ndarray, edges) -> np.ndarray:
    """Bin index of each galaxy by a point estimate; -1 outside the edges or non-finite."""
    e = _check_edges(edges)
    z = np.asarray(zpoint, dtype=float)
    idx = np.searchsorted(e, z, side="right") - 1
    idx[~np.isfinite(z) | (z < e[0]) | (z >= e[-1])] = -1
    return idx.astype(np.int64)


def assign_by_mass(pdfs: np.ndarray, zgrid: np.ndarray, edges, min_mass: float = 0.0) -> np.ndarray:
    """Bin index of each galaxy: the bin holding the largest share of its p(z) (rows on ``zgrid``);
    -1 where that share is below ``min_mass`` or the row is invalid."""
    from calipers.validate.classification import interval_probabilities

    e = _check_edges(edges)
    p = np.asarray(pdfs, dtype=float)
    good = np.all(np.isfinite(p), axis=1) & (p.sum(1) > 0)
    idx = np.full(len(p), -1, dtype=np.int64)
    if good.any():
        mass = interval_probabilities(p[good], zgrid, e)
        best = mass.argmax(1)
        best[mass.max(1) < min_mass] = -1
        idx[good] = best
    return idx



POINT_KINDS = ("zmode", "zmean", "zmedian")


def grid_point_estimate(pdfs: np.ndarray, zgrid: np.ndarray, kind: str) -> np.ndarray:
    """A point estimate of densities on a grid: ``zmode`` (grid argmax), ``zmean`` or ``zmedian``."""
    from calipers.validate.metrics import grid_point_estimates

    if kind not in POINT_KINDS:
        raise ValueError(f"point estimate must be one of {POINT_KINDS}, got {kind!r}")
    return grid_point_estimates(pdfs, zgrid, [kind])[kind]
