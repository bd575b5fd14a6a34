"""Figures of the drift monitors: each statistic against the batch number, its threshold and the
batches where it raised an alarm."""
from __future__ import annotations

import numpy as np

from calipers.validate.plots import pyplot

__all__ = ["statistic_vs_batch"]


def statistic_vs_batch(panels: list[dict], title: str = ""):
    """One panel per entry of ``panels``: ``{"label", "values", "threshold", "alarms", "log"}``
    (``threshold`` a number or per-batch array, or None; ``alarms`` booleans per batch; ``log``: a
    log y axis). Batches on x from 0."""
    plt = pyplot()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 2.2 * n), sharex=True, squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        v = np.asarray(p["values"], dtype=float)
        b = np.arange(len(v))
        ax.plot(b, v, "o-", ms=3, lw=1, color="tab:blue")
        th = p.get("threshold")
        if th is not None:
            th = np.broadcast_to(np.asarray(th, dtype=float), v.shape)
            ax.plot(b, th, "--", color="tab:red", lw=1, label="threshold")
        alarms = np.asarray(p.get("alarms", np.zeros(len(v), bool)), dtype=bool)
        if alarms.any():
            ax.plot(b[alarms], v[alarms], "v", color="tab:red", ms=8, label="alarm")
            ax.axvline(b[alarms][0], color="tab:red", lw=0.8, alpha=0.5)
        if p.get("log"):
            ax.set_yscale("log")
        ax.set_ylabel(p["label"], fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("batch")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    return fig
