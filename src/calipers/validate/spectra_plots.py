"""Figures of the log g information ceiling of a spectral regression (tables in, matplotlib Figures
out; saving is the caller's job).

Drawn on ``matplotlib.figure.Figure`` objects through :func:`calipers.validate.plots.pyplot`, so nothing
here touches pyplot's global state or the backend. The input is the per-S/N ceiling table the
``FisherBound`` stage writes (one dict per S/N group with ``snr``, ``sigma_crlb_median``,
``sigma_bayes_median``, ``r2_crlb``, ``r2_bayes`` and the same keys with ``_continuum`` appended, for
the bound with a free continuum scale and tilt); a value of None is not drawn.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from calipers.validate.plots import pyplot

__all__ = ["crlb_vs_snr", "crlb_by_group_vs_snr", "r2_ceiling_vs_snr", "r2_models_vs_snr"]

FORMS = (("", "fixed continuum"), ("_continuum", "free continuum scale + tilt"))


def _series(table: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(S/N, value) of the rows where ``key`` has a finite value."""
    snr, val = [], []
    for row in table:
        v = row.get(key)
        if v is not None and np.isfinite(v):
            snr.append(float(row["snr"]))
            val.append(float(v))
    order = np.argsort(snr)
    return np.asarray(snr)[order], np.asarray(val)[order]


def _snr_axis(ax, table: Sequence[Mapping]) -> None:
    """Log S/N axis ticked at the table's S/N values (at most 8 of them), written as plain numbers."""
    from matplotlib.ticker import FixedLocator, NullLocator

    snrs = sorted({float(r["snr"]) for r in table if r.get("snr") is not None})
    if len(snrs) > 8:
        snrs = [snrs[i] for i in np.linspace(0, len(snrs) - 1, 8).round().astype(int)]
    ax.xaxis.set_major_locator(FixedLocator(snrs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{v:.3g}" for v in snrs])


def _plain_log_y(ax) -> None:
    """Label a log y axis at 1-2-5 values (1-1.5-2-3-5-7 over a short range) as plain numbers."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    lo, hi = ax.get_ylim()
    if not (lo > 0 and hi > lo):
        return
    decades = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
    ticks = []
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0 ** e for e in decades for m in mantissas if lo <= m * 10.0 ** e <= hi]
        if len(ticks) >= 3:
            break
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.set_yticklabels([f"{v:.3g}" for v in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())


def _style(suffix: str, primary: str) -> dict:
    return {"lw": 2.0 if suffix == primary else 1.0, "alpha": 1.0 if suffix == primary else 0.6}


def crlb_vs_snr(table: Sequence[Mapping], prior_sigma: float | None = None, primary: str = "_continuum",
                title: str = "log g information ceiling"):
    """Median marginal sigma_CRLB and median Bayesian posterior sigma of log g against S/N (log-log),
    with and without continuum nuisances, a 1/(S/N) line through the highest-S/N CRLB point (the CRLB
    scales exactly so: the Fisher matrix grows as (S/N)^2) and the prior's sigma (the Bayesian sigma
    cannot exceed it). ``primary``: the suffix ("" or "_continuum") drawn with heavy lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    top_snr = None
    for (suffix, label), colour in zip(FORMS, ("C0", "C1")):
        s, v = _series(table, f"sigma_crlb_median{suffix}")
        if s.size:
            ax.plot(s, v, "o-", color=colour, label=f"CRLB, {label}", **_style(suffix, primary))
            if suffix == primary or top_snr is None:
                top_snr = (s[-1], v[-1])
        s, v = _series(table, f"sigma_bayes_median{suffix}")
        if s.size:
            ax.plot(s, v, "s--", color=colour, ms=4, label=f"Bayesian, {label}", **_style(suffix, primary))
    snrs = np.array([float(r["snr"]) for r in table if r.get("snr") is not None])
    if top_snr is not None and snrs.size:
        grid = np.geomspace(snrs.min(), snrs.max(), 50)
        ax.plot(grid, top_snr[1] * top_snr[0] / grid, "k:", lw=0.8, label=r"$\propto 1/(S/N)$")
    if prior_sigma is not None:
        ax.axhline(prior_sigma, color="0.4", lw=0.8, ls="-.", label=f"prior sigma ({prior_sigma:.2f} dex)")
    ax.set(xscale="log", yscale="log", xlabel="median S/N per pixel", ylabel=r"median $\sigma$(log g) [dex]",
           title=title)
    _snr_axis(ax, table)
    _plain_log_y(ax)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def r2_ceiling_vs_snr(table: Sequence[Mapping], primary: str = "_continuum", title: str = "R$^2_{max}$ of log g"):
    """Largest R^2 of a log g regression against S/N: plain (1 - mean CRLB / Var log g, a bound for
    unbiased estimators; negative where the CRLB exceeds the prior variance) and Bayesian (with the
    prior; between 0 and 1), with and without continuum nuisances. The y axis is cut at -1."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    lowest = 0.0
    for (suffix, label), colour in zip(FORMS, ("C0", "C1")):
        for kind, marker, name in (("crlb", "o-", "plain"), ("bayes", "s--", "Bayesian")):
            s, v = _series(table, f"r2_{kind}{suffix}")
            if s.size:
                ax.plot(s, v, marker, color=colour, ms=4, label=f"{name}, {label}", **_style(suffix, primary))
                lowest = min(lowest, float(v.min()))
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set(xscale="log", xlabel="median S/N per pixel", ylabel=r"$R^2_{max}$", title=title,
           ylim=(max(lowest, -1.0) - 0.05, 1.02))
    _snr_axis(ax, table)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def crlb_by_group_vs_snr(tables: Mapping[str, Sequence[Mapping]], key: str = "sigma_crlb_median_continuum",
                         title: str = "sigma_CRLB of log g by group"):
    """``key`` (default: the median sigma_CRLB with continuum nuisances) against S/N, one line per
    group (e.g. [M/H] thirds), log-log."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, table in tables.items():
        s, v = _series(table, key)
        if s.size:
            ax.plot(s, v, "o-", ms=4, label=str(name))
    ax.set(xscale="log", yscale="log", xlabel="median S/N per pixel", ylabel=f"{key} [dex]", title=title)
    _snr_axis(ax, [row for table in tables.values() for row in table])
    _plain_log_y(ax)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def r2_models_vs_snr(ceiling: Sequence[Mapping], models: Mapping[str, Sequence[Mapping]],
                     title: str = "log g: R$^2$ of every model against the ceiling"):
    """The core figure of the family: R^2 against S/N for every model, with the Bayesian ceiling
    R^2_max as a line inside its band.

    ``ceiling``: rows with ``snr``, ``r2_max`` and the band ``lo``, ``hi`` (from
    :func:`calipers.spectra.bound.group_ceilings`); ``models``: model name -> rows with ``snr``,
    ``r2`` and optionally ``r2_lo``, ``r2_hi`` (a bootstrap interval drawn as error bars).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    rows = sorted((r for r in ceiling if r.get("r2_max") is not None), key=lambda r: float(r["snr"]))
    snr = np.array([float(r["snr"]) for r in rows])
    if snr.size:
        lo = np.array([r.get("lo", np.nan) for r in rows], dtype=float)
        hi = np.array([r.get("hi", np.nan) for r in rows], dtype=float)
        if np.all(np.isfinite(lo) & np.isfinite(hi)):
            ax.fill_between(snr, lo, hi, color="0.6", alpha=0.35, lw=0, label="ceiling band (68%, bootstrap)")
        ax.plot(snr, [float(r["r2_max"]) for r in rows], "k-", lw=2.0, label="Bayesian ceiling $R^2_{max}$")
    lowest = 0.0
    for k, (name, table) in enumerate(models.items()):
        part = sorted((r for r in table if r.get("r2") is not None and np.isfinite(r["r2"])),
                      key=lambda r: float(r["snr"]))
        if not part:
            continue
        x = np.array([float(r["snr"]) for r in part]) * (1 + 0.012 * (k - (len(models) - 1) / 2))
        y = np.array([float(r["r2"]) for r in part])
        lowest = min(lowest, float(y.min()))
        err = None
        if all(r.get("r2_lo") is not None and r.get("r2_hi") is not None for r in part):
            err = np.abs(np.array([[r["r2_lo"] for r in part], [r["r2_hi"] for r in part]]) - y)
        ax.errorbar(x, y, yerr=err, fmt="o-", ms=4, lw=1.2, capsize=2, label=name)
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set(xscale="log", xlabel="median S/N per pixel", ylabel="$R^2$ of log g", title=title,
           ylim=(max(lowest, -0.5) - 0.05, 1.02))
    _snr_axis(ax, rows or [r for t in models.values() for r in t])
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig

