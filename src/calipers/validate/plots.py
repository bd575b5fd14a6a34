"""Diagnostic figures (arrays in, matplotlib Figures out; saving is the caller's job)."""
from __future__ import annotations

import numpy as np


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (figures are only ever saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pit_histogram(pit: np.ndarray, bins: int = 50):
    """PIT histogram with the 95% band expected for a uniform PIT of the same size."""
    plt = pyplot()
    n = len(pit)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    counts, edges, _ = ax.hist(pit, bins=bins, range=(0, 1), color="tab:blue", alpha=0.8)
    expect = n / bins
    sd = np.sqrt(n * (1 / bins) * (1 - 1 / bins))
    ax.axhspan(expect - 2 * sd, expect + 2 * sd, color="0.6", alpha=0.4, label="uniform, 95% band")
    ax.axhline(expect, color="k", lw=0.8)
    ax.set(xlabel="PIT", ylabel="count", title=f"PIT histogram (n = {n})")
    ax.legend(loc="lower center")
    fig.tight_layout()
    return fig


def coverage_curve(pit: np.ndarray):
    """Empirical coverage of central intervals against their nominal level."""
    plt = pyplot()
    levels = np.linspace(0.01, 0.99, 99)
    emp = [np.mean((pit > (1 - lev) / 2) & (pit < 1 - (1 - lev) / 2)) for lev in levels]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    ax.plot(levels, emp, color="tab:red", label="measured")
    ax.set(xlabel="nominal coverage", ylabel="empirical coverage", title="Central-interval coverage",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    return fig


def reliability_diagram(prob: np.ndarray, outcome: np.ndarray, bins: int = 10):
    """Reliability diagram for predicted probabilities of a binary outcome."""
    plt = pyplot()
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(prob, edges) - 1, 0, bins - 1)
    conf = np.array([prob[idx == b].mean() if np.any(idx == b) else np.nan for b in range(bins)])
    acc = np.array([outcome[idx == b].mean() if np.any(idx == b) else np.nan for b in range(bins)])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot(conf, acc, "o-", color="tab:green")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    return fig
