"""The one CDF convention of calipers: a gridded pdf is piecewise linear.

A density given at the points of a redshift grid ``zgrid`` (rows of ``pdfs``, shape (n, m)) is
taken to be **linear between grid points and zero outside the grid**. Everything that needs a
CDF - the PIT, coverage, CRPS, interval probabilities, quantiles, sampling from a p(z), every
calibrator, the streaming gate and the benchmarks - uses the functions of this module (which
imports nothing but numpy, so that every layer of calipers can), so that a metric and the calibrator that is
judged by it can never disagree about where a truth falls in its distribution.

For a piecewise-linear pdf the CDF is exact and cheap:

- at the grid points it is the cumulative trapezoid (exact for a linear integrand);
- between points z_i and z_i + h it is quadratic,
  ``F(z_i + t) = F_i + p_i t + (p_{i+1} - p_i) t^2 / (2 h)``;
- below the grid it is 0, above it 1; the density there is 0.

(A cumulative *sum* of the densities, which calipers and the neutral benchmark metric used until
issue 16, reads about half a grid step high: on the 601-point grid of [0, 3] a perfect model then
scores PIT KS 0.025 instead of the 0.005 of the exact CDF, and calibrators fitted on that PIT learn
to move every p(z) by the artefact.)

(The CDE loss's int p^2 dz is not a CDF: :mod:`calipers.validate.metrics` takes it with the
trapezoid rule on the grid, as the neutral benchmark metric does. For a smooth density sampled on
the grid that rule is far closer to the true integral than the exact integral of the
piecewise-linear interpolant: 28.2095 against 27.64 for a Gaussian of two grid steps, whose
exact value is 28.2095.)

Truths outside the grid are not extrapolated: their PIT is 0 or 1 and their density 0, and
:func:`outside_grid` tells the callers, which count and report them.

Gaussian mixtures have an exact CDF of their own (:func:`calipers.photoz.mixture_cdf`), used
where a mixture is summarised directly (point estimates of ``mixmod`` ensembles); metrics
evaluate every ensemble, whatever its parameterisation, on the grid and then use this module,
exactly as the neutral benchmark metric (``benchmarks/pzmetrics.py``) does.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

# 3-point Gauss-Legendre rule on [0, 1]: exact for polynomials of degree <= 5 (here (F - H)^2
# with F quadratic on each grid cell is of degree 4)
_GL_NODES = 0.5 + 0.5 * np.array([-np.sqrt(3 / 5), 0.0, np.sqrt(3 / 5)])
_GL_WEIGHTS = np.array([5 / 18, 8 / 18, 5 / 18])


def _check_grid(zgrid: np.ndarray) -> np.ndarray:
    zgrid = np.asarray(zgrid, dtype=float)
    if zgrid.ndim != 1 or len(zgrid) < 2 or not np.all(np.diff(zgrid) > 0):
        raise ValueError("zgrid must be a strictly increasing 1-d array of at least 2 points")
    return zgrid


def grid_cdf(pdfs: np.ndarray, zgrid: np.ndarray) -> np.ndarray:
    """Normalised CDF at the grid points (cumulative trapezoid): (n, m), from exactly 0 to 1.

    Raises ``ValueError`` naming the first row whose density does not integrate to a finite
    positive number (callers that keep invalid rows filter them first).
    """
    zgrid = _check_grid(zgrid)
    pdfs = np.atleast_2d(np.asarray(pdfs, dtype=float))
    inc = 0.5 * (pdfs[:, 1:] + pdfs[:, :-1]) * np.diff(zgrid)[None, :]
    cdf = np.concatenate([np.zeros((len(pdfs), 1)), np.cumsum(inc, axis=1)], axis=1)
    total = cdf[:, -1]
    bad = np.flatnonzero(~(np.isfinite(total) & (total > 0)))
    if bad.size:
        raise ValueError(f"{bad.size} p(z) row(s) do not normalise on the grid (first: row {bad[0]})")
    cdf /= total[:, None]
    cdf[:, -1] = 1.0
    return cdf


def _cell(zgrid: np.ndarray, z: np.ndarray):
    """Cell index i (z in [z_i, z_{i+1}]), offset t in [0, h] and width h, clipped to the grid."""
    i = np.clip(np.searchsorted(zgrid, z, side="right") - 1, 0, len(zgrid) - 2)
    h = zgrid[i + 1] - zgrid[i]
    t = np.clip(z - zgrid[i], 0.0, h)
    return i, t, h


def outside_grid(z: np.ndarray, zgrid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (below, above) of values outside ``[zgrid[0], zgrid[-1]]``."""
    z = np.asarray(z, dtype=float)
    return z < zgrid[0], z > zgrid[-1]


def cdf_at(pdfs: np.ndarray, zgrid: np.ndarray, z: np.ndarray, cdf: np.ndarray | None = None) -> np.ndarray:
    """Exact CDF of each row's piecewise-linear pdf at its own ``z`` (n,): the PIT when ``z`` is
    the truth. 0 below the grid, 1 above. ``cdf`` (the :func:`grid_cdf` of ``pdfs``) may be
    passed to save recomputing it; ``pdfs`` must then be the same rows."""
    zgrid = _check_grid(zgrid)
    pdfs = np.atleast_2d(np.asarray(pdfs, dtype=float))
    z = np.broadcast_to(np.asarray(z, dtype=float), (len(pdfs),))
    if cdf is None:
        cdf = grid_cdf(pdfs, zgrid)
    norm = np.trapezoid(pdfs, zgrid, axis=1)
    i, t, h = _cell(zgrid, z)
    rows = np.arange(len(pdfs))
    p0, p1 = pdfs[rows, i], pdfs[rows, i + 1]
    value = cdf[rows, i] + (p0 * t + 0.5 * (p1 - p0) * t * t / h) / norm
    below, above = outside_grid(z, zgrid)
    return np.clip(np.where(below, 0.0, np.where(above, 1.0, value)), 0.0, 1.0)


def pdf_at(pdfs: np.ndarray, zgrid: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Each row's density at its own ``z`` (linear interpolation; 0 outside the grid).
    The rows are used as given: pass normalised densities (``metrics.grid_pdfs``)."""
    zgrid = _check_grid(zgrid)
    pdfs = np.atleast_2d(np.asarray(pdfs, dtype=float))
    z = np.broadcast_to(np.asarray(z, dtype=float), (len(pdfs),))
    i, t, h = _cell(zgrid, z)
    rows = np.arange(len(pdfs))
    w = t / h
    value = (1 - w) * pdfs[rows, i] + w * pdfs[rows, i + 1]
    below, above = outside_grid(z, zgrid)
    return np.where(below | above, 0.0, value)


def crps_values(pdfs: np.ndarray, zgrid: np.ndarray, z: np.ndarray, cdf: np.ndarray | None = None) -> np.ndarray:
    """Exact continuous ranked probability score of each row against its truth (n,).

    CRPS = int (F(x) - 1[x >= z])^2 dx over the real line, with F the CDF of the piecewise-linear
    pdf (0 below the grid, 1 above). On each cell the integrand is a quartic polynomial on both
    sides of the truth, integrated exactly by 3-point Gauss-Legendre; a truth outside the grid
    adds its distance to the grid, where F - 1[x >= z] is -1 or 1.
    """
    zgrid = _check_grid(zgrid)
    pdfs = np.atleast_2d(np.asarray(pdfs, dtype=float))
    z = np.broadcast_to(np.asarray(z, dtype=float), (len(pdfs),))
    if cdf is None:
        cdf = grid_cdf(pdfs, zgrid)
    n = len(pdfs)
    norm = np.trapezoid(pdfs, zgrid, axis=1)[:, None]
    h = np.diff(zgrid)[None, :]
    p0, p1, f0 = pdfs[:, :-1] / norm, pdfs[:, 1:] / norm, cdf[:, :-1]
    i, t, _ = _cell(zgrid, z)
    below, above = outside_grid(z, zgrid)
    # cells entirely below the truth integrate F^2, above it (1 - F)^2; the truth's own cell is
    # split at the truth and handled below
    cell = np.arange(h.shape[1])[None, :]
    side = np.where(cell < i[:, None], 0.0, 1.0)  # indicator value H on the cell (1 above the truth)
    side = np.where(above[:, None], 0.0, np.where(below[:, None], 1.0, side))
    inside = ~(below | above)
    own = (cell == i[:, None]) & inside[:, None]
    total = np.zeros(n)
    for node, weight in zip(_GL_NODES, _GL_WEIGHTS):
        s = node * h
        d = f0 + p0 * s + 0.5 * (p1 - p0) * s * s / h - side
        total += np.sum(np.where(own, 0.0, weight * d * d * h), axis=1)
    # the truth's own cell: [z_i, z] with H = 0 and [z, z_i+1] with H = 1
    rows = np.flatnonzero(inside)
    if rows.size:
        ii, tt = i[rows], t[rows]
        hh = h[0, ii]
        q0, q1, c0 = p0[rows, ii], p1[rows, ii], f0[rows, ii]
        for node, weight in zip(_GL_NODES, _GL_WEIGHTS):
            for lo, width, target in ((0.0, tt, 0.0), (tt, hh - tt, 1.0)):
                s = lo + node * width
                f = c0 + q0 * s + 0.5 * (q1 - q0) * s * s / hh
                total[rows] += weight * width * (f - target) ** 2
    total += np.where(below, zgrid[0] - z, 0.0) + np.where(above, z - zgrid[-1], 0.0)
    return total


def grid_quantiles(pdfs: np.ndarray, zgrid: np.ndarray, probs, cdf: np.ndarray | None = None) -> np.ndarray:
    """Exact quantiles of each row's piecewise-linear pdf at the same ``probs``: (n, len(probs))."""
    probs = np.atleast_1d(np.asarray(probs, dtype=float))
    n = len(np.atleast_2d(pdfs))
    return inverse_cdf(pdfs, zgrid, np.broadcast_to(probs, (n, len(probs))), cdf)


def inverse_cdf(pdfs: np.ndarray, zgrid: np.ndarray, u: np.ndarray, cdf: np.ndarray | None = None) -> np.ndarray:
    """Exact inverse CDF of each row's piecewise-linear pdf at its own probabilities ``u`` (n, k).

    Inverts the quadratic CDF of the cell that holds each probability (the root of
    ``p_i t + (p_{i+1} - p_i) t^2 / (2h) = (u - F_i) * norm`` in the numerically stable form).
    With ``u`` uniform this draws redshifts from the p(z) themselves (inverse-transform sampling).
    """
    zgrid = _check_grid(zgrid)
    pdfs = np.atleast_2d(np.asarray(pdfs, dtype=float))
    u = np.asarray(u, dtype=float)
    if u.ndim != 2 or len(u) != len(pdfs):
        raise ValueError(f"u must be (n, k) with one row per p(z), got shape {u.shape} for {len(pdfs)} p(z)")
    if np.any(~((u >= 0) & (u <= 1))):
        raise ValueError("probabilities must lie in [0, 1]")
    if cdf is None:
        cdf = grid_cdf(pdfs, zgrid)
    norm = np.trapezoid(pdfs, zgrid, axis=1)
    rows = np.arange(len(pdfs))
    out = np.empty(u.shape)
    for k in range(u.shape[1]):
        uk = u[:, k]
        # last grid point with F <= u, as the start of a cell (flat cells are skipped this way)
        i = np.clip(np.sum(cdf <= uk[:, None], axis=1) - 1, 0, len(zgrid) - 2)
        h = zgrid[i + 1] - zgrid[i]
        p0, p1 = pdfs[rows, i] / norm, pdfs[rows, i + 1] / norm
        a = 0.5 * (p1 - p0) / h
        c = np.clip(uk - cdf[rows, i], 0.0, None)
        disc = np.sqrt(np.maximum(p0 * p0 + 4 * a * c, 0.0))
        denom = p0 + disc
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(denom > 0, 2 * c / denom, 0.0)
        out[:, k] = zgrid[i] + np.clip(t, 0.0, h)
    return out


def remap_pdfs(pdfs: np.ndarray, zgrid: np.ndarray, new_cdf: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Densities, on the same grid, of the distributions whose CDF is ``G(F(z))``.

    ``new_cdf`` maps the (n, m) array of CDF values F at the grid points to G(F) (a
    calibrator's remapping, monotone in F). The new density at a grid point is the old one
    times the slope of G there, ``p'_j = p_j (G(F_{j+1}) - G(F_{j-1})) / (F_{j+1} - F_{j-1})``
    (the secant over the two cells that meet at z_j; one cell at the ends), normalised again
    under the same piecewise-linear convention. The identity G gives back the input exactly, so
    calibrating a calibrated model changes nothing but what the calibrator itself learnt; no
    finite-difference smoothing is added (``np.gradient`` of G(F) would blur every p(z) by a
    [1, 2, 1]/4 kernel).

    Like every CDF remapping on a grid, it moves mass only within the support of the input on the
    grid: G(F) is constant where F is, so a widening beyond the points where the input density
    is (or underflows to) zero gathers that mass at the edges of the support.
    """
    zgrid = _check_grid(zgrid)
    pdfs = np.atleast_2d(np.asarray(pdfs, dtype=float))
    cdf = grid_cdf(pdfs, zgrid)
    mapped = np.asarray(new_cdf(cdf), dtype=float)
    if mapped.shape != cdf.shape:
        raise ValueError(f"the CDF map returned shape {mapped.shape}, expected {cdf.shape}")
    prev = np.concatenate([cdf[:, :1], cdf[:, :-1]], axis=1)
    nxt = np.concatenate([cdf[:, 1:], cdf[:, -1:]], axis=1)
    mprev = np.concatenate([mapped[:, :1], mapped[:, :-1]], axis=1)
    mnxt = np.concatenate([mapped[:, 1:], mapped[:, -1:]], axis=1)
    span = nxt - prev
    norm = np.trapezoid(pdfs, zgrid, axis=1)[:, None]
    # p_j / span is bounded (span >= p_j (h_{j-1} + h_j) / 2 under the trapezoid rule), so it is
    # formed first: far in a tail, where F and p underflow together, the slope alone would overflow
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(span > 0, (pdfs / norm) / span, 0.0)
    dens = np.clip((mnxt - mprev) * ratio, 0.0, None)
    total = np.trapezoid(dens, zgrid, axis=1)
    bad = np.flatnonzero(~(np.isfinite(total) & (total > 0)))
    if bad.size:
        raise ValueError(f"the remapped p(z) of {bad.size} row(s) have no mass on the grid (first: row {bad[0]})")
    return dens / total[:, None]
