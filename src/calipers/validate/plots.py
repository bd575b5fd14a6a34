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
    counts, _ = np.histogram(pit, bins=bins, range=(0, 1))
    return pit_histogram_counts(counts)


def pit_histogram_counts(counts: np.ndarray, bins: int = 50):
    """PIT histogram from counts in equal bins on [0, 1] (re-binned to ``bins`` when a multiple)."""
    plt = pyplot()
    counts = np.asarray(counts)
    if len(counts) != bins and len(counts) % bins == 0:
        counts = counts.reshape(bins, -1).sum(axis=1)
    bins = len(counts)
    n = int(counts.sum())
    edges = np.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.8)
    expect = n / bins
    sd = np.sqrt(n * (1 / bins) * (1 - 1 / bins))
    ax.axhspan(expect - 2 * sd, expect + 2 * sd, color="0.6", alpha=0.4, label="uniform, 95% band")
    ax.axhline(expect, color="k", lw=0.8)
    ax.set(xlabel="PIT", ylabel="count", title=f"PIT histogram (n = {n})")
    ax.legend(loc="lower center")
    fig.tight_layout()
    return fig


COVERAGE_LEVELS = np.round(np.linspace(0.01, 0.99, 99), 2)


def coverage_curve(pit: np.ndarray):
    """Empirical coverage of central intervals against their nominal level."""
    emp = [np.mean((pit > (1 - lev) / 2) & (pit < 1 - (1 - lev) / 2)) for lev in COVERAGE_LEVELS]
    return coverage_curve_values(COVERAGE_LEVELS, emp)


def coverage_curve_values(levels, empirical):
    """Plot measured central-interval coverage (``empirical``) at nominal ``levels``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    ax.plot(levels, empirical, color="tab:red", label="measured")
    ax.set(xlabel="nominal coverage", ylabel="empirical coverage", title="Central-interval coverage",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    return fig


def reliability_diagram(prob: np.ndarray, outcome: np.ndarray, bins: int = 10):
    """Reliability diagram for predicted probabilities of a binary outcome."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(prob, edges) - 1, 0, bins - 1)
    conf = np.array([prob[idx == b].mean() if np.any(idx == b) else np.nan for b in range(bins)])
    acc = np.array([outcome[idx == b].mean() if np.any(idx == b) else np.nan for b in range(bins)])
    return reliability_curve(conf, acc)


def reliability_curve(confidence, accuracy, count=None):
    """Reliability diagram from per-bin mean confidence and observed frequency (empty bins: NaN
    or ``count`` = 0)."""
    plt = pyplot()
    conf = np.asarray(confidence, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    if count is not None:
        empty = np.asarray(count) == 0
        conf, acc = np.where(empty, np.nan, conf), np.where(empty, np.nan, acc)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot(conf, acc, "o-", color="tab:green")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    return fig
