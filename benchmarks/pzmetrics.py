# Copied unchanged from the shared benchmark folder (shared/bench/pzmetrics.py) so that the
# benchmark runs from a clean clone; do not edit: it is the neutral metric definition.
"""Neutral p(z) metrics, applied identically to every estimator's qp ensemble.

Everything is evaluated on one common redshift grid so that no code's own metric
implementation can favour it.
"""
import numpy as np
from scipy import stats

ZGRID = np.linspace(0.0, 3.0, 601)


def grid_pdfs(ens, zgrid=ZGRID):
    p = np.asarray(ens.pdf(zgrid), dtype=float)
    p = np.nan_to_num(np.clip(p, 0, None))
    norm = np.trapezoid(p, zgrid, axis=1)
    norm[norm <= 0] = 1.0
    return p / norm[:, None]


def grid_cdf(pdfs, zgrid=ZGRID):
    """CDF at the grid points of the piecewise-linear pdf (cumulative trapezoid), normalised."""
    dz = np.diff(zgrid)
    cdf = np.concatenate([np.zeros((len(pdfs), 1)),
                          np.cumsum(0.5 * (pdfs[:, 1:] + pdfs[:, :-1]) * dz, axis=1)], axis=1)
    return np.clip(cdf / cdf[:, -1:], 0, 1)


def metrics(pdfs, ztrue, zgrid=ZGRID):
    """The pdf is piecewise linear between grid points; its CDF is then exact (quadratic between
    points). A truth outside the grid has PIT 0 or 1 and density 0."""
    cdf = grid_cdf(pdfs, zgrid)
    norm = np.trapezoid(pdfs, zgrid, axis=1)
    norm[norm <= 0] = 1.0
    idx = np.clip(np.searchsorted(zgrid, ztrue), 1, len(zgrid) - 1)
    dz = zgrid[idx] - zgrid[idx - 1]
    t = np.clip(ztrue - zgrid[idx - 1], 0.0, dz)
    w = t / dz
    rows = np.arange(len(ztrue))
    p0, p1 = pdfs[rows, idx - 1], pdfs[rows, idx]
    pit = cdf[rows, idx - 1] + (p0 * t + 0.5 * (p1 - p0) * t * w) / norm
    pit = np.clip(pit, 0, 1)
    inside = (ztrue >= zgrid[0]) & (ztrue <= zgrid[-1])
    p_at = np.where(inside, (1 - w) * p0 + w * p1, 0.0)
    cde = np.mean(np.trapezoid(pdfs**2, zgrid, axis=1)) - 2 * np.mean(p_at)
    ks = stats.kstest(pit, "uniform").statistic
    cvm = stats.cramervonmises(pit, "uniform").statistic
    # outlier rate of PIT (fraction in the extreme 0.0001 tails, as in Schmidt+2020)
    pit_out = np.mean((pit < 1e-4) | (pit > 1 - 1e-4))
    # central-interval coverage
    cov = {}
    for lev in (0.68, 0.95):
        lo = (1 - lev) / 2
        cov[lev] = float(np.mean((pit > lo) & (pit < 1 - lo)))
    # CRPS on the grid
    step = (zgrid[None, :] >= ztrue[:, None]).astype(float)
    crps = np.mean(np.trapezoid((cdf - step) ** 2, zgrid, axis=1))
    zmode = zgrid[np.argmax(pdfs, axis=1)]
    dzn = (zmode - ztrue) / (1 + ztrue)
    iqr = np.subtract(*np.percentile(dzn, [75, 25]))
    sig_iqr = iqr / 1.349
    bias = np.median(dzn)
    out = np.mean(np.abs(dzn) > np.maximum(3 * sig_iqr, 0.06))
    out15 = np.mean(np.abs(dzn) > 0.15)
    return dict(
        cde_loss=cde, pit_ks=ks, pit_cvm=cvm, pit_outlier=pit_out,
        cov68=cov[0.68], cov95=cov[0.95], crps=crps,
        sigma_iqr=sig_iqr, bias=bias, outlier_3sig=out, outlier_015=out15,
    )
