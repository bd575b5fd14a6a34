"""p(z) metrics on a common redshift grid.

Every ensemble is evaluated on the grid and its pdf taken as piecewise linear; the PIT, coverage,
CRPS, CDE loss and quantiles are then exact for that pdf (:mod:`calipers.gridpdf`, the one CDF
convention of calipers). The PIT, coverage and CDE loss equal the neutral benchmark metric's
(``benchmarks/pzmetrics.py``) on the same inputs; its CRPS integrates (F - H)^2 with the
trapezoid rule on the grid, with the step H taken at grid points, ours exactly (closer to the
analytic CRPS of a Gaussian; the two differ by about 1e-4 of the value, tested). A truth outside the grid has PIT 0 or 1 and density 0 and is counted
(``n_truth_below_grid``, ``n_truth_above_grid``). Every function here applies an explicit NaN
policy and works on qp ensembles chunk by chunk (bounded memory).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from calipers.gridpdf import cdf_at, crps_values, grid_quantiles, outside_grid, pdf_at

ZGRID = np.linspace(0.0, 3.0, 601)


def grid_pdfs(ens, zgrid: np.ndarray = ZGRID, chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate a qp ensemble on ``zgrid``, normalised on the grid.

    Returns
    -------
    pdfs : (n, m) array
        Normalised densities (rows that are invalid are left as NaN).
    valid : (n,) bool array
        False where the density had non-finite values or did not normalise (> 0).
    """
    out = np.empty((ens.npdf, len(zgrid)))
    mixmod = ens.gen_class.name == "mixmod"
    if mixmod:  # same Gaussian-mixture density as qp's, without scipy's per-call overhead
        from calipers.photoz.mixture import mixture_pdf

        # qp squeezes a one-row ensemble's arrays to 1-d: keep one row per distribution
        d = {k: np.reshape(ens.objdata[k], (ens.npdf, -1)) for k in ("weights", "means", "stds")}
    for start in range(0, ens.npdf, chunk):
        end = min(start + chunk, ens.npdf)
        if mixmod:
            out[start:end] = mixture_pdf(d["weights"][start:end], d["means"][start:end], d["stds"][start:end], zgrid)
        elif ens.npdf == 1:  # qp cannot slice a one-row ensemble
            out[:] = np.reshape(np.asarray(ens.pdf(zgrid), dtype=float), (1, -1))
        else:
            out[start:end] = np.asarray(ens[start:end].pdf(zgrid), dtype=float)
    finite = np.all(np.isfinite(out), axis=1)
    out = np.clip(np.where(finite[:, None], out, 0.0), 0, None)
    norm = np.trapezoid(out, zgrid, axis=1)
    valid = finite & (norm > 0)
    out[valid] /= norm[valid, None]
    out[~valid] = np.nan
    return out, valid


def pit_values(pdfs: np.ndarray, zgrid: np.ndarray, ztrue: np.ndarray) -> np.ndarray:
    """Probability integral transform: each row's exact CDF (piecewise-linear pdf) at its true
    redshift; 0 or 1 for a truth below or above the grid (:mod:`calipers.gridpdf`)."""
    return cdf_at(pdfs, zgrid, ztrue)


def pit_tests(pit: np.ndarray) -> dict[str, float]:
    """KS, Cramer-von Mises and Anderson-Darling tests of PIT uniformity (statistics and p-values)."""
    ks = stats.kstest(pit, "uniform")
    cvm = stats.cramervonmises(pit, "uniform")
    # Anderson-Darling statistic A^2 against U(0,1) (scipy's `anderson` has no uniform case)
    u = np.sort(np.clip(pit, 1e-12, 1 - 1e-12))
    n = len(u)
    i = np.arange(1, n + 1)
    a2 = -n - np.mean((2 * i - 1) * (np.log(u) + np.log1p(-u[::-1])))
    return {"pit_ks": float(ks.statistic), "pit_ks_p": float(ks.pvalue), "pit_cvm": float(cvm.statistic),
            "pit_cvm_p": float(cvm.pvalue), "pit_ad": float(a2)}


def coverage(pit: np.ndarray, levels=(0.68, 0.95)) -> dict[float, float]:
    """Fraction of truths inside the central interval of each level (from the PIT)."""
    return {lev: float(np.mean((pit > (1 - lev) / 2) & (pit < 1 - (1 - lev) / 2))) for lev in levels}


def crps(pdfs: np.ndarray, zgrid: np.ndarray, ztrue: np.ndarray) -> float:
    """Mean continuous ranked probability score (exact for the piecewise-linear pdf)."""
    return float(np.mean(crps_values(pdfs, zgrid, ztrue)))


def cde_loss(pdfs: np.ndarray, zgrid: np.ndarray, ztrue: np.ndarray) -> float:
    """Conditional density estimation loss: mean int p^2 dz - 2 mean p(z_true) (lower is better);
    int p^2 dz by the trapezoid rule on the grid (see :mod:`calipers.gridpdf`), p(z_true)
    interpolated, 0 for a truth outside the grid."""
    return float(np.mean(np.trapezoid(pdfs ** 2, zgrid, axis=1)) - 2 * np.mean(pdf_at(pdfs, zgrid, ztrue)))


def point_metrics(zphot: np.ndarray, ztrue: np.ndarray) -> dict[str, float]:
    """sigma_IQR, median bias and outlier rates of dz/(1+z)."""
    dzn = (zphot - ztrue) / (1 + ztrue)
    sig = float(np.subtract(*np.percentile(dzn, [75, 25])) / 1.349)
    return {"sigma_iqr": sig, "bias": float(np.median(dzn)),
            "outlier_3sig": float(np.mean(np.abs(dzn) > max(3 * sig, 0.06))),
            "outlier_015": float(np.mean(np.abs(dzn) > 0.15))}


def pz_metrics(ens, ztrue: np.ndarray, zgrid: np.ndarray = ZGRID, levels=(0.68, 0.95)) -> dict:
    """Every p(z) metric for a qp ensemble against true redshifts, with the NaN policy applied."""
    ztrue = np.asarray(ztrue, dtype=float)
    if len(ztrue) != ens.npdf:
        raise ValueError(f"{ens.npdf} distributions but {len(ztrue)} true redshifts")
    pdfs, valid = grid_pdfs(ens, zgrid)
    valid &= np.isfinite(ztrue)
    p, z = pdfs[valid], ztrue[valid]
    if len(z) == 0:
        raise ValueError("no valid rows: every p(z) or true redshift is non-finite")
    pit = pit_values(p, zgrid, z)
    below, above = outside_grid(z, zgrid)
    out = {"n": int(ens.npdf), "n_invalid": int((~valid).sum()),
           "n_truth_below_grid": int(below.sum()), "n_truth_above_grid": int(above.sum()),
           "cde_loss": cde_loss(p, zgrid, z), "crps": crps(p, zgrid, z)}
    out |= pit_tests(pit)
    out["pit_outlier"] = float(np.mean((pit < 1e-4) | (pit > 1 - 1e-4)))
    out |= {f"cov{int(round(100 * k))}": v for k, v in coverage(pit, levels).items()}
    out |= point_metrics(zgrid[np.argmax(p, axis=1)], z)
    return out


def grid_point_estimates(pdfs: np.ndarray, zgrid: np.ndarray, which) -> dict[str, np.ndarray]:
    """RAIL-style point estimates of densities on a grid: ``zmode`` (grid argmax), ``zmean``,
    ``zmedian`` and the central 68% interval ``zlo68``/``zhi68`` (exact quantiles of the
    piecewise-linear pdf, :func:`calipers.gridpdf.grid_quantiles`)."""
    p = np.atleast_2d(np.asarray(pdfs, dtype=float))
    out: dict[str, np.ndarray] = {}
    probs = {"zmedian": 0.5, "zlo68": 0.16, "zhi68": 0.84}
    unknown = set(which) - {"zmode", "zmean", *probs}
    if unknown:
        raise ValueError(f"unknown point estimate(s) {sorted(unknown)}")
    if "zmode" in which:
        out["zmode"] = zgrid[np.argmax(p, axis=1)]
    if "zmean" in which:
        # exact mean of the piecewise-linear pdf: int z p dz over each cell
        a, b, z0, z1 = p[:, :-1], p[:, 1:], zgrid[:-1], zgrid[1:]
        first = np.sum((z1 - z0) * (a * (2 * z0 + z1) + b * (z0 + 2 * z1)), axis=1) / 6
        out["zmean"] = first / np.trapezoid(p, zgrid, axis=1)
    wanted = [k for k in probs if k in which]
    if wanted:
        q = grid_quantiles(p, zgrid, [probs[k] for k in wanted])
        for j, k in enumerate(wanted):
            out[k] = q[:, j]
    return out


def binned_point_metrics(zphot: np.ndarray, ztrue: np.ndarray, values: np.ndarray,
                         edges) -> dict[str, np.ndarray]:
    """:func:`point_metrics` of dz/(1+z) in bins of another quantity (magnitude, true redshift):
    where the point estimates fail.

    Parameters
    ----------
    zphot, ztrue : (n,) arrays
        Point estimates and true redshifts.
    values : (n,) array
        The quantity binned (e.g. the i-band magnitude, or ``ztrue`` itself).
    edges : (k + 1,) increasing sequence
        Bin edges; ``-inf``/``inf`` make open-ended first/last bins. Bin j holds
        ``edges[j] <= value < edges[j + 1]``, the last bin also its right edge (as
        :func:`numpy.histogram`).

    Returns
    -------
    dict of (k,) arrays
        ``n``: rows in the bin with finite ``zphot`` and ``ztrue`` (the statistics use these);
        ``n_invalid``: rows in the bin whose point estimate or truth is not finite; ``outlier_015``
        (fraction with |dz|/(1+z) > 0.15), ``outlier_3sig``, ``sigma_iqr`` and ``bias`` (median)
        of each bin, NaN for a bin with ``n == 0``. NaN policy: a row whose ``value`` is not
        finite (NaN or +-inf, even with infinite edges) or lies outside the edges is in no bin
        (``n.sum() + n_invalid.sum()`` falls short of the rows by their number).
    """
    zphot, ztrue = np.asarray(zphot, dtype=float), np.asarray(ztrue, dtype=float)
    values = np.asarray(values, dtype=float)
    edges = np.asarray(edges, dtype=float)
    if not (zphot.shape == ztrue.shape == values.shape and zphot.ndim == 1):
        raise ValueError(f"zphot, ztrue and values must be 1-d arrays of one length, got shapes {zphot.shape}, "
                         f"{ztrue.shape} and {values.shape}")
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.isnan(edges)) or not np.all(np.diff(edges) > 0):
        raise ValueError(f"edges must be at least two strictly increasing numbers, got {edges.tolist()}")
    k = len(edges) - 1
    which = np.searchsorted(edges, values, side="right") - 1
    which[values == edges[-1]] = k - 1  # the last bin is closed
    binned = np.isfinite(values) & (which >= 0) & (which < k)
    good = np.isfinite(zphot) & np.isfinite(ztrue)
    out = {"n": np.bincount(which[binned & good], minlength=k).astype(np.int64),
           "n_invalid": np.bincount(which[binned & ~good], minlength=k).astype(np.int64)}
    keys = ("outlier_015", "outlier_3sig", "sigma_iqr", "bias")
    out |= {key: np.full(k, np.nan) for key in keys}
    for j in np.flatnonzero(out["n"]):
        rows = binned & good & (which == j)
        stats_j = point_metrics(zphot[rows], ztrue[rows])
        for key in keys:
            out[key][j] = stats_j[key]
    return out


def pit_summary(pit: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """KS distance of the PIT from U(0, 1) and the coverage of the central 68 and 95% intervals,
    optionally importance-weighted (the weighted empirical CDF; the weighted share inside each
    interval). Cheap: one sort. For the log and the calibrator's record, not a gate."""
    pit = np.clip(np.asarray(pit, dtype=float), 0.0, 1.0)
    w = np.ones_like(pit) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(pit, kind="stable")
    u, cw = pit[order], np.cumsum(w[order]) / w.sum()
    ks = float(max(np.max(cw - u), np.max(u - np.concatenate([[0.0], cw[:-1]]))))
    cover = {f"cov{round(100 * lev)}": float(np.sum(w * ((pit > (1 - lev) / 2) & (pit < (1 + lev) / 2))) / w.sum())
             for lev in (0.68, 0.95)}
    return {"pit_ks": ks} | cover
