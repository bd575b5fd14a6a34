"""Coverage and PIT KS per group, against exact cases."""
from __future__ import annotations

import numpy as np
import pytest

from calipers.validate.grouped import coverage_by_group, edge_bins, grouped_coverage_checks, quantile_bins


def _uniform_grid(n):
    return (np.arange(n) + 0.5) / n  # the most uniform sample there is: KS = 0.5 / n


def test_exact_coverage_and_ks_of_a_uniform_grid_and_a_collapsed_group():
    good = _uniform_grid(1000)  # 680 of the points lie in (0.16, 0.84), 950 in (0.025, 0.975)
    bad = np.full(1000, 0.5)  # an over-wide distribution: every truth dead centre
    pit = np.concatenate([good, bad])
    groups = {"snr": np.repeat([5.0, 20.0], 1000)}
    rows = coverage_by_group(pit, groups)
    assert [r["grouping"] for r in rows] == ["all", "snr", "snr"]
    by = {r["group"]: r for r in rows}
    assert by["5"]["coverage68"] == pytest.approx(0.68) and by["5"]["coverage95"] == pytest.approx(0.95)
    assert by["5"]["pit_ks"] == pytest.approx(0.0005)
    assert by["20"]["coverage68"] == 1.0 and by["20"]["error68"] == pytest.approx(0.32)
    assert by["20"]["pit_ks"] == pytest.approx(0.5)
    assert by["all"]["coverage68"] == pytest.approx((680 + 1000) / 2000)
    checks = grouped_coverage_checks(rows, 0.02, max_pit_ks=0.05)
    failed = {c.name for c in checks if not c.passed}
    assert failed == {"coverage68", "coverage95", "pit_ks", "coverage68[snr=20]", "coverage95[snr=20]", "pit_ks[snr=20]"}


def test_pooled_coverage_can_hide_opposite_errors_that_the_groups_show():
    # over-confident at low S/N (truth often in the tails), under-confident at high S/N: pooled 0.68
    n = 2000
    low = np.concatenate([np.full(n // 2, 0.5), np.full(n // 2, 0.01)])  # coverage68 = 0.5
    high = np.concatenate([np.full(int(0.86 * n), 0.5), np.full(n - int(0.86 * n), 0.01)])  # coverage68 = 0.86
    rows = coverage_by_group(np.concatenate([low, high]), {"snr": np.repeat([3.0, 20.0], n)})
    assert rows[0]["coverage68"] == pytest.approx(0.68)
    assert rows[1]["coverage68"] == pytest.approx(0.5) and rows[2]["coverage68"] == pytest.approx(0.86)
    names = {c.name for c in grouped_coverage_checks(rows, 0.02) if not c.passed}
    assert "coverage68" not in names and {"coverage68[snr=3]", "coverage68[snr=20]"} <= names


def test_small_groups_are_shown_but_not_judged_and_labels_name_the_bins():
    pit = np.concatenate([_uniform_grid(1000), np.full(10, 0.5)])
    keys = np.concatenate([np.zeros(1000, int), np.ones(10, int)])
    rows = coverage_by_group(pit, {"third": keys}, labels={"third": {0: "[-0.25, 0.1]", 1: "[0.1, 0.4]"}})
    assert [r["group"] for r in rows[1:]] == ["[-0.25, 0.1]", "[0.1, 0.4]"]
    checks = grouped_coverage_checks(rows, 0.05, min_group_size=100)
    assert all("0.1, 0.4" not in c.name for c in checks)
    assert rows[2]["n"] == 10


def test_rows_without_a_group_are_left_out_of_the_groups_only():
    pit = _uniform_grid(4)
    rows = coverage_by_group(pit, {"snr": np.array([5.0, np.nan, 5.0, -1.0]), "bin": np.array([0, -1, -1, 0])})
    assert [(r["grouping"], r["group"], r["n"]) for r in rows] == [("all", "all", 4), ("snr", "-1", 1), ("snr", "5", 2),
                                                                   ("bin", "0", 2)]


def test_quantile_and_edge_bins():
    v = np.arange(12.0)
    k, edges = quantile_bins(v, 3)
    assert np.bincount(k).tolist() == [4, 4, 4] and edges[0] == 0 and edges[-1] == 11
    k, _ = quantile_bins(np.array([1.0, np.nan, 2.0]), 2)
    assert k[1] == -1
    assert edge_bins([0.0, 0.5, 1.0, 2.0, np.nan], [0.0, 1.0, 2.0]).tolist() == [0, 0, 1, 1, -1]
    assert edge_bins([-1.0, 3.0], [0.0, 1.0]).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="increasing"):
        edge_bins([1.0], [1.0, 0.0])


def test_bad_pit_is_an_error_naming_the_row():
    with pytest.raises(ValueError, match="first at row 2"):
        coverage_by_group(np.array([0.1, 0.2, 1.5]), {})
    with pytest.raises(ValueError, match="grouping 'snr'"):
        coverage_by_group(np.array([0.1, 0.2]), {"snr": np.ones(3)})
