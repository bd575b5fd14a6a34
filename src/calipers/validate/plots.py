"""Diagnostic figures (arrays in, matplotlib Figures out; saving is the caller's job)."""
from __future__ import annotations

import numpy as np


class _Figures:
    """Figures without pyplot: ``matplotlib.figure.Figure`` objects, which save through the Agg
    canvas whatever the session's backend, so drawing here never changes global matplotlib
    state (no backend switch, no figure registry to close)."""

    @staticmethod
    def subplots(nrows: int = 1, ncols: int = 1, figsize=None, **kwargs):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kwargs)


def pyplot():
    """The figure factory used here (``subplots`` as in pyplot, returning (Figure, axes))."""
    return _Figures


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


def grouped_coverage_figure(rows, tolerance: float | None = None, title: str = "Coverage per group"):
    """Coverage of the central 68 and 95% intervals per group (rows of
    :func:`calipers.validate.grouped.coverage_by_group`), one panel per grouping, with the nominal
    level and, when given, the band nominal +- ``tolerance`` a gate allows. A grouping whose rows
    carry ``judged: False`` is titled as shown, not judged."""
    plt = pyplot()
    groupings = [g for g in dict.fromkeys(r["grouping"] for r in rows) if g != "all"] or ["all"]
    fig, axes = plt.subplots(1, len(groupings), figsize=(4.2 * len(groupings), 3.8), squeeze=False)
    for ax, grouping in zip(axes[0], groupings):
        part = [r for r in rows if r["grouping"] == grouping and r["n"]]
        x = np.arange(len(part))
        for level, colour in ((68, "tab:blue"), (95, "tab:red")):
            ax.axhline(level / 100, color=colour, lw=0.8, ls="--")
            if tolerance is not None:
                ax.axhspan(level / 100 - tolerance, level / 100 + tolerance, color=colour, alpha=0.12, lw=0)
            ax.plot(x, [r[f"coverage{level}"] for r in part], "o-", color=colour, label=f"{level}% interval")
        ax.set_xticks(x)
        ax.set_xticklabels([str(r["group"]) for r in part], rotation=30 if len(part) > 4 else 0, fontsize=8)
        ax.set(xlabel=grouping, ylabel="coverage", ylim=(0.4, 1.02))
        shown_only = bool(part) and all(r.get("judged", True) is False for r in part)
        ax.set_title((title if len(groupings) == 1 else f"{title}: {grouping}") + (" (shown, not judged)"
                                                                                     if shown_only else ""), fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
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


def shift_features_figure(reference: np.ndarray, target: np.ndarray, bands):
    """Reference vs target photometry: a magnitude histogram (the i band, or the reddest band
    when there are fewer than four) and a colour-colour scatter of two adjacent colours (a
    colour against that magnitude when there is one colour, nothing when there is none).
    Feature columns: the ``len(bands)`` magnitudes, then the adjacent colours."""
    plt = pyplot()
    bands = list(bands)
    nb = len(bands)
    n_col = reference.shape[1] - nb
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    j = min(3, nb - 1)
    colour = [f"{bands[i]} - {bands[i + 1]}" for i in range(n_col)]
    if n_col >= 3:
        cx, cy = nb + 1, nb + 2
        labels = (colour[1], colour[2])
    elif n_col == 2:
        cx, cy = nb, nb + 1
        labels = (colour[0], colour[1])
    elif n_col == 1:
        cx, cy = j, nb
        labels = (f"{bands[j]} magnitude", colour[0])
    else:
        cx = cy = None
    for data, label in ((reference, "reference"), (target, "target")):
        axes[0].hist(data[:, j], bins=60, density=True, histtype="step", label=label)
        if cx is not None:
            axes[1].scatter(data[:2000, cx], data[:2000, cy], s=1, alpha=0.4, label=label)
    axes[0].set(xlabel=f"{bands[j]} magnitude", ylabel="density")
    axes[0].legend()
    if cx is None:
        axes[1].axis("off")
    else:
        axes[1].set(xlabel=labels[0], ylabel=labels[1])
    fig.tight_layout()
    return fig


def nz_bands_figure(zgrid: np.ndarray, fiducial: np.ndarray, realizations: np.ndarray, true_nz: np.ndarray,
                    edges: np.ndarray):
    """Per tomographic bin: the stacked-p(z) n(z), the 68%/95% bands of its realizations
    (n_real, n_bins, nz) and the histogram of the true redshifts."""
    plt = pyplot()
    nb = len(fiducial)
    fig, axes = plt.subplots(nb, 1, figsize=(7, 1.8 * nb + 0.6), sharex=True, squeeze=False)
    lo95, lo68, hi68, hi95 = np.percentile(realizations, [2.5, 16, 84, 97.5], axis=0)
    for b, ax in enumerate(axes[:, 0]):
        ax.fill_between(zgrid, lo95[b], hi95[b], color="tab:blue", alpha=0.2, label="95% of realizations")
        ax.fill_between(zgrid, lo68[b], hi68[b], color="tab:blue", alpha=0.4, label="68%")
        ax.plot(zgrid, fiducial[b], color="tab:blue", lw=1, label="stacked p(z)")
        ax.step(zgrid, true_nz[b], where="mid", color="k", lw=0.8, label="true z")
        ax.axvspan(edges[b], edges[b + 1], color="0.9", zorder=-1)
        ax.set_ylabel(f"bin {b}")
    axes[0, 0].legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("z")
    fig.tight_layout()
    return fig


def cl_errors_figure(ell: np.ndarray, pairs, data: np.ndarray, sigma_gauss: np.ndarray, sigma_nz: np.ndarray):
    """Auto-spectra per probe with their Gaussian (band) and n(z)-induced (bars) errors;
    ``pairs`` as :func:`calipers.cosmology.tracer_pairs` gives them, one row of ``data`` each."""
    plt = pyplot()
    autos = [i for i, (a, b) in enumerate(pairs) if a == b]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    f = ell * (ell + 1) / (2 * np.pi)
    for ax, probe in zip(axes, ("shear", "density")):
        for i in [i for i in autos if pairs[i][0][0] == probe]:
            line = ax.loglog(ell, f * data[i], label=f"bin {pairs[i][0][1]}")[0]
            ax.fill_between(ell, f * (data[i] - sigma_gauss[i]), f * (data[i] + sigma_gauss[i]),
                            color=line.get_color(), alpha=0.15)
            ax.errorbar(ell, f * data[i], yerr=f * sigma_nz[i], fmt="none", ecolor=line.get_color(), capsize=2)
        ax.set(xlabel=r"$\ell$", ylabel=r"$\ell(\ell+1)C_\ell/2\pi$",
               title=f"{probe} autos: band = Gaussian error, bars = n(z)-induced")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cl_error_ratio_figure(ell: np.ndarray, ratio: np.ndarray, names):
    """sigma_n(z) / sigma_Gauss per ell bin: every spectrum (grey), the median and the largest."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in ratio:
        ax.semilogx(ell, r, lw=0.6, color="0.6")
    ax.semilogx(ell, np.median(ratio, axis=0), color="tab:red", lw=2, label="median over spectra")
    ax.semilogx(ell, ratio.max(0), color="tab:red", lw=1, ls="--", label="largest")
    ax.set(xlabel=r"$\ell$", ylabel=r"$\sigma_{n(z)} / \sigma_{\rm Gauss}$",
           title="n(z)-induced scatter of C_ell relative to the Gaussian error")
    ax.legend()
    fig.tight_layout()
    return fig


def sbc_ranks_figure(ranks: np.ndarray, ks_pvalues, num_posterior_samples: int, names, bins: int = 10):
    """SBC rank histogram per parameter with the 99% band of uniform ranks."""
    from scipy import stats

    plt = pyplot()
    k = len(names)
    cols = min(k, 5)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False)
    n = len(ranks)
    lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / bins)
    for j, ax in enumerate(axes.ravel()):
        if j >= k:
            ax.axis("off")
            continue
        ax.hist(ranks[:, j], bins=bins, range=(0, num_posterior_samples), color="tab:blue", alpha=0.8)
        ax.axhspan(lo, hi, color="0.6", alpha=0.4)
        ax.set_title(f"{names[j]} (p={ks_pvalues[j]:.2g})", fontsize=8)
    fig.suptitle("SBC rank histograms (band: 99% for uniform ranks)", fontsize=9)
    fig.tight_layout()
    return fig


def tarp_figure(alpha: np.ndarray, ecp: np.ndarray, atc: float):
    """TARP expected coverage against credibility level."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot(alpha, ecp, color="tab:red")
    ax.set(xlabel="credibility level", ylabel="expected coverage", title=f"TARP (ATC {atc:+.3f})",
           xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    return fig


def corner_figure(samples: np.ndarray, names, truth: np.ndarray, max_params: int = 6):
    """Corner plot of posterior samples (at most ``max_params`` parameters) with the true values."""
    plt = pyplot()
    k = min(len(names), max_params)
    fig, axes = plt.subplots(k, k, figsize=(1.8 * k + 1, 1.8 * k + 1), squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
            elif i == j:
                ax.hist(samples[:, i], bins=40, color="tab:blue", alpha=0.8)
                ax.axvline(truth[i], color="k", lw=0.8)
            else:
                ax.hist2d(samples[:, j], samples[:, i], bins=40, cmap="Blues")
                ax.plot(truth[j], truth[i], "k+", ms=8)
            if i == k - 1:
                ax.set_xlabel(names[j], fontsize=7)
            if j == 0 and i > 0:
                ax.set_ylabel(names[i], fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def shift_weights_figure(weights: np.ndarray, ess_fraction: float, clip_ratio_weight: float | None = None,
                         bins: int = 50):
    """Histogram of log10 importance weights (w = p_target / p_labelled, mean 1) of the labelled
    rows, with w = 1 and, when the weights were capped, the cap (on the weights' scale) marked."""
    plt = pyplot()
    w = np.asarray(weights, dtype=float)
    positive = w[w > 0]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if positive.size:
        ax.hist(np.log10(positive), bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="k", lw=0.8, ls="--", label="w = 1")
    if clip_ratio_weight is not None and clip_ratio_weight > 0:
        ax.axvline(np.log10(clip_ratio_weight), color="tab:red", lw=0.8, label="cap")
    zero = int(np.sum(w <= 0))
    note = f"; {zero} zero weight(s) not shown" if zero else ""
    ax.set(xlabel="log10 importance weight", ylabel="labelled rows",
           title=f"Shift weights: ESS fraction {ess_fraction:.3f}{note}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def point_estimate_density_figure(zphot: np.ndarray, ztrue: np.ndarray, metrics: dict, label: str = "zmode",
                                  zmax: float | None = None, bins: int = 80):
    """Point estimate against true redshift as a 2-D histogram (log colour scale) with the 1:1
    line and the catastrophic-outlier lines z_phot = z_true +- 0.15 (1 + z_true); ``metrics``
    (:func:`calipers.validate.metrics.point_metrics`) gives sigma_IQR, bias and outlier rate for
    the title. Non-finite pairs are left out (and counted in the title)."""
    from matplotlib.colors import LogNorm

    plt = pyplot()
    zphot, ztrue = np.asarray(zphot, dtype=float), np.asarray(ztrue, dtype=float)
    ok = np.isfinite(zphot) & np.isfinite(ztrue)
    top = zmax if zmax is not None else (float(max(zphot[ok].max(), ztrue[ok].max())) if ok.any() else 1.0)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if ok.any():
        _, _, _, image = ax.hist2d(ztrue[ok], zphot[ok], bins=bins, range=[[0, top], [0, top]], cmin=1,
                                   norm=LogNorm(), cmap="viridis")
        fig.colorbar(image, ax=ax, label="galaxies per cell")
    line = np.array([0.0, top])
    ax.plot(line, line, "k-", lw=0.8, label="1:1")
    for sign in (1, -1):
        ax.plot(line, line + sign * 0.15 * (1 + line), "r--", lw=0.8, label="+-0.15(1+z)" if sign > 0 else None)
    dropped = int((~ok).sum())
    note = f", {dropped} non-finite left out" if dropped else ""
    ax.set(xlabel="true z", ylabel=f"photo-z ({label})", xlim=(0, top), ylim=(0, top),
           title=f"n = {int(ok.sum())}{note}: sigma_IQR {metrics.get('sigma_iqr', np.nan):.4f}, "
                 f"bias {metrics.get('bias', np.nan):+.4f}, outliers {metrics.get('outlier_015', np.nan):.3f}")
    ax.title.set_fontsize(8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def example_pdfs_figure(zgrid: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, ztrue: np.ndarray, rows=None):
    """A few p(z), before (``raw``) and after (``calibrated``) calibration, each with its true
    redshift marked; one panel per row of the (k, len(zgrid)) arrays (NaN rows drawn empty)."""
    plt = pyplot()
    k = len(ztrue)
    cols = min(max(k, 1), 3)
    nrows = max(-(-k // cols), 1)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.6 * nrows), squeeze=False)
    for j, ax in enumerate(axes.ravel()):
        if j >= k:
            ax.axis("off")
            continue
        ax.plot(zgrid, raw[j], color="0.5", lw=1, label="raw")
        ax.plot(zgrid, calibrated[j], color="tab:blue", lw=1.2, label="calibrated")
        ax.axvline(ztrue[j], color="tab:red", lw=1, ls="--", label="true z")
        name = f"row {rows[j]}, " if rows is not None else ""
        ax.set_title(f"{name}z = {ztrue[j]:.3f}", fontsize=8)
        ax.set_xlabel("z", fontsize=8)
        ax.tick_params(labelsize=7)
        if j == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pit_coverage_before_after_figure(pit_counts_before: np.ndarray, pit_counts_after: np.ndarray, levels,
                                     coverage_before, coverage_after, bins: int = 50):
    """PIT histograms (counts in equal bins on [0, 1], re-binned to ``bins`` when a multiple)
    before and after calibration, over the 95% band of a uniform PIT, and the central-interval
    coverage curves at nominal ``levels``."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    n, m = 0, bins
    for counts, label, colour in ((pit_counts_before, "before", "0.45"), (pit_counts_after, "after", "tab:blue")):
        counts = np.asarray(counts)
        if len(counts) != bins and len(counts) % bins == 0:
            counts = counts.reshape(bins, -1).sum(axis=1)
        n, m = int(counts.sum()), len(counts)
        left.stairs(counts, np.linspace(0, 1, m + 1), color=colour, lw=1.5, label=f"{label} calibration")
    expect = n / m
    sd = np.sqrt(n * (1 / m) * (1 - 1 / m))
    left.axhspan(expect - 2 * sd, expect + 2 * sd, color="0.8", alpha=0.6, label="uniform, 95% band")
    left.set(xlabel="PIT", ylabel="count", title=f"PIT (n = {n})", xlim=(0, 1))
    left.legend(fontsize=8, loc="lower center")
    right.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    right.plot(levels, coverage_before, color="0.45", label="before")
    right.plot(levels, coverage_after, color="tab:blue", label="after")
    right.set(xlabel="nominal coverage", ylabel="empirical coverage", title="Central-interval coverage",
              xlim=(0, 1), ylim=(0, 1))
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def nz_comparison_figure(zgrid: np.ndarray, target_nz: np.ndarray, target_nz_in_support: np.ndarray | None,
                         labelled_edges: np.ndarray, labelled_density: np.ndarray,
                         validation_stacked: np.ndarray | None = None, ood_fraction: float | None = None):
    """The target's estimated n(z) (stacked p(z), normalised on ``zgrid``; with and without the
    galaxies outside the training support) beside the labelled sample's true-redshift histogram
    (a density) and, when given, the stacked p(z) of the labelled validation part."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.stairs(labelled_density, labelled_edges, fill=True, color="0.85", label="labelled sample, true z")
    if validation_stacked is not None:
        ax.plot(zgrid, validation_stacked, color="0.35", lw=1, ls=":", label="labelled validation part, stacked p(z)")
    flagged = f" ({100 * ood_fraction:.1f}% ood)" if ood_fraction is not None else ""
    ax.plot(zgrid, target_nz, color="tab:blue", lw=1.5, label=f"target, stacked p(z), all{flagged}")
    if target_nz_in_support is not None:
        ax.plot(zgrid, target_nz_in_support, color="tab:orange", lw=1.2, ls="--", label="target, ood excluded")
    ax.set(xlabel="z", ylabel="n(z) (normalised)", title="Redshift distributions", xlim=(zgrid[0], zgrid[-1]))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sensitivity_figure(names, nz_mean_shifts, nz_mean_errors, nz_mean_limits, point_shift_p68=None,
                       point_limits=None):
    """Photometry sensitivity: per perturbation, the shift of the sample's n(z) mean (bars, with
    their standard errors) against its limit (+-, per bar: ``nz_mean_limits``), and, when given,
    the 68th percentile of |dz_point| / (1 + z_point) against ``point_limits`` in a second panel.
    Bars beyond their limit are red."""
    plt = pyplot()
    names = list(names)
    x = np.arange(len(names))
    shifts, errors = np.asarray(nz_mean_shifts, dtype=float), np.asarray(nz_mean_errors, dtype=float)
    limits = np.broadcast_to(np.asarray(nz_mean_limits, dtype=float), shifts.shape)
    panels = 2 if point_shift_p68 is not None else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(5.5, 0.45 * len(names) + 2), 3.2 * panels + 0.6),
                             squeeze=False, sharex=True)
    edges = np.append(x - 0.5, x[-1] + 0.5) if len(x) else np.array([0.0, 1.0])

    def bars(ax, values, lims, yerr=None, symmetric=True):
        colours = ["tab:red" if abs(v) > lim else "tab:blue" for v, lim in zip(values, lims)]
        ax.bar(x, values, yerr=yerr, color=colours, alpha=0.85, capsize=2)
        ax.stairs(lims, edges, baseline=None, color="k", ls="--", lw=0.9, label="limit")
        if symmetric:
            ax.stairs(-lims, edges, baseline=None, color="k", ls="--", lw=0.9)
            ax.axhline(0, color="k", lw=0.6)
        ax.legend(fontsize=8, loc="best")

    bars(axes[0, 0], shifts, limits, yerr=errors)
    axes[0, 0].set(ylabel=r"$\Delta\langle z\rangle$ of n(z)", title="Sensitivity of n(z) mean to the photometry")
    if panels == 2:
        p68 = np.asarray(point_shift_p68, dtype=float)
        bars(axes[1, 0], p68, np.broadcast_to(np.asarray(point_limits, dtype=float), p68.shape), symmetric=False)
        axes[1, 0].set(ylabel=r"68th pct of $|\Delta z|/(1+z)$")
    ax = axes[-1, 0]
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    return fig


def failure_modes_figure(tables):
    """Where the point estimates fail: one panel per binning, with the outlier rate
    (|dz|/(1+z) > 0.15, bars), sigma_IQR and bias of dz/(1+z) per bin, and the number of rows
    under each bin's label. ``tables``: a sequence of ``(title, bin labels, statistics)`` with the
    statistics of :func:`calipers.validate.metrics.binned_point_metrics` (``n``, ``outlier_015``,
    ``sigma_iqr``, ``bias``; NaN in empty bins, which are drawn empty)."""
    plt = pyplot()
    tables = list(tables)
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4), squeeze=False)
    for ax, (title, labels, stats) in zip(axes[0], tables):
        x = np.arange(len(labels))
        outliers = np.asarray(stats["outlier_015"], dtype=float)
        ax.bar(x, np.nan_to_num(outliers), color="tab:red", alpha=0.5, label="outlier rate (>0.15)")
        ax.plot(x, stats["sigma_iqr"], "o-", color="tab:blue", label="sigma_IQR")
        ax.plot(x, stats["bias"], "s--", color="tab:green", label="bias (median)")
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_xticks(x, [f"{label}\nn={int(n)}" for label, n in zip(labels, stats["n"])], fontsize=7)
        ax.set(xlabel=title, ylabel="fraction / dz/(1+z)", title=f"failure modes by {title}")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
