"""Importance-weighted calibrators: exact reductions to the unweighted ones, exact small cases, and
coverage targeted on a shifted population.

Covariate-shift toy: labelled x ~ N(0, 1), target x ~ N(1, 1) (true ratio exp(x - 1/2)); the truth
z = x + N(0, (0.2 exp(0.6 x))^2) is noisier where the target lives, so anything calibrated on the
labelled population is over-confident on the target.
"""
import numpy as np
import pytest
import torch
from scipy import stats

from calipers.calibrate import (ConformalPredictiveDistribution, DensityRatio, LocalPITConfig, LocalPITRecalibrator,
                                PITRecalibrator, SplitConformalInterval, conformal_quantile, weighted_quantile)

ALPHA = 0.1


def true_ratio(x):
    return np.exp(x - 0.5)


def draw(n, shift, rng):
    x = rng.normal(shift, 1.0, n)
    return x, x + rng.normal(0.0, 0.2 * np.exp(0.6 * x))


# ---------------------------------------------------------------- PIT recalibration
def test_weighted_pit_with_integer_weights_is_the_fit_on_repeated_rows():
    rng = np.random.default_rng(0)
    pit = rng.random(400) ** 1.5
    pit[:10] = 0.0  # ties, as clipped PIT values have
    counts = rng.integers(0, 5, len(pit))
    for n_knots in (7, 50, 100):
        weighted = PITRecalibrator(n_knots).fit(pit, weights=counts)
        repeated = PITRecalibrator(n_knots).fit(np.repeat(pit, counts))
        np.testing.assert_allclose(weighted.knots_pit, repeated.knots_pit, rtol=0, atol=1e-13)
        np.testing.assert_array_equal(weighted.knots_g, repeated.knots_g)
        u = np.linspace(0, 1, 201)
        np.testing.assert_allclose(weighted.transform_cdf(u), repeated.transform_cdf(u), rtol=0, atol=1e-12)
    np.testing.assert_allclose(PITRecalibrator(30).fit(pit, weights=np.ones(len(pit))).knots_pit,
                               PITRecalibrator(30).fit(pit).knots_pit, rtol=0, atol=1e-13)


def test_weighted_quantile_exact_cases():
    # values 0, 1, 2 laid end to end with widths 1, 2, 1 on [0, 4]: h = 3p, window [h, h + 1]
    x, w = np.array([2.0, 0.0, 1.0]), np.array([1.0, 1.0, 2.0])
    np.testing.assert_allclose(weighted_quantile(x, w, [0.0, 1 / 3, 0.5, 2 / 3, 1.0]), [0, 1, 1, 1, 2])
    np.testing.assert_allclose(weighted_quantile(x, w, [1 / 6]), [0.5])   # window [0.5, 1.5]: half 0, half 1
    np.testing.assert_allclose(weighted_quantile(x, 0.5 * w, [0.5]), [1.0])  # total 2: window [0.5, 1.5]
    # monotone in p for real weights
    rng = np.random.default_rng(1)
    q = weighted_quantile(np.round(rng.random(300), 2), rng.exponential(size=300) * 3, np.linspace(0, 1, 501))
    assert np.all(np.diff(q) >= 0)
    with pytest.raises(ValueError, match="scale them to mean 1"):
        PITRecalibrator().fit(rng.random(50), weights=np.full(50, 1 / 50))
    with pytest.raises(ValueError, match="not finite in 1 row.*row 4"):
        PITRecalibrator().fit(rng.random(50), weights=np.r_[np.ones(4), np.nan, np.ones(45)])


def test_weighted_pit_recalibration_is_uniform_on_the_target():
    """G from labelled calibration rows weighted by the true ratio makes the target PIT uniform;
    the unweighted G, fitted to the labelled population, does not."""
    rng = np.random.default_rng(2)
    xc, zc = draw(6000, 0.0, rng)
    xt, zt = draw(6000, 1.0, rng)
    pit_c, pit_t = stats.norm.cdf(zc, xc, 0.3), stats.norm.cdf(zt, xt, 0.3)  # the model's width 0.3
    plain = PITRecalibrator(50).fit(pit_c)
    weighted = PITRecalibrator(50).fit(pit_c, weights=true_ratio(xc) / true_ratio(xc).mean())
    ks_plain = stats.kstest(plain.transform_cdf(pit_t), "uniform").statistic
    ks_weighted = stats.kstest(weighted.transform_cdf(pit_t), "uniform").statistic
    assert ks_plain > 0.06, ks_plain
    assert ks_weighted < 0.035, ks_weighted  # KS noise of 6000 test and ~2200 effective calibration rows
    back = PITRecalibrator.from_dict(weighted.to_dict())
    np.testing.assert_array_equal(back.transform_cdf(pit_t), weighted.transform_cdf(pit_t))


# ---------------------------------------------------------------- split conformal
def test_weighted_conformal_quantile_exact_small_cases():
    s, w = np.array([4.0, 1.0, 3.0, 2.0]), np.array([3.0, 1.0, 1.0, 1.0])
    # sorted scores 1, 2, 3, 4 with cumulative weight 1, 2, 3, 6
    assert conformal_quantile(s, 0.2, w, 2.0) == np.inf   # needs 0.8 * 8 = 6.4 > 6: the test point's +inf
    assert conformal_quantile(s, 0.3, w, 2.0) == 4.0      # 0.7 * 8 = 5.6 <= 6
    assert conformal_quantile(s, 0.6, w, 1.0) == 3.0      # 0.4 * 7 = 2.8 <= 3
    assert conformal_quantile(s, 0.75, w, 1.0) == 2.0     # 0.25 * 7 = 1.75 <= 2
    np.testing.assert_array_equal(conformal_quantile(s, 0.3, w, np.array([1.0, 2.0, 5.0])), [4.0, 4.0, np.inf])
    assert conformal_quantile(s, 0.6, 10 * w, 10.0) == 3.0  # scale-free
    # no test weight: the expected target weight sum w^2 / sum w = 12 / 6 = 2
    assert conformal_quantile(s, 0.2, w) == conformal_quantile(s, 0.2, w, 2.0)
    with pytest.raises(ValueError, match="needs calibration weights"):
        conformal_quantile(s, 0.2, test_weight=1.0)
    with pytest.raises(ValueError, match="negative in 1 row.*row 1"):
        conformal_quantile(s, 0.2, np.array([1.0, -1.0, 1.0, 1.0]))


@pytest.mark.parametrize("n", [9, 99, 100, 257])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.32, 0.5])
def test_equal_weights_give_exactly_the_unweighted_result(n, alpha):
    rng = np.random.default_rng(n)
    s = np.round(rng.normal(size=n), 1)  # with ties
    for c in (1.0, 0.1, 3.7, 1e-5):
        w = np.full(n, c)
        assert conformal_quantile(s, alpha, w) == conformal_quantile(s, alpha)
        assert conformal_quantile(s, alpha, w, c) == conformal_quantile(s, alpha)
        np.testing.assert_array_equal(conformal_quantile(s, alpha, w, np.full(5, c)),
                                      np.full(5, conformal_quantile(s, alpha)))
    lo, hi = rng.normal(size=n), rng.normal(size=n) + 2
    z = rng.normal(size=n) + 1
    plain = SplitConformalInterval(alpha).fit(lo, hi, z)
    weighted = SplitConformalInterval(alpha).fit(lo, hi, z, weights=np.full(n, 0.3))
    assert weighted.margin == plain.margin
    for a, b in zip(weighted.predict(lo, hi, test_weights=np.full(n, 0.3)), plain.predict(lo, hi)):
        np.testing.assert_array_equal(a, b)


def test_weighted_split_conformal_covers_the_target():
    """Repeated calibration/test draws (200): unweighted split conformal, calibrated on the
    labelled population, undercovers the target badly (~0.73 for 0.9); weighted with the true
    ratio and each test object's own weight reaches 1 - alpha within 3 standard errors (it is
    conservative by the +inf mass of heavy test points: ~0.91); with the mean-target-weight
    approximation and with a ratio estimated from unlabelled photometry it does too."""
    rng = np.random.default_rng(3)
    estimated = DensityRatio(seed=0).fit(rng.normal(0, 1, 4000), rng.normal(1, 1, 4000))
    reps, n_cal, n_test = 200, 500, 1000
    cover = {"plain": [], "true": [], "typical": [], "estimated": []}
    for _ in range(reps):
        xc, zc = draw(n_cal, 0.0, rng)
        xt, zt = draw(n_test, 1.0, rng)
        lo_c = hi_c = xc
        lo_t = hi_t = xt
        fits = {"plain": (SplitConformalInterval(ALPHA).fit(lo_c, hi_c, zc), None),
                "true": (SplitConformalInterval(ALPHA).fit(lo_c, hi_c, zc, true_ratio(xc)), true_ratio(xt)),
                "typical": (SplitConformalInterval(ALPHA).fit(lo_c, hi_c, zc, true_ratio(xc)), None),
                "estimated": (SplitConformalInterval(ALPHA).fit(lo_c, hi_c, zc, estimated.weights(xc)),
                              estimated.weights(xt))}
        for name, (model, test_weights) in fits.items():
            a, b = model.predict(lo_t, hi_t, test_weights=test_weights)
            cover[name].append(np.mean((zt >= a) & (zt <= b)))
    mean = {k: np.mean(v) for k, v in cover.items()}
    se = {k: np.std(v) / np.sqrt(reps) for k, v in cover.items()}
    assert mean["plain"] < 1 - ALPHA - 0.1, mean
    for name in ("true", "typical", "estimated"):
        assert 1 - ALPHA - 3 * se[name] <= mean[name] <= 1 - ALPHA + 0.03, (name, mean[name], se[name])


def test_predict_checks_test_weights():
    rng = np.random.default_rng(4)
    lo = rng.normal(size=50)
    z = lo + rng.normal(size=50)
    with pytest.raises(ValueError, match="need a weighted fit"):
        SplitConformalInterval().fit(lo, lo, z).predict(lo, lo, test_weights=np.ones(50))
    model = SplitConformalInterval().fit(lo, lo, z, weights=np.ones(50))
    with pytest.raises(ValueError, match="shape"):
        model.predict(lo, lo, test_weights=np.ones(3))
    with pytest.raises(ValueError, match="row 2"):
        model.predict(lo[:3], lo[:3], test_weights=np.array([1.0, 1.0, np.nan]))


# ---------------------------------------------------------------- conformal predictive distribution
def test_weighted_cpd_equal_weights_bit_for_bit():
    rng = np.random.default_rng(5)
    pit = np.clip(rng.normal(0.5, 0.4, 300), 0, 1)  # ties at 0 and 1
    cdf = np.clip(rng.normal(0.5, 0.4, (20, 40)), 0, 1)
    cdf[0, :5] = pit[:5]  # exact ties with calibration scores
    for tau in (0.0, 0.5, 1.0):
        plain = ConformalPredictiveDistribution(tau).fit(pit)
        for c in (1.0, 0.37):
            weighted = ConformalPredictiveDistribution(tau).fit(pit, weights=np.full(len(pit), c))
            np.testing.assert_array_equal(weighted.transform_cdf(cdf), plain.transform_cdf(cdf))
            np.testing.assert_array_equal(weighted.transform_cdf(cdf, np.full(20, c)), plain.transform_cdf(cdf))


def test_weighted_cpd_exact_small_case():
    # scores 0.1, 0.2, 0.3 with weights 1, 2, 3; test weight 2; Q(u) = (W_below + tau (W_ties + 2)) / 8
    cpd = ConformalPredictiveDistribution(tau=0.5).fit(np.array([0.3, 0.1, 0.2]), weights=np.array([3.0, 1.0, 2.0]))
    np.testing.assert_allclose(cpd.transform_cdf(np.array([0.05, 0.15, 0.2, 0.5]), 2.0),
                               [1 / 8, 2 / 8, (1 + 0.5 * 4) / 8, (6 + 1) / 8])
    np.testing.assert_allclose(cpd.transform_cdf(np.array([[0.15], [0.15]]), np.array([2.0, 0.0])),
                               [[2 / 8], [1 / 6]])
    with pytest.raises(ValueError, match="do not match"):
        cpd.transform_cdf(np.zeros((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match="need a weighted fit"):
        ConformalPredictiveDistribution().fit(np.array([0.1, 0.2])).transform_cdf(0.5, 1.0)


def test_weighted_cpd_has_uniform_pit_on_the_target():
    """P(Q(z_true) <= a) = a under weighted exchangeability (true ratio, each test object's weight);
    the unweighted CPD, calibrated on the labelled population, misses by ~0.1 at a = 0.1 and 0.9."""
    rng = np.random.default_rng(6)
    levels = np.array([0.1, 0.25, 0.5, 0.75, 0.9])
    reps, n_cal, n_test = 200, 500, 1000
    plain, weighted = [], []
    for _ in range(reps):
        xc, zc = draw(n_cal, 0.0, rng)
        xt, zt = draw(n_test, 1.0, rng)
        f_c, f_t = stats.norm.cdf(zc, xc, 0.3), stats.norm.cdf(zt, xt, 0.3)
        q0 = ConformalPredictiveDistribution().fit(f_c).transform_cdf(f_t)
        q1 = ConformalPredictiveDistribution().fit(f_c, weights=true_ratio(xc)).transform_cdf(f_t, true_ratio(xt))
        plain.append(np.mean(q0[:, None] <= levels, axis=0))
        weighted.append(np.mean(q1[:, None] <= levels, axis=0))
    se = np.std(weighted, axis=0) / np.sqrt(reps)
    assert np.all(np.abs(np.mean(weighted, axis=0) - levels) < 3.5 * se + 1 / (n_cal + 1)), (np.mean(weighted, 0), se)
    assert np.abs(np.mean(plain, axis=0) - levels)[[0, -1]].min() > 0.08


def test_weighted_cpd_round_trip_and_unweighted_format_unchanged():
    rng = np.random.default_rng(7)
    pit, w = rng.random(100), rng.exponential(size=100)
    cpd = ConformalPredictiveDistribution().fit(pit, weights=w)
    back = ConformalPredictiveDistribution.from_dict(cpd.to_dict())
    u = np.linspace(0, 1, 33)
    np.testing.assert_array_equal(back.transform_cdf(u, 1.3), cpd.transform_cdf(u, 1.3))
    assert set(ConformalPredictiveDistribution().fit(pit).to_dict()) == {"kind", "tau", "scores"}
    zgrid = np.linspace(-3, 3, 301)
    pdfs = stats.norm.pdf(zgrid[None, :], rng.normal(size=(4, 1)), 0.5)
    dens = cpd.transform_pdfs(pdfs, zgrid, test_weights=np.array([0.5, 1.0, 2.0, 4.0]))
    np.testing.assert_allclose(np.trapezoid(dens, zgrid, axis=1), 1.0, atol=1e-9)


# ---------------------------------------------------------------- local PIT recalibration
def test_weighted_local_fit_runs_and_checks_its_weights():
    torch.set_num_threads(1)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 1))
    pit = rng.random(300)
    cfg = LocalPITConfig(n_components=2, hidden=8, n_members=1, max_epochs=5, patience=2, global_knots=10, seed=0)
    cal = LocalPITRecalibrator(cfg).fit(x, pit, weights=true_ratio(x[:, 0]))
    g = cal.transform_cdf(np.tile(np.linspace(0, 1, 11), (3, 1)), x[:3])
    assert np.all(np.diff(g, axis=1) >= 0)
    with pytest.raises(ValueError, match="row 5"):
        LocalPITRecalibrator(cfg).fit(x, pit, weights=np.r_[np.ones(5), -1.0, np.ones(294)])
