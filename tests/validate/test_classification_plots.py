"""Classifier and selection-function figures: each returns a Figure with the expected axes and
annotations, draws to PNG, and leaves pyplot's global state alone."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from calipers.validate.classification import calibration_errors, purity_calibration, roc_curve, sigmoid
from calipers.validate.classification_plots import (
    completeness_plot,
    cutout_gallery,
    fpr_by_class_plot,
    lupton_rgb,
    purity_plot,
    reliability_diagram,
    roc_plot,
    selection_heatmap,
)
from calipers.validate.selection_function import completeness_table, completeness_table_2d, fpr_by_class


def _draws(fig) -> bytes:
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    return data


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(3, 1, 2000), rng.normal(0, 1, 50_000)]
    y = np.r_[np.ones(2000, int), np.zeros(50_000, int)]
    return x, y


def test_reliability_diagram_before_and_after(scored):
    x, y = scored
    before = calibration_errors(sigmoid(2 * x - 4), y)
    after = calibration_errors(sigmoid(x - 4), y)
    fig = reliability_diagram([before, after], labels=["raw", "calibrated"])
    assert len(fig.axes) == 2
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("raw (ECE") for t in legend) and any(t.startswith("calibrated") for t in legend)
    _draws(fig)
    assert len(reliability_diagram(before).axes) == 2
    logged = reliability_diagram([before, after], labels=["raw", "calibrated"], log=True)
    assert logged.axes[0].get_xscale() == "log" and logged.axes[0].get_ylim()[0] > 0
    _draws(logged)
    with pytest.raises(ValueError, match="labels"):
        reliability_diagram([before, after], labels=["one"])


def test_purity_plot(scored):
    x, y = scored
    pi = 1e-3
    result = purity_calibration(sigmoid(np.log(pi / (1 - pi)) + 3 * x - 4.5), y, pi, n_bins=6)
    fig = purity_plot(result)
    assert len(fig.axes) == 1 and fig.axes[0].get_xscale() == "log"
    assert "prevalence 0.001" in fig.axes[0].get_title()
    _draws(fig)


def test_roc_plot_marks_each_fpr(scored):
    x, y = scored
    fpr, tpr, _ = roc_curve(x, y)
    noisier = x + np.random.default_rng(1).normal(0, 1, x.size)
    fig = roc_plot([("model", fpr, tpr), ("noisier", *roc_curve(noisier, y)[:2])])
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and ax.get_xscale() == "log" and ax.get_xlim()[0] == pytest.approx(1e-5)
    assert sum(t.get_text().startswith(" FPR") for t in ax.texts) == 3
    assert len(ax.get_legend().get_texts()) == 2
    _draws(fig)


def test_selection_heatmap_annotates_every_cell():
    rng = np.random.default_rng(2)
    n = 3000
    psf, theta = rng.uniform(0.6, 1.2, n), rng.uniform(0.5, 2.5, n)
    theta[:2900] = np.clip(theta[:2900], 0.5, 1.9)  # leave the top theta row thin
    scores = rng.normal(2 * (theta - 1), 1)
    t = completeness_table_2d(scores, 0.0, psf, [0.6, 0.8, 1.0, 1.2], theta, [0.5, 1.0, 1.5, 2.0, 2.5],
                              min_count=50, name_x="psf_fwhm_r", name_y="theta_e")
    fig = selection_heatmap(t)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # map + colour bar
    texts = [tx.get_text() for tx in ax.texts]
    assert len(texts) == 12
    ok = t["status"] == "ok"
    assert 0 < ok.sum() < 12
    assert sum(tx.startswith("insufficient") for tx in texts) == (~ok).sum()
    i, j = np.argwhere(ok)[0]
    expected = f"{t['completeness'][i, j]:.2f} +/-{t['half_width'][i, j]:.2f}\n(n={t['n'][i, j]})"
    assert expected in texts
    assert sum(p.get_hatch() == "//" for p in ax.patches) == (~ok).sum()
    _draws(fig)


def test_completeness_plot_one_axes_per_stratum():
    rng = np.random.default_rng(3)
    n = 2000
    meta = {"theta_e": rng.uniform(0.5, 2.5, n), "psf_fwhm_r": rng.uniform(0.6, 1.2, n),
            "lens_mag_i": rng.uniform(18, 23, n), "depth_i": rng.uniform(24, 25, n)}
    scores = rng.normal(meta["theta_e"] - 1, 1)
    edges = {"theta_e": np.linspace(0.5, 2.5, 6), "psf_fwhm_r": [0.6, 0.9, 1.2], "lens_mag_i": np.linspace(18, 23, 30),
             "depth_i": [24, 24.5, 25]}
    tables = {k: completeness_table(scores, 0.0, meta[k], e, name=k) for k, e in edges.items()}
    fig = completeness_plot(tables)
    assert len(fig.axes) == 4
    assert [ax.get_xlabel() for ax in fig.axes] == list(edges)
    _draws(fig)
    assert len(completeness_plot(tables["theta_e"]).axes) == 1


def test_fpr_by_class_plot_with_an_upper_limit():
    scores = np.r_[np.linspace(0, 1, 1000), np.linspace(0, 0.5, 500)]
    classes = np.r_[np.zeros(1000, int), np.ones(500, int)]
    rows = fpr_by_class(scores, 0.99, classes, ["ring", "spiral"])
    assert rows[1]["k"] == 0
    fig = fpr_by_class_plot(rows, fpr_target=1e-3)
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ring", "spiral"]
    _draws(fig)


def test_cutout_gallery_and_lupton_colours():
    rng = np.random.default_rng(4)
    images = rng.normal(0, 0.1, (7, 3, 21, 21))
    images[:, 2, 10, 10] += 50.0  # a bright, red (i-band) point in the middle
    fig = cutout_gallery(images, titles=[f"p={i / 10:.1f}" for i in range(7)], n_cols=3)
    assert len(fig.axes) == 7 and fig.axes[0].get_title() == "p=0.0"
    _draws(fig)
    rgb = lupton_rgb(images[0])
    assert rgb.shape == (21, 21, 3) and rgb.min() >= 0 and rgb.max() <= 1
    centre = rgb[10, 10]
    assert centre[0] == pytest.approx(1.0) and centre[0] > 10 * centre[2]  # i -> R, g -> B
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        cutout_gallery(images[:, :2])


def test_no_pyplot_state_is_touched(scored):
    before = sys.modules.get("matplotlib.pyplot")
    x, y = scored
    roc_plot([("m", *roc_curve(x, y)[:2])])
    after = sys.modules.get("matplotlib.pyplot")
    if before is None:
        assert after is None
    else:
        assert len(after.get_fignums()) == 0
