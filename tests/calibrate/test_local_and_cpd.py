"""Local (feature-conditioned) PIT recalibration and the conformal predictive distribution."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from calipers.calibrate import (ConformalPredictiveDistribution, LocalPITConfig, LocalPITRecalibrator,
                                PITRecalibrator)
from calipers.validate.metrics import pit_values

ZGRID = np.linspace(-10, 10, 1001)
FAST = LocalPITConfig(n_components=2, hidden=32, n_members=2, max_epochs=150, patience=10, seed=0)


def toy(n, seed, narrow=0.5, wide=2.0):
    """Truth z ~ N(mu, 1); the model is too narrow where x < 0 and too wide where x >= 0."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    mu = rng.uniform(-2, 2, n)
    z = rng.normal(mu, 1.0)
    width = np.where(x < 0, narrow, wide)
    pdfs = stats.norm.pdf(ZGRID[None, :], mu[:, None], width[:, None])
    return x[:, None], pdfs, z


def ks(pdfs, z):
    return stats.kstest(pit_values(pdfs, ZGRID, z), "uniform").statistic


def test_local_recalibration_fixes_what_global_cannot():
    torch.set_num_threads(1)
    xc, pc, zc = toy(6000, 1)
    xt, pt, zt = toy(6000, 2)
    sides = [xt[:, 0] < 0, xt[:, 0] >= 0]
    glob = PITRecalibrator(50).fit(pit_values(pc, ZGRID, zc)).transform_pdfs(pt, ZGRID)
    loc = LocalPITRecalibrator(FAST).fit(xc, pit_values(pc, ZGRID, zc)).transform_pdfs(pt, ZGRID, xt)
    for side in sides:
        assert ks(pt[side], zt[side]) > 0.15       # the toy is miscalibrated on both sides
        assert ks(glob[side], zt[side]) > 0.08     # one global map cannot fix opposite errors
        assert ks(loc[side], zt[side]) < 0.05, ks(loc[side], zt[side])  # 3000 per side: noise ~0.025
    np.testing.assert_allclose(np.trapezoid(loc, ZGRID, axis=1), 1.0, atol=1e-9)
    assert np.all(loc >= 0)


@pytest.mark.parametrize("width", [0.5, 2.0])
def test_local_recalibration_on_uniformly_miscalibrated_model(width):
    torch.set_num_threads(1)
    xc, pc, zc = toy(3000, 3, width, width)
    xt, pt, zt = toy(2000, 4, width, width)
    loc = LocalPITRecalibrator(FAST).fit(xc, pit_values(pc, ZGRID, zc)).transform_pdfs(pt, ZGRID, xt)
    assert ks(pt, zt) > 0.15
    assert ks(loc, zt) < 0.05


def test_local_cdf_is_monotone_and_pinned():
    xc, pc, zc = toy(600, 5)
    cal = LocalPITRecalibrator(FAST).fit(xc, pit_values(pc, ZGRID, zc))
    u = np.tile(np.linspace(0, 1, 101), (20, 1))
    g = cal.transform_cdf(u, xc[:20])
    assert np.all(np.diff(g, axis=1) > 0)           # smoothing keeps it strictly increasing
    np.testing.assert_allclose(g[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(g[:, -1], 1.0, atol=1e-12)


def test_local_state_round_trip_and_errors(tmp_path):
    xc, pc, zc = toy(600, 6)
    pit = pit_values(pc, ZGRID, zc)
    cal = LocalPITRecalibrator(FAST).fit(xc, pit)
    meta, states = cal.state()
    torch.save(states, tmp_path / "w.pt")
    back = LocalPITRecalibrator.from_state(meta, torch.load(tmp_path / "w.pt", weights_only=True))
    u = np.tile(np.linspace(0, 1, 11), (10, 1))
    np.testing.assert_array_equal(back.transform_cdf(u, xc[:10]), cal.transform_cdf(u, xc[:10]))
    with pytest.raises(ValueError, match="fitted on 1 features, got 2"):
        cal.mixture(np.zeros((3, 2)))
    bad = xc.copy()
    bad[7, 0] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        LocalPITRecalibrator(FAST).fit(bad, pit)
    with pytest.raises(RuntimeError, match="before fit"):
        LocalPITRecalibrator().mixture(xc)


def test_local_fit_is_deterministic():
    xc, pc, zc = toy(800, 7)
    pit = pit_values(pc, ZGRID, zc)
    a = LocalPITRecalibrator(FAST).fit(xc, pit).mixture(xc[:50])
    b = LocalPITRecalibrator(FAST).fit(xc, pit).mixture(xc[:50])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@settings(max_examples=10, deadline=None)
@given(width=st.sampled_from([0.4, 0.7, 1.5, 3.0]), seed=st.integers(0, 10_000))
def test_conformal_predictive_distribution_has_uniform_pit(width, seed):
    rng = np.random.default_rng(seed)
    n_cal, n_test = 500, 2000
    mu = rng.uniform(-2, 2, n_cal + n_test)
    z = rng.normal(mu, 1.0)
    cdf_true = stats.norm.cdf(z, mu, width)         # base model's PIT
    cpd = ConformalPredictiveDistribution(tau=0.5).fit(cdf_true[:n_cal])
    q = cpd.transform_cdf(cdf_true[n_cal:])
    assert stats.kstest(cdf_true[n_cal:], "uniform").statistic > 0.08
    # conformal guarantee: P(Q <= a) is a within the 1/(n_cal+1) resolution, for every a; with a
    # finite calibration set the test KS is bounded by calibration plus test sampling noise
    assert stats.kstest(q, "uniform").statistic < 1.63 * (1 / np.sqrt(n_cal) + 1 / np.sqrt(n_test))


def test_conformal_finite_sample_law_over_repeated_draws():
    """Without ties the test score's rank R among n calibration scores is uniform on {0..n}, so
    Q_tau(z) = (R + tau) / (n + 1) and, over calibration draws, P(Q_0 <= a) = (floor(a(n+1)) + 1)/(n+1)
    and P(Q_1 <= a) = floor(a(n+1))/(n+1): they bracket a, whatever the base model."""
    rng = np.random.default_rng(0)
    n_cal, reps, a = 99, 500, 0.305
    lo_cov, hi_cov, base = [], [], []
    for _ in range(reps):
        pit = rng.random(n_cal + 200) ** 1.7                # a badly miscalibrated base model
        lo_cov.append(np.mean(ConformalPredictiveDistribution(tau=0.0).fit(pit[:n_cal]).transform_cdf(pit[n_cal:]) <= a))
        hi_cov.append(np.mean(ConformalPredictiveDistribution(tau=1.0).fit(pit[:n_cal]).transform_cdf(pit[n_cal:]) <= a))
        base.append(np.mean(pit[n_cal:] <= a))
    se = 3 * np.sqrt(a * (1 - a) / n_cal / reps) + 0.002  # 3 sigma of the mean over repeats
    assert abs(np.mean(base) - a ** (1 / 1.7)) < se and abs(np.mean(base) - a) > 0.1
    assert abs(np.mean(lo_cov) - 31 / 100) < se, np.mean(lo_cov)
    assert abs(np.mean(hi_cov) - 30 / 100) < se, np.mean(hi_cov)


def test_cpd_round_trip_and_density():
    rng = np.random.default_rng(1)
    mu = rng.uniform(-2, 2, 300)
    pdfs = stats.norm.pdf(ZGRID[None, :], mu[:, None], 0.5)
    z = rng.normal(mu, 1.0)
    cpd = ConformalPredictiveDistribution().fit(pit_values(pdfs, ZGRID, z))
    back = ConformalPredictiveDistribution.from_dict(cpd.to_dict())
    u = np.linspace(0, 1, 50)
    np.testing.assert_array_equal(back.transform_cdf(u), cpd.transform_cdf(u))
    new = cpd.transform_pdfs(pdfs[:20], ZGRID)
    np.testing.assert_allclose(np.trapezoid(new, ZGRID, axis=1), 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="row 2"):
        ConformalPredictiveDistribution().fit(np.array([0.1, 0.2, np.nan]))


def test_local_mixture_components_separate_on_a_bimodal_pit():
    """The probit-PIT mixture must use its components: a bimodal probit PIT (a model whose truth
    sits in one of two side lobes) is fitted far better than by any single Gaussian."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(11)
    n = 4000
    v = np.where(rng.random(n) < 0.5, rng.normal(-1.5, 0.3, n), rng.normal(1.5, 0.3, n))
    pit = stats.norm.cdf(v)
    x = rng.normal(size=(n, 1))  # uninformative feature
    cfg = LocalPITConfig(n_components=3, hidden=16, n_members=1, max_epochs=200, patience=20, seed=0)
    cal = LocalPITRecalibrator(cfg).fit(x, pit)
    w, m, sd = cal.mixture(x[:200])
    heavy = w[0] > 0.1
    assert heavy.sum() >= 2, (w[0], m[0])
    assert m[0][heavy].max() - m[0][heavy].min() > 2.0, m[0]
    # the fitted L(u) sends the PIT to (nearly) uniform: its CDF at the lobe centres is ~0.25/0.75
    g = cal.transform_cdf(np.tile(stats.norm.cdf([[-1.5, 0.0, 1.5]]), (1, 1)), x[:1])[0]
    np.testing.assert_allclose(g, [0.25, 0.5, 0.75], atol=0.05)
