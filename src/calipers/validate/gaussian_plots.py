"""Figures of Gaussian-vector predictions: example vectors with mu +- sigma over the truth,
coverage per output at 1 and 2 sigma, and z-score histograms against the unit normal."""
from __future__ import annotations

import numpy as np
from scipy.stats import norm

from calipers.validate.gaussian import NOMINAL
from calipers.validate.plots import pyplot

__all__ = ["coverage_per_output_figure", "example_spectra", "z_histograms"]


def example_spectra(x, truth, mu, sigma, n_examples: int, rng: np.random.Generator, ylabel: str = "transit depth"):
    """``n_examples`` rows drawn by ``rng``: truth, mu and the +-1 sigma band along ``x``."""
    plt = pyplot()
    n = min(n_examples, len(mu))
    rows = np.sort(rng.choice(len(mu), size=n, replace=False)) if n else []
    fig, axes = plt.subplots(1, max(n, 1), figsize=(4.0 * max(n, 1), 3.2), squeeze=False)
    for ax, i in zip(axes[0], rows):
        ax.fill_between(x, mu[i] - sigma[i], mu[i] + sigma[i], color="tab:blue", alpha=0.3, lw=0, label="mu +- sigma")
        ax.plot(x, mu[i], color="tab:blue", lw=1, label="mu")
        ax.plot(x, truth[i], color="k", lw=1, label="truth")
        ax.set(xlabel="wavelength (um)", ylabel=ylabel, title=f"row {i}")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def coverage_per_output_figure(x, curves: dict, xlabel: str = "output"):
    """Coverage at +-1 and +-2 sigma per output, one line per predictor: ``curves`` maps a name to
    ``(coverage at 1 sigma [K], coverage at 2 sigma [K])``; the nominal levels dashed."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4), squeeze=False)
    for ax, k in zip(axes[0], (1, 2)):
        ax.axhline(NOMINAL[k], color="k", ls="--", lw=0.8, label=f"nominal {NOMINAL[k]:.3f}")
        for name, cov in curves.items():
            ax.plot(x, cov[k - 1], lw=1, label=name)
        ax.set(xlabel=xlabel, ylabel=f"coverage at +-{k} sigma")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def z_histograms(z_by_name: dict, bins: int = 60, limit: float = 6.0):
    """Histogram of z = (truth - mu) / sigma for each predictor, against the unit normal."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 1, figsize=(4.8, 3.4), squeeze=False)
    ax = axes[0][0]
    edges = np.linspace(-limit, limit, bins + 1)
    for name, z in z_by_name.items():
        ax.hist(np.clip(np.ravel(z), -limit, limit), bins=edges, density=True, histtype="step", label=name)
    grid = np.linspace(-limit, limit, 400)
    ax.plot(grid, norm.pdf(grid), "k--", lw=0.8, label="N(0, 1)")
    ax.set(xlabel="z = (truth - mu) / sigma", ylabel="density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
