"""Binary-classifier metrics against exact analytic cases: ECE, NLL, Brier, AUROC and its
bootstrap interval, the ROC curve, thresholds at a false-positive rate, TPR at FPR with
Clopper-Pearson intervals, and purity calibration at a deployment prevalence."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import brentq

from calipers.validate.classification import (
    auroc,
    auroc_interval,
    binary_nll,
    brier_score,
    calibration_errors,
    clopper_pearson,
    logit,
    purity_calibration,
    reliability,
    roc_curve,
    sigmoid,
    threshold_at_fpr,
    tpr_at_fpr,
)


def test_sigmoid_and_logit_are_stable_inverses():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
        assert logit(0.0) == -np.inf and logit(1.0) == np.inf
    x = np.linspace(-30, 15, 46)  # above ~15, 1 - sigmoid(x) has few significant bits left in float64
    np.testing.assert_allclose(logit(sigmoid(x)), x, rtol=1e-8, atol=1e-8)
    assert sigmoid(0.0) == 0.5 and isinstance(sigmoid(0.0), float)
    with pytest.raises(ValueError, match="first at index"):
        logit(np.array([0.2, 1.2]))
    with pytest.raises(ValueError):
        logit(np.nan)


@pytest.mark.parametrize("strategy", ["equal_mass", "equal_width"])
def test_ece_of_perfectly_calibrated_probabilities_is_small(strategy):
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.random(p.size) < p).astype(int)
    r = calibration_errors(p, y, n_bins=15, strategy=strategy)
    assert r["ece"] < 0.01 and r["mce"] >= r["ece"]


@pytest.mark.parametrize("strategy", ["equal_mass", "equal_width"])
def test_ece_of_constant_half_with_frequency_seven_tenths_is_exactly_0_2(strategy):
    p = np.full(1000, 0.5)
    y = np.r_[np.ones(700, int), np.zeros(300, int)]
    r = calibration_errors(p, y, strategy=strategy)
    assert r["ece"] == pytest.approx(0.2, abs=1e-12) and r["mce"] == pytest.approx(0.2, abs=1e-12)
    if strategy == "equal_mass":  # all tied: one bin
        assert r["bin_count"].tolist() == [1000] and r["bin_edges"].tolist() == [0.0, 1.0]


def test_equal_mass_bins_hold_equal_counts_and_never_split_ties():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 1500)
    y = (rng.random(p.size) < p).astype(int)
    r = calibration_errors(p, y, n_bins=15)
    assert r["bin_count"].tolist() == [100] * 15
    assert r["bin_edges"][0] == 0 and r["bin_edges"][-1] == 1 and np.all(np.diff(r["bin_edges"]) > 0)
    # ties: 10 distinct values, 150 copies each; 4 bins asked
    tied = np.repeat(np.linspace(0.05, 0.95, 10), 150)
    r = calibration_errors(tied, np.zeros(tied.size, int), n_bins=4)
    assert r["bin_count"].sum() == 1500 and np.all(r["bin_count"] % 150 == 0)
    which = np.searchsorted(r["bin_edges"], tied, side="right") - 1
    for value in np.unique(tied):
        assert np.unique(which[tied == value]).size == 1


def test_weighted_ece_equals_duplicated_rows():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 300)
    y = (rng.random(p.size) < 0.6).astype(int)
    counts = rng.integers(1, 4, p.size)
    a = calibration_errors(p, y, n_bins=5, strategy="equal_width", weights=counts)
    b = calibration_errors(np.repeat(p, counts), np.repeat(y, counts), n_bins=5, strategy="equal_width")
    assert a["ece"] == pytest.approx(b["ece"], rel=1e-12)


def test_equal_width_hand_case_and_old_reliability_unchanged():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1])
    r = calibration_errors(p, y, n_bins=2, strategy="equal_width")
    # bin 1: confidence 0.1, frequency 0.5; bin 2: 0.9 vs 1.0 -> ECE = (0.4 + 0.1) / 2
    assert r["ece"] == pytest.approx(0.25, abs=1e-12) and r["mce"] == pytest.approx(0.4, abs=1e-12)
    assert reliability(p, y, bins=2)["ece"] == pytest.approx(0.25, abs=1e-12)


def test_calibration_errors_rejects_bad_input():
    with pytest.raises(ValueError, match="row 1"):
        calibration_errors(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_errors(np.array([0.1, 1.1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0 or 1"):
        calibration_errors(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError, match="strategy"):
        calibration_errors(np.array([0.1, 0.2]), np.array([0, 1]), strategy="quantile")


def test_nll_and_brier_analytic_values():
    y = np.array([0, 1, 1, 0])
    assert binary_nll(np.full(4, 0.5), y) == pytest.approx(np.log(2), rel=1e-14)
    assert binary_nll(np.zeros(4), y, from_logits=True) == pytest.approx(np.log(2), rel=1e-14)
    assert brier_score(np.full(4, 0.5), y) == pytest.approx(0.25)
    assert brier_score(y.astype(float), y) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert binary_nll(np.array([1000.0, -1000.0]), np.array([1, 0]), from_logits=True) == 0.0
        assert binary_nll(np.array([1000.0]), np.array([0]), from_logits=True) == pytest.approx(1000.0)
    assert binary_nll(np.array([0.0]), np.array([1])) == np.inf  # not clipped
    p = np.array([0.2, 0.7, 0.9])
    assert binary_nll(p, np.array([0, 1, 1])) == pytest.approx(binary_nll(np.log(p / (1 - p)), np.array([0, 1, 1]),
                                                                          from_logits=True), rel=1e-12)


def test_auroc_hand_cases_with_ties():
    assert auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    assert auroc([2, 1, 0], [1, 1, 0]) == 1.0
    assert auroc([0, 1], [1, 0]) == 0.0
    # pairs: 2>1, 2>0, 1=1 (1/2), 1>0 -> 3.5 / 4
    assert auroc([2, 1, 1, 0], [1, 1, 0, 0]) == 0.875
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 2], [1, 1])


def test_auroc_equals_pairwise_definition_on_integer_scores():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 5, 300).astype(float)
    y = rng.integers(0, 2, 300)
    pos, neg = s[y == 1], s[y == 0]
    pairwise = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(s, y) == pytest.approx(pairwise, abs=1e-14)


def test_auroc_of_two_gaussians_matches_phi_d_over_root_two_and_interval_covers_it():
    rng = np.random.default_rng(4)
    d = 1.0
    pos, neg = rng.normal(d, 1, 3000), rng.normal(0, 1, 3000)
    s, y = np.r_[pos, neg], np.r_[np.ones(3000, int), np.zeros(3000, int)]
    truth = stats.norm.cdf(d / np.sqrt(2))
    assert auroc(s, y) == pytest.approx(truth, abs=0.02)
    lo, hi = auroc_interval(s, y, n_boot=1000, seed=0)
    assert lo < truth < hi and lo < auroc(s, y) < hi
    # the width is that of the Hanley-McNeil standard error (within 25 %)
    a = truth
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + 2999 * (q1 - a * a) + 2999 * (q2 - a * a)) / (3000 * 3000))
    assert (hi - lo) / (2 * 1.96 * se) == pytest.approx(1.0, rel=0.25)


def test_bootstrap_replicates_match_a_naive_bootstrap():
    from calipers.validate.classification import _bootstrap_win_fraction

    rng = np.random.default_rng(5)
    pos, neg = np.round(rng.normal(1, 1, 30), 1), np.round(rng.normal(0, 1, 50), 1)
    fast = _bootstrap_win_fraction(pos, neg, 4000, np.random.default_rng(1))
    naive = []
    for _ in range(4000):
        p, n = rng.choice(pos, pos.size), rng.choice(neg, neg.size)
        naive.append((p[:, None] > n).mean() + 0.5 * (p[:, None] == n).mean())
    assert fast.mean() == pytest.approx(np.mean(naive), abs=0.005)
    assert fast.std() == pytest.approx(np.std(naive), rel=0.06)
    # positives with more distinct values than negatives take the mirrored path; same answer
    s, y = np.r_[pos, neg], np.r_[np.ones(30, int), np.zeros(50, int)]
    lo, hi = auroc_interval(s, y, n_boot=2000)
    lo2, hi2 = auroc_interval(-s, 1 - y, n_boot=2000)
    assert lo == pytest.approx(lo2, abs=0.02) and hi == pytest.approx(hi2, abs=0.02)


def test_auroc_interval_is_fast_for_100k_negatives_and_1000_replicates():
    rng = np.random.default_rng(6)
    s = np.r_[rng.normal(2, 1, 1000), rng.normal(0, 1, 100_000)]
    y = np.r_[np.ones(1000, int), np.zeros(100_000, int)]
    start = time.perf_counter()
    lo, hi = auroc_interval(s, y, n_boot=1000)
    assert time.perf_counter() - start < 10.0
    assert lo < auroc(s, y) < hi


def test_roc_curve_hand_case_and_area_equals_auroc():
    fpr, tpr, thr = roc_curve([3, 2, 2, 1, 0], [1, 1, 0, 0, 1])
    assert thr.tolist() == [3, 2, 1, 0, -np.inf]
    assert fpr.tolist() == [0, 0, 0.5, 1.0, 1.0]
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1.0])
    rng = np.random.default_rng(7)
    s = rng.integers(0, 20, 500).astype(float)
    y = rng.integers(0, 2, 500)
    fpr, tpr, _ = roc_curve(s, y)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(s, y), abs=1e-12)


def test_threshold_at_fpr_on_integer_scores():
    neg = np.arange(1, 1001, dtype=float)  # 1 .. 1000
    assert threshold_at_fpr(neg, 0.01) == 990.0  # 991..1000 above: 10 / 1000
    assert threshold_at_fpr(neg, 0.0105) == 990.0
    assert threshold_at_fpr(neg, 1e-3) == 999.0  # exactly 1 / n resolves
    tied = np.r_[np.zeros(5), np.ones(5)]
    assert threshold_at_fpr(tied, 0.3) == 1.0  # none above 1; at t < 1 five are above
    assert threshold_at_fpr(tied, 0.5) == 0.0  # five above 0: exactly 0.5
    with pytest.raises(ValueError, match="needs at least 100 negatives"):
        threshold_at_fpr(np.arange(99.0), 0.01)
    assert threshold_at_fpr(np.arange(100.0), 0.01) == 98.0
    with pytest.raises(ValueError, match="fpr must be in"):
        threshold_at_fpr(neg, 0.0)
    with pytest.raises(ValueError, match="row 3"):
        threshold_at_fpr(np.r_[neg[:3], np.nan, neg[3:]], 0.01)


def _cp_from_definition(k, n, cl):
    """Clopper-Pearson bounds solved from binomial tail probabilities (not the Beta form)."""
    alpha = 1 - cl
    lo = 0.0 if k == 0 else brentq(lambda p: stats.binom.sf(k - 1, n, p) - alpha / 2, 1e-15, 1 - 1e-15, xtol=1e-14)
    hi = 1.0 if k == n else brentq(lambda p: stats.binom.cdf(k, n, p) - alpha / 2, 1e-15, 1 - 1e-15, xtol=1e-14)
    return lo, hi


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 1000), (997, 1000), (0, 1)])
def test_clopper_pearson_matches_its_definition(k, n):
    lo, hi = clopper_pearson(k, n, 0.95)
    dlo, dhi = _cp_from_definition(k, n, 0.95)
    assert lo == pytest.approx(dlo, abs=1e-10) and hi == pytest.approx(dhi, abs=1e-10)
    if k > 0:
        assert lo == pytest.approx(stats.beta.ppf(0.025, k, n - k + 1), rel=1e-12)
    if k == 0:
        assert lo == 0.0
    if k == n:
        assert hi == 1.0
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def test_clopper_pearson_coverage_is_at_least_nominal():
    # exact: sum the binomial pmf over the k whose interval holds p
    n = 40
    k = np.arange(n + 1)
    lo, hi = clopper_pearson(k, np.full(n + 1, n), 0.9)
    for p in np.linspace(0.005, 0.995, 60):
        covered = (lo <= p) & (p <= hi)
        assert stats.binom.pmf(k[covered], n, p).sum() >= 0.9 - 1e-12
    # and by simulation
    rng = np.random.default_rng(8)
    for p in (0.01, 0.2, 0.5):
        draws = rng.binomial(25, p, 20_000)
        dlo, dhi = clopper_pearson(draws, np.full(draws.size, 25), 0.95)
        assert np.mean((dlo <= p) & (p <= dhi)) >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / 20_000)


def test_tpr_at_fpr_counts_intervals_and_insufficient_negatives():
    neg = np.arange(5000, dtype=float)  # 0 .. 4999
    pos = np.array([4999.5, 4990.5, 4960.5, 100.0])
    s = np.r_[pos, neg]
    y = np.r_[np.ones(4, int), np.zeros(5000, int)]
    rows = tpr_at_fpr(s, y, fprs=(1e-2, 1e-3, 1e-4))
    r = rows[0]
    assert r["status"] == "ok" and r["threshold"] == 4949.0
    assert (r["k_neg"], r["k_pos"], r["n_neg"], r["n_pos"]) == (50, 3, 5000, 4)
    assert r["fpr"] == 0.01 and r["tpr"] == 0.75
    assert (r["tpr_lo"], r["tpr_hi"]) == pytest.approx(_cp_from_definition(3, 4, 0.95), abs=1e-10)
    assert (r["fpr_lo"], r["fpr_hi"]) == pytest.approx(_cp_from_definition(50, 5000, 0.95), abs=1e-10)
    r = rows[1]  # 5 negatives above 4994
    assert r["threshold"] == 4994.0 and r["k_pos"] == 1 and r["k_neg"] == 5
    r = rows[2]
    assert r["status"] == "insufficient negatives" and r["negatives_needed"] == 10_000
    assert all(np.isnan(r[key]) for key in ("threshold", "fpr", "fpr_lo", "fpr_hi", "tpr", "tpr_lo", "tpr_hi"))
    assert r["k_pos"] is None and r["k_neg"] is None


def _gaussian_test_set(rng, prevalence, d=3.0, n_pos=5000, n_neg=300_000):
    x = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    posterior_logit = lambda pi: np.log(pi / (1 - pi)) + d * x - d * d / 2  # noqa: E731
    return x, y, posterior_logit


def test_purity_calibration_of_the_true_posterior_is_consistent():
    rng = np.random.default_rng(9)
    pi = 1e-3
    _, y, post = _gaussian_test_set(rng, pi)
    result = purity_calibration(sigmoid(post(pi)), y, pi, n_bins=10)
    bins = result["bins"]
    assert len(bins) == 10
    assert result["fraction_inside"] >= 0.7
    k_pos = [b["k_pos"] for b in bins]
    assert max(k_pos) - min(k_pos) <= 1  # equal counts of positives
    for b in bins:
        assert b["lo"] <= b["observed"] <= b["hi"]
        assert b["edge_lo"] < b["predicted"] <= b["edge_hi"]
        assert abs(b["observed"] - b["predicted"]) <= 1.5 * (b["hi"] - b["lo"])
    assert bins[0]["edge_lo"] == result["region_threshold"]
    # the predicted purities span the low-purity to high-purity range at 1:1000
    assert bins[0]["predicted"] < 0.05 and bins[-1]["predicted"] > 0.8


def test_purity_calibration_flags_probabilities_left_at_the_test_prevalence():
    rng = np.random.default_rng(10)
    _, y, post = _gaussian_test_set(rng, 1e-3)
    wrong = sigmoid(post(5000 / 305_000))  # calibrated at the test sample's own prevalence, not shifted
    result = purity_calibration(wrong, y, 1e-3, n_bins=10)
    assert result["fraction_inside"] <= 0.2


def test_purity_calibration_one_bin_over_everything_is_the_prevalence():
    rng = np.random.default_rng(11)
    p = rng.uniform(0, 1, 400)
    y = np.r_[np.ones(100, int), np.zeros(300, int)]
    pi = 0.01
    r = purity_calibration(p, y, pi, n_bins=1, min_score_quantile=0.0, n_draws=1000)
    b = r["bins"][0]
    assert (b["k_pos"], b["k_neg"]) == (100, 300)
    assert b["observed"] == pytest.approx(pi, rel=1e-12)  # a = b = 1
    assert b["predicted"] == pytest.approx(pi * p[:100].mean() + (1 - pi) * p[100:].mean(), rel=1e-12)
    again = purity_calibration(p, y, pi, n_bins=1, min_score_quantile=0.0, n_draws=1000)
    assert again == r  # seeded
    with pytest.raises(ValueError, match="prevalence"):
        purity_calibration(p, y, 0.0)
    with pytest.raises(ValueError, match="both classes"):
        purity_calibration(p, np.ones(400, int), 0.01)
