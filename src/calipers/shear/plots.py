"""Figures of the shear family: m and c per bin against the requirement bands, Mahalanobis distances."""
from __future__ import annotations

import numpy as np

from .bias import LSST_ISOLATED_M, SRD_Y10_M


def bias_vs_bin(tables: dict, split: str):
    """m (left) and c (right) per bin of ``split`` for each estimate in ``tables`` (name -> rows of
    :func:`calipers.stages.shear.bias_table`), with 1-sigma bootstrap errors and the requirement bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, rows in tables.items():
        rows = [r for r in rows if r.get("split") == split]
        if not rows:
            continue
        x = np.array([0.5 * (r["low"] + r["high"]) for r in rows])
        for comp, marker, dx in (("1", "o", -0.01), ("2", "s", 0.01)):
            shift = x * (1 + dx)
            axes[0].errorbar(shift, [r[f"m{comp}"] for r in rows], [r.get(f"m{comp}_err", 0) for r in rows],
                             fmt=marker, ms=4, capsize=2, label=f"{name} m{comp}")
            axes[1].errorbar(shift, [r[f"c{comp}"] for r in rows], [r.get(f"c{comp}_err", 0) for r in rows],
                             fmt=marker, ms=4, capsize=2, label=f"{name} c{comp}")
    axes[0].axhspan(-SRD_Y10_M, SRD_Y10_M, color="tab:green", alpha=0.25, label="SRD Y10 |m| < 0.003")
    axes[0].axhspan(-LSST_ISOLATED_M, LSST_ISOLATED_M, color="tab:green", alpha=0.4, label="LSST isolated 0.001")
    axes[1].axhline(0, color="k", lw=0.8)
    label = {"snr": "S/N", "hlr": "half-light radius (arcsec)"}.get(split, split)
    for ax, what in zip(axes, ("multiplicative bias m", "additive bias c")):
        ax.set_xlabel(label)
        ax.set_ylabel(what)
        ax.axhline(0, color="k", lw=0.8)
        if split == "snr":
            ax.set_xscale("log")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def mahalanobis_histogram(d2: np.ndarray):
    """Histogram of the squared Mahalanobis distances with the chi^2_2 density (what a calibrated
    2-D Gaussian gives) and its 68% / 95% quantiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    hi = max(12.0, float(np.quantile(d2, 0.99)))
    ax.hist(np.clip(d2, 0, hi), bins=60, range=(0, hi), density=True, histtype="step", label="estimates")
    t = np.linspace(0, hi, 200)
    ax.plot(t, 0.5 * np.exp(-0.5 * t), "k--", label="chi^2 with 2 dof")
    for p in (0.68, 0.95):
        ax.axvline(-2 * np.log(1 - p), color="0.5", lw=0.8)
    ax.set_xlabel("squared Mahalanobis distance of the true ellipticity")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
