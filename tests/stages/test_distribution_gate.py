"""DistributionGate: the family-neutral gate of 1-D distributions, judged overall and per group."""
import json

import numpy as np
import pytest
import qp
import yaml
from scipy.stats import norm

from calipers.core.errors import ConfigError, GateFailed
from conftest import run_stage, write_catalog


def toy(tmp_path, n=4000, shrink_at_20=1.0, seed=0):
    """log g-like truths with Gaussian distributions whose widths are right at S/N 5 and shrunk by
    ``shrink_at_20`` at S/N 20 (half the rows each); [M/H] is unrelated to the error."""
    rng = np.random.default_rng(seed)
    logg = rng.uniform(1, 5, n)
    snr = np.repeat([5.0, 20.0], n // 2)
    sigma = np.where(snr == 5.0, 0.4, 0.1)
    centre = logg + rng.normal(0, sigma)
    width = np.where(snr == 20.0, sigma / shrink_at_20, sigma)
    ens = qp.Ensemble(qp.stats.norm, data={"loc": centre[:, None], "scale": width[:, None]})
    path = tmp_path / "logg.hdf5"
    ens.write_to(str(path))
    truth = write_catalog(tmp_path / "truth.hdf5", {"logg": logg, "snr": snr, "m_h": rng.uniform(-0.25, 0.75, n)})
    return str(path), truth


def gate(tmp_path, dist, truth, **options):
    opts = {"truth_column": "logg", "xmin": -1.0, "xmax": 7.0, "nx": 801, "group_columns": ["snr", "m_h"],
            "group_bins": ["values", 3], "max_coverage_error": 0.03} | options
    cfg = tmp_path / "gate.yml"
    cfg.write_text(yaml.safe_dump({"DistributionGate": opts}))
    report = tmp_path / "report"
    run_stage("DistributionGate", str(cfg), distributions=dist, truth=truth, report=str(report))
    return report


def test_honest_distributions_pass_with_a_row_per_group(tmp_path):
    report = gate(tmp_path, *toy(tmp_path))
    rep = json.loads((report / "report.json").read_text())
    assert rep["passed"]
    groups = [(r["grouping"], r["group"]) for r in rep["coverage_by_group"]]
    assert groups[:3] == [("all", "all"), ("snr", "5"), ("snr", "20")] and len(groups) == 6
    assert {"coverage68[snr=5]", "coverage95[m_h=" + rep["coverage_by_group"][3]["group"] + "]"} <= \
        {c["name"] for c in rep["checks"]}
    assert (report / "coverage_by_group.png").exists() and (report / "pit_histogram.png").exists()
    assert 0 < rep["metrics"]["crps"] < 0.3


def test_over_confidence_in_one_group_fails_that_group(tmp_path):
    # widths 1.6x too small at S/N 20: that half covers ~0.47 at 68%; the pooled coverage ~0.58
    with pytest.raises(GateFailed) as err:
        gate(tmp_path, *toy(tmp_path, shrink_at_20=1.6))
    text = str(err.value)
    assert "coverage68[snr=20]" in text and "coverage68[snr=5]" not in text
    rep = json.loads((tmp_path / "report.FAILED" / "report.json").read_text())
    row = next(r for r in rep["coverage_by_group"] if r["group"] == "20")
    # exact: the 68% interval is +-0.9945 sigma / 1.6 around the centre, so it covers 2 Phi(0.9945 / 1.6) - 1
    expected = 2 * norm.cdf(norm.ppf(0.84) / 1.6) - 1  # 0.466
    assert row["coverage68"] == pytest.approx(expected, abs=0.035)  # 3 sigma of 2000 rows


def test_bad_configuration_and_mismatched_rows_are_named(tmp_path):
    dist, truth = toy(tmp_path)
    with pytest.raises(ConfigError, match="one entry per group column"):
        gate(tmp_path, dist, truth, group_bins=["values"])
    with pytest.raises(ConfigError, match="'m_h' has .* distinct values"):
        gate(tmp_path, dist, truth, group_bins=["values", "values"])
    other = write_catalog(tmp_path / "short.hdf5", {"logg": np.ones(10), "snr": np.ones(10), "m_h": np.ones(10)})
    with pytest.raises(ValueError, match="4000 distributions but .*short.hdf5"):
        gate(tmp_path, dist, other)


def test_ancil_group_columns_are_judged_and_report_groups_only_shown(tmp_path):
    """Widths 1.25x too wide where a hidden label is 0 and 1.25x too narrow where it is 1: the
    pooled 68% coverage is right, and a grouping by the hidden (true, latent) label is shown with
    its exact coverages but not judged; a column of the ensemble's ancil is judged."""
    rng = np.random.default_rng(3)
    n = 4000
    truth = rng.uniform(1, 5, n)
    hidden = np.repeat([0.0, 1.0], n // 2)
    centre = truth + rng.normal(0, 0.3, n)
    width = np.where(hidden == 0, 0.3 * 1.25, 0.3 / 1.25)
    ens = qp.Ensemble(qp.stats.norm, data={"loc": centre[:, None], "scale": width[:, None]})
    ens.set_ancil({"snr_est": np.tile([5.0, 20.0], n // 2)})
    dist = tmp_path / "dist.hdf5"
    ens.write_to(str(dist))
    truth_path = write_catalog(tmp_path / "truth.hdf5", {"logg": truth, "hidden": hidden})
    report = gate(tmp_path, str(dist), truth_path, group_columns=["snr_est"], group_bins=["values"],
                  report_group_columns=["hidden"], report_group_bins=["values"])
    rep = json.loads((report / "report.json").read_text())
    assert rep["passed"]
    rows = {(r["grouping"], r["group"]): r for r in rep["coverage_by_group"]}
    assert rows[("snr_est", "5")]["judged"] and rows[("snr_est", "20")]["n"] == n // 2
    wide, narrow = rows[("hidden", "0")], rows[("hidden", "1")]
    assert not wide["judged"] and not narrow["judged"]
    for row, factor in ((wide, 1.25), (narrow, 1 / 1.25)):  # exact: 2 Phi(0.9945 factor) - 1
        assert row["coverage68"] == pytest.approx(2 * norm.cdf(norm.ppf(0.84) * factor) - 1, abs=0.031)
    assert not any("hidden" in c["name"] for c in rep["checks"])
    assert any(c["name"] == "coverage68[snr_est=20]" for c in rep["checks"])
    with pytest.raises(Exception, match="'nowhere' is neither in .*truth.hdf5.* nor in the ancil of .*dist.hdf5"):
        gate(tmp_path, str(dist), truth_path, group_columns=["nowhere"], group_bins=["values"])
    with pytest.raises(ConfigError, match="either judged"):
        gate(tmp_path, str(dist), truth_path, group_columns=["hidden"], group_bins=["values"],
             report_group_columns=["hidden"], report_group_bins=["values"])
