"""pipelines/spectra.yml end to end through ceci on a tiny configuration: every stage runs in order,
the log g distributions are calibrated and judged per S/N and per [M/H] third, every model is put
against the ceiling and one HTML page shows it; and the BoundComparison leakage gate fires on a
model that knows the truth."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import run_stage, subprocess_env, write_pipeline

REPO = Path(__file__).resolve().parents[1]

TINY_STARS = {"SpectraSimulateTrain": 400, "SpectraSimulateCalibration": 64, "SpectraSimulateTest": 64}
TINY_CNN = {"n_members": 2, "max_epochs": 1, "patience": 1, "batch_size": 64, "channels": [4, 8, 8, 8, 8],
            "hidden": 16, "device": "cpu"}


def tiny_pipeline(tmp: Path) -> Path:
    pipe = yaml.safe_load((REPO / "pipelines" / "spectra.yml").read_text())
    stages = yaml.safe_load((REPO / "stages" / "spectra.yml").read_text())
    stages["global"]["simulator"]["n_forest_lines"] = 100
    for name, n in TINY_STARS.items():
        stages[name].update(n_stars=n, chunk_size=256)
    stages["SpectraTrainCNN"].update(TINY_CNN)
    stages["SpectraTrainLightGBM"].update(gbm_n_estimators=20, gbm_rebin=32)
    stages["LoggCalibrate"].update(max_epochs=10, patience=3, n_members=1, hidden=16)
    stages["LoggGate"]["on_fail"] = "warn"  # a one-epoch model on 400 stars is not calibrated to 0.02
    for name in ("BoundComparisonCNN", "BoundComparisonRidge", "BoundComparisonLightGBM"):
        stages[name]["n_boot"] = 50
    return write_pipeline(tmp, pipe, stages)


@pytest.fixture(scope="module")
def spectra_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("spectra_pipeline")
    pipe = tiny_pipeline(d)
    proc = subprocess.run(["ceci", str(pipe)], capture_output=True, text=True, env=subprocess_env(), cwd=d,
                          timeout=1200)
    return d, proc


def test_pipeline_runs_calibrates_judges_and_reports(spectra_run):
    d, proc = spectra_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = d / "out"
    gate = json.loads((out / "logg_gate_report" / "report.json").read_text())
    rows = gate["coverage_by_group"]
    assert [r["group"] for r in rows if r["grouping"] == "snr"] == ["3", "5", "7", "10", "20"]
    assert sum(r["grouping"] == "m_h" for r in rows) == 3 and rows[0]["n"] == 5 * 64
    # judged: S/N and the CNN's own [M/H] estimate (an observable); shown only: the true [M/H]
    assert all(r["judged"] == (r["grouping"] != "m_h") for r in rows)
    assert sum(r["grouping"] == "m_h_pred" for r in rows) == 3
    names = {c["name"] for c in gate["checks"]}
    assert {"pit_ks", "coverage68", "coverage95"} <= names  # the groups of 64 rows are below min_group_size
    report = out / "spectra_report"
    page = (report / "index.html").read_text()
    for figure in ("r2_vs_snr", "sigma_crlb_vs_snr", "coverage_by_group"):
        assert (report / f"{figure}.png").exists() and f"{figure}.png" in page
    summary = json.loads((report / "report.json").read_text())
    assert summary["models"] == ["CNN ensemble (calibrated)", "ridge", "LightGBM"]
    for r in summary["comparison"]:
        assert r["efficiency"] is None or r["efficiency"] <= 1.05
        assert r["r2_max"] is not None and 0 < r["r2_max"] < 1
    cnn = json.loads((out / "cnn_bound_comparison" / "report.json").read_text())
    snr_rows = [r for r in cnn["comparison"] if r["grouping"] == "snr"]
    assert [r["r2_max"] for r in snr_rows] == sorted(r["r2_max"] for r in snr_rows)  # more S/N, more information
    for r in snr_rows:
        assert r["r2_max_lo"] <= r["r2_max"] <= r["r2_max_hi"]


def test_calibrated_distributions_drop_the_stale_moments(spectra_run):
    from calipers.core.qpio import read_qp_rows

    d, proc = spectra_run
    assert proc.returncode == 0
    ens = read_qp_rows(str(d / "out" / "calibrated_cnn_logg_pdf.hdf5"), 0, 10)
    assert "logg_mean" not in ens.ancil and "logg_std" not in ens.ancil
    assert {"m_h_pred", "teff_pred", "snr"} <= set(ens.ancil)  # the calibrator's features stay
    assert {"star_id", "snr", "logg"} <= set(ens.ancil)
    raw = read_qp_rows(str(d / "out" / "cnn_logg_pdf.hdf5"), 0, 10)
    assert "logg_mean" in raw.ancil


def test_bound_comparison_fails_a_model_that_knows_the_truth(spectra_run, tmp_path):
    """A 'model' whose distributions sit on the true log g with a tiny width beats the ceiling: the
    gate must stop it as leakage (efficiency far above 1.05), naming the groups."""
    import qp

    from calipers.core.errors import GateFailed
    from calipers.core.spectrum_sets import read_fisher_bounds

    d, proc = spectra_run
    assert proc.returncode == 0
    cols, _ = read_fisher_bounds(str(d / "out" / "fisher_bounds.hdf5"))
    ens = qp.Ensemble(qp.stats.norm, data={"loc": cols["logg"][:, None], "scale": np.full((cols["logg"].size, 1), 0.01)})
    leaky = tmp_path / "leaky.hdf5"
    ens.write_to(str(leaky))
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump({"BoundComparison": {"n_boot": 20, "model_name": "leaky"}}))
    with pytest.raises(GateFailed, match=r"efficiency\[snr=3\]"):
        run_stage("BoundComparison", str(cfg), logg_pdf=str(leaky), fisher_bounds=str(d / "out" / "fisher_bounds.hdf5"),
                  bound_comparison=str(tmp_path / "cmp"))


def test_bound_comparison_refuses_distributions_of_other_rows(spectra_run, tmp_path):
    import qp

    d, proc = spectra_run
    assert proc.returncode == 0
    fisher = str(d / "out" / "fisher_bounds.hdf5")
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump({"BoundComparison": {"n_boot": 0}}))
    n = 5 * TINY_STARS["SpectraSimulateTest"]
    short = qp.Ensemble(qp.stats.norm, data={"loc": np.full((n - 1, 1), 3.0), "scale": np.ones((n - 1, 1))})
    short.write_to(str(tmp_path / "short.hdf5"))
    with pytest.raises(ValueError, match=f"{n - 1} distributions but the Fisher-bound catalog .*{n} rows"):
        run_stage("BoundComparison", str(cfg), logg_pdf=str(tmp_path / "short.hdf5"), fisher_bounds=fisher,
                  bound_comparison=str(tmp_path / "a"))
    shuffled = qp.Ensemble(qp.stats.norm, data={"loc": np.full((n, 1), 3.0), "scale": np.ones((n, 1))},
                           ancil={"star_id": np.arange(n)[::-1].astype(np.int64)})
    shuffled.write_to(str(tmp_path / "shuffled.hdf5"))
    with pytest.raises(Exception, match="star_id"):
        run_stage("BoundComparison", str(cfg), logg_pdf=str(tmp_path / "shuffled.hdf5"), fisher_bounds=fisher,
                  bound_comparison=str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
