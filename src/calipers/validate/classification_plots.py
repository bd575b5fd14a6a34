"""Figures for binary classifiers and their selection functions (arrays / metric dicts in,
matplotlib Figures out; saving is the caller's job).

Drawn on ``matplotlib.figure.Figure`` objects through :func:`calipers.validate.plots.pyplot`, so
nothing here touches pyplot's global state or the backend. Inputs are the outputs of
:mod:`calipers.validate.classification` and :mod:`calipers.validate.selection_function`.
"""
from __future__ import annotations

import math

import numpy as np

from calipers.validate.plots import pyplot

__all__ = ["reliability_diagram", "purity_plot", "roc_plot", "selection_heatmap", "completeness_plot",
           "fpr_by_class_plot", "cutout_gallery", "lupton_rgb"]

FPR_MARKS = (1e-2, 1e-3, 1e-4)


def reliability_diagram(errors, labels=None, title: str = "Reliability", log: bool = False):
    """Reliability diagram from one or more :func:`calibration_errors` dicts (e.g. before / after
    calibration): mean predicted probability against observed frequency per bin, with y = x, over
    a panel of the objects per bin (where the bins lie: equal-mass bins hold equal counts).
    ``log=True`` draws log axes, for a rare class whose probabilities crowd near 0. Returns a
    Figure with two axes."""
    plt = pyplot()
    errs = [errors] if isinstance(errors, dict) else list(errors)
    labels = list(labels) if labels is not None else [f"curve {i + 1}" for i in range(len(errs))]
    if len(labels) != len(errs):
        raise ValueError(f"reliability_diagram: {len(errs)} curves but {len(labels)} labels")
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([1e-9, 1], [1e-9, 1], "k--", lw=0.8, label="calibrated")
    top, shown = 0, []
    for err, label in zip(errs, labels):
        conf = np.asarray(err["bin_confidence"], dtype=float)
        freq = np.asarray(err["bin_frequency"], dtype=float)
        count = np.asarray(err["bin_count"])
        keep = (count > 0) & ((conf > 0) & (freq > 0) if log else True)  # log axes: zeros not drawn
        shown.append(np.r_[conf[keep], freq[keep]])
        line, = ax.plot(conf[keep], freq[keep], "o-", ms=4, label=f"{label} (ECE {err['ece']:.3g})")
        ax_n.stairs(count, np.asarray(err["bin_edges"], dtype=float), color=line.get_color())
        top = max(top, count.max())
    if log:
        values = np.concatenate(shown)
        low = min(values.min() if values.size else 0.1, 0.1) / 2
        ax.set(xscale="log", yscale="log", xlim=(low, 1), ylim=(low, 1))
        ax_n.set(xscale="log")
    else:
        ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.set(ylabel="observed frequency", title=title)
    ax.legend(loc="upper left", fontsize=8)
    ax_n.set(xlabel="predicted probability", ylabel="objects per bin", ylim=(0, 1.15 * max(top, 1)))
    fig.tight_layout()
    return fig


def purity_plot(result, title: str | None = None):
    """Predicted against observed purity per top-score bin (:func:`purity_calibration`), with the
    interval of the observed purity and y = x; bins whose interval misses the prediction are red.
    Log axes when the purities span more than a decade. Returns a Figure with one axes."""
    plt = pyplot()
    rows = result["bins"] if isinstance(result, dict) else list(result)
    pred = np.array([r["predicted"] for r in rows], dtype=float)
    obs = np.array([r["observed"] for r in rows], dtype=float)
    lo = np.array([r["lo"] for r in rows], dtype=float)
    hi = np.array([r["hi"] for r in rows], dtype=float)
    inside = np.array([r["inside"] for r in rows], dtype=bool)
    fig, ax = plt.subplots(figsize=(5, 5))
    positive = np.concatenate([pred, lo, hi])
    positive = positive[positive > 0]
    vmin = max(positive.min() * 0.7, 1e-6) if positive.size else 1e-3
    log = positive.size and positive.max() / vmin > 10
    lim = (vmin, 1.15) if log else (0.0, 1.02)
    ax.plot(lim, lim, "k--", lw=0.8, label="predicted = observed")
    for mask, colour, label in ((inside, "tab:blue", "interval holds prediction"),
                                (~inside, "tab:red", "interval misses prediction")):
        if mask.any():
            yerr = [np.maximum(obs[mask] - lo[mask], 0), np.maximum(hi[mask] - obs[mask], 0)]
            ax.errorbar(pred[mask], obs[mask], yerr=yerr, fmt="o", color=colour, capsize=3, label=label)
    if log:
        ax.set(xscale="log", yscale="log")
    prev = result.get("prevalence") if isinstance(result, dict) else None
    frac = result.get("fraction_inside") if isinstance(result, dict) else None
    default = "Purity in top-score bins" + (f" at prevalence {prev:g}" if prev else "")
    ax.set(xlabel="predicted purity", ylabel="observed purity", xlim=lim, ylim=lim, title=title or default)
    if frac is not None:
        ax.text(0.97, 0.03, f"{100 * frac:.0f}% of bins consistent", transform=ax.transAxes, ha="right", va="bottom")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def roc_plot(curves, marks=FPR_MARKS, fpr_min: float = 1e-5, title: str = "ROC at low false-positive rate"):
    """ROC curves ``[(name, fpr, tpr), ...]`` on a log FPR axis from ``fpr_min`` to 1, with
    vertical marks at the FPRs of ``marks``. Returns a Figure with one axes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, fpr, tpr in curves:
        fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        keep = fpr > 0
        ax.step(fpr[keep], tpr[keep], where="post", label=str(name))
    for m in marks:
        ax.axvline(m, color="0.5", lw=0.8, ls=":")
        ax.text(m, 0.02, f" FPR {m:g}", rotation=90, va="bottom", ha="right", fontsize=7, color="0.3")
    ax.set(xscale="log", xlim=(fpr_min, 1), ylim=(0, 1.01), xlabel="false-positive rate",
           ylabel="true-positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _cell_label(comp: float, half_width: float, n: int, ok: bool) -> str:
    return f"{comp:.2f} +/-{half_width:.2f}\n(n={n})" if ok else f"insufficient\n(n={n})"


def selection_heatmap(table: dict, title: str | None = None):
    """Completeness over two properties (:func:`completeness_table_2d`): colour = completeness,
    each cell annotated "0.83 +/-0.04 (n=412)", or "insufficient (n=12)" and hatched grey when it
    holds too few objects. Returns a Figure with the map and its colour bar (two axes)."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    ex, ey = np.asarray(table["edges_x"], dtype=float), np.asarray(table["edges_y"], dtype=float)
    comp = np.asarray(table["completeness"], dtype=float)
    half = np.asarray(table["half_width"], dtype=float)
    n = np.asarray(table["n"])
    ok = np.asarray(table["status"]) == "ok"
    fig, ax = plt.subplots(figsize=(1.3 * (ex.size - 1) + 3, 1.0 * (ey.size - 1) + 2.5))
    mesh = ax.pcolormesh(ex, ey, np.ma.masked_invalid(np.where(ok, comp, np.nan)).T, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(mesh, ax=ax, label="completeness")
    for i in range(ex.size - 1):
        for j in range(ey.size - 1):
            if not ok[i, j]:
                ax.add_patch(Rectangle((ex[i], ey[j]), ex[i + 1] - ex[i], ey[j + 1] - ey[j], facecolor="0.85",
                                       edgecolor="0.6", hatch="//", lw=0.5))
            colour = "white" if ok[i, j] and comp[i, j] < 0.5 else "black"
            ax.text(0.5 * (ex[i] + ex[i + 1]), 0.5 * (ey[j] + ey[j + 1]),
                    _cell_label(comp[i, j], half[i, j], int(n[i, j]), bool(ok[i, j])),
                    ha="center", va="center", fontsize=7, color=colour)
    ax.set(xlabel=table.get("name_x", "x"), ylabel=table.get("name_y", "y"),
           xlim=(ex[0], ex[-1]), ylim=(ey[0], ey[-1]), title=title or "Completeness")
    fig.tight_layout()
    return fig


def completeness_plot(tables, ncols: int = 3, title: str | None = None):
    """Completeness against each stratum (``{name: completeness_table rows}`` or one table), with
    Clopper-Pearson bars; bins with too little data are marked with a grey cross at zero and their
    count. Returns a Figure with one axes per stratum."""
    plt = pyplot()
    if isinstance(tables, dict):
        items = list(tables.items())
    else:
        rows = list(tables)
        items = [(rows[0].get("name", "") if rows else "", rows)]
    if not items:
        raise ValueError("completeness_plot: no tables to draw")
    ncols = max(1, min(ncols, len(items)))
    nrows = math.ceil(len(items) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    flat = axes.ravel()
    for ax, (name, rows) in zip(flat, items):
        lo_e = np.array([r["edge_lo"] for r in rows], dtype=float)
        hi_e = np.array([r["edge_hi"] for r in rows], dtype=float)
        mid = 0.5 * (lo_e + hi_e)
        ok = np.array([r["status"] == "ok" for r in rows], dtype=bool)
        comp = np.array([r["completeness"] for r in rows], dtype=float)
        lo = np.array([r["lo"] for r in rows], dtype=float)
        hi = np.array([r["hi"] for r in rows], dtype=float)
        if ok.any():
            yerr = [np.maximum(comp[ok] - lo[ok], 0), np.maximum(hi[ok] - comp[ok], 0)]
            ax.errorbar(mid[ok], comp[ok], xerr=0.5 * (hi_e - lo_e)[ok], yerr=yerr, fmt="o", capsize=3,
                        color="tab:blue")
        if (~ok).any():
            ax.plot(mid[~ok], np.zeros((~ok).sum()), "x", color="0.5", label="insufficient data")
            for x, r in zip(mid[~ok], [r for r, good in zip(rows, ok) if not good]):
                ax.text(x, 0.03, f"n={r['n']}", ha="center", va="bottom", fontsize=7, color="0.4")
            ax.legend(loc="upper left", fontsize=7)
        ax.set(xlabel=str(name), ylabel="completeness", ylim=(-0.02, 1.02), xlim=(lo_e.min(), hi_e.max()))
    for ax in flat[len(items):]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def fpr_by_class_plot(rows, fpr_target: float | None = None, title: str = "False positives by class"):
    """False-positive rate of each class of negative (:func:`fpr_by_class` rows) as bars with
    Clopper-Pearson bars on a log axis; a class with no false positive shows its upper limit (a
    downward triangle at ``hi``). Returns a Figure with one axes."""
    plt = pyplot()
    names = [str(r["class"]) for r in rows]
    fpr = np.array([r["fpr"] for r in rows], dtype=float)
    lo = np.array([r["lo"] for r in rows], dtype=float)
    hi = np.array([r["hi"] for r in rows], dtype=float)
    k = np.array([r["k"] for r in rows])
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(rows) + 2), 4))
    seen = k > 0
    yerr = [np.maximum(fpr[seen] - lo[seen], 0), np.maximum(hi[seen] - fpr[seen], 0)]
    ax.bar(x[seen], fpr[seen], color="tab:orange", yerr=yerr, capsize=3)
    if (~seen).any():
        ax.plot(x[~seen], hi[~seen], "v", color="tab:orange", label="no false positive: upper limit")
        ax.legend(loc="upper right", fontsize=8)
    if fpr_target is not None:
        ax.axhline(fpr_target, color="k", ls="--", lw=0.8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(yscale="log", ylabel="false-positive rate", title=title)
    fig.tight_layout()
    return fig


def lupton_rgb(image: np.ndarray, q: float = 8.0, percentile: float = 99.5) -> np.ndarray:
    """An asinh colour composite of one (3, H, W) cutout with bands in increasing wavelength
    (e.g. g, r, i), mapped reddest -> R, middle -> G, bluest -> B (Lupton et al. 2004).

    Per-image scaling: the channels are divided by the ``percentile`` of the mean intensity I
    over positive pixels, then scaled by asinh(q I) / (asinh(q) I), so that the colour of a pixel
    is kept while bright cores are compressed; a pixel whose largest channel exceeds 1 is scaled
    down as a whole (keeps its hue), negatives are set to 0. NaN pixels are shown black (display
    only). Returns (H, W, 3) floats in [0, 1]. Hand-written (a few lines) rather than
    astropy.visualization.make_lupton_rgb because astropy is not a core dependency of calipers.
    """
    img = np.asarray(image, dtype=float)
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"lupton_rgb: an image must have shape (3, H, W), got {img.shape}")
    rgb = np.nan_to_num(img[::-1], nan=0.0, posinf=0.0, neginf=0.0)  # (reddest, middle, bluest)
    intensity = rgb.mean(axis=0)
    bright = intensity[intensity > 0]
    scale = np.percentile(bright, percentile) if bright.size else 1.0
    rgb = rgb / (scale if scale > 0 else 1.0)
    intensity = rgb.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(intensity > 0, np.arcsinh(q * intensity) / (np.arcsinh(q) * intensity), 0.0)
    rgb = np.clip(rgb * factor, 0.0, None)
    peak = rgb.max(axis=0)
    rgb = np.where(peak > 1, rgb / np.maximum(peak, 1e-300), rgb)
    return np.moveaxis(rgb, 0, -1)


def cutout_gallery(images, titles=None, n_cols: int = 5, q: float = 8.0, percentile: float = 99.5,
                   title: str | None = None):
    """A grid of colour cutouts: ``images`` (N, 3, H, W) with bands in increasing wavelength
    (g, r, i -> B, G, R), each drawn with :func:`lupton_rgb` (per-image scaling); ``titles`` one
    per image (e.g. "p=0.97 theta_E=1.2"). Returns a Figure with N axes."""
    plt = pyplot()
    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[1] != 3:
        raise ValueError(f"cutout_gallery: images must have shape (N, 3, H, W), got {imgs.shape}")
    n = imgs.shape[0]
    if n == 0:
        raise ValueError("cutout_gallery: no images")
    if titles is not None and len(titles) != n:
        raise ValueError(f"cutout_gallery: {n} images but {len(titles)} titles")
    n_cols = max(1, min(int(n_cols), n))
    n_rows = math.ceil(n / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.0 * n_cols, 2.2 * n_rows), squeeze=False)
    flat = axes.ravel()
    for i in range(n):
        ax = flat[i]
        ax.imshow(lupton_rgb(imgs[i], q=q, percentile=percentile), origin="lower", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    for ax in flat[n:]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
