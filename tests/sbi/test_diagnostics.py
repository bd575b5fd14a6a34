"""calipers.sbi.diagnostics: sbi's SBC and TARP on calipers' draws.

Three kinds of test: (1) agreement with the hand-written implementation these replaced (frozen
below as ``old_*``) on the same draws; (2) exact analytic cases on the Gaussian-linear task,
whose posterior is known (exact draws give uniform ranks, TARP ATC near 0, contraction 1/2;
the prior as posterior gives contraction 0); (3) the measured reasons two pieces are not sbi's
(the KS test of discrete ranks, the TARP p-value).
"""
import numpy as np
import pytest
import torch
from scipy import stats

from calipers.sbi import (GaussianLinear, posterior_contraction, posterior_draws, sbc, sbc_from_draws, sbc_ranks,
                          simulate, tarp, tarp_from_draws, tarp_references)

POST_VAR = 0.05  # GaussianLinear(prior_var=0.1, noise_var=0.1): theta | x ~ N(x / 2, 0.05 I)


class ExactPosterior:
    """The analytic Gaussian-linear posterior with the interface of an sbi posterior; ``width``
    scales its standard deviation (1 = exact)."""

    def __init__(self, sim: GaussianLinear, width: float = 1.0):
        self.sim, self.width = sim, width

    def sample(self, shape, x, show_progress_bars=False):
        mean, cov = self.sim.true_posterior(x.numpy().ravel().astype(float))
        sd = self.width * np.sqrt(np.diag(cov))
        return torch.as_tensor(mean, dtype=torch.float32) + torch.as_tensor(sd, dtype=torch.float32) * torch.randn(
            *shape, len(mean))


def exact_draws(x, num_posterior_samples, seed, width=1.0):
    """(L, N, d) draws of the exact posterior (scaled by ``width``) for every row of x."""
    rng = np.random.default_rng(seed)
    return 0.5 * x[None] + width * np.sqrt(POST_VAR) * rng.standard_normal((num_posterior_samples,) + x.shape)


# --- the implementation these replaced (calipers before issue 16), frozen for the comparison ---

def old_sbc(post, thetas, xs, num_posterior_samples, seed=0):
    torch.manual_seed(seed)
    ranks = np.empty(np.shape(thetas), dtype=np.int64)
    var = np.empty(np.shape(thetas))
    for i, (t, x) in enumerate(zip(thetas, xs)):
        s = post.sample((num_posterior_samples,), x=torch.as_tensor(np.atleast_2d(x), dtype=torch.float32)).numpy()
        ranks[i] = (s < np.asarray(t)[None, :]).sum(0)
        var[i] = s.var(axis=0, ddof=1)
    ks = [float(stats.kstest((ranks[:, j] + np.random.default_rng(seed + j).random(len(ranks))) /
                             (num_posterior_samples + 1), "uniform").pvalue) for j in range(ranks.shape[1])]
    return ranks, ks, var


def old_tarp_coverage(draws, thetas, references):
    """The old coverage values f (z-scored parameters, given reference points in theta units)."""
    mu, sd = thetas.mean(0), thetas.std(0)
    z, s, r = (thetas - mu) / sd, (draws - mu) / sd, (references - mu) / sd
    return np.mean(np.linalg.norm(s - r[None], axis=2) < np.linalg.norm(z - r, axis=1)[None], axis=0)


# --- (1) agreement on the same draws ---

def test_sbc_agrees_with_the_old_implementation_on_the_same_draws():
    """Same seed, same draws: ranks identical, KS p-values equal to sbi's float32 rounding."""
    sim = GaussianLinear(dim=3)
    theta, x = simulate(sim, 200, seed=5)
    for width in (1.0, 0.7):
        post = ExactPosterior(sim, width)
        ranks, ks, var = old_sbc(post, theta, x, 200, seed=3)
        new = sbc(lambda xo: post, theta, x, 200, seed=3)
        np.testing.assert_array_equal(new.ranks, ranks)
        np.testing.assert_allclose(new.ks_pvals, ks, rtol=1e-6)  # measured: 5e-8
        np.testing.assert_allclose(new.posterior_var, var, rtol=1e-5)  # old: float32 variances
    assert min(ks) < 1e-3  # the 0.7x-too-narrow posterior fails in both


def test_tarp_agrees_with_the_old_implementation_on_the_same_draws():
    """One parameter (where z-scoring and sbi's min-max scaling order distances alike), the same
    reference points and draws: the coverage values are identical, the old ECP evaluated on sbi's
    grid is sbi's ECP, and both KS p-values are equal. L = 199 posterior samples and N // 10 bins
    keep the coverage values k/199 off the grid points, so no value sits on a bin edge."""
    sim = GaussianLinear(dim=1)
    theta, x = simulate(sim, 500, seed=6)
    for width in (1.0, 0.7, 1.5):
        draws = exact_draws(x, 199, seed=1, width=width)
        refs = tarp_references(theta, seed=2)
        new = tarp_from_draws(theta, draws, references=refs)
        f_old = old_tarp_coverage(draws, theta, refs)
        np.testing.assert_allclose(new["f"], f_old, atol=1e-6)  # sbi's coverage values are float32
        ecp_old = [np.mean(f_old < a) for a in new["alpha"][:-1]] + [1.0]
        np.testing.assert_allclose(new["ecp"], ecp_old, atol=1e-6)
        assert new["ks_pvalue"] == pytest.approx(stats.kstest(f_old, "uniform").pvalue, rel=1e-5)


def test_tarp_coverage_values_are_the_ones_sbi_histograms():
    """The KS p-value is of ``f``; its empirical CDF on sbi's grid is sbi's ECP curve (3 parameters)."""
    sim = GaussianLinear(dim=3)
    theta, x = simulate(sim, 400, seed=8)
    t = tarp_from_draws(theta, exact_draws(x, 199, seed=3, width=1.3), seed=4)
    ecdf = [np.mean(np.array(t["f"]) < a) for a in t["alpha"][:-1]] + [1.0]
    np.testing.assert_allclose(t["ecp"], ecdf, atol=1e-6)


# --- (2) exact analytic cases ---

def test_sbc_ranks_of_exact_posterior_draws_are_uniform():
    sim = GaussianLinear(dim=2)
    theta, x = simulate(sim, 1000, seed=11)
    res = sbc_from_draws(theta, exact_draws(x, 100, seed=12), seed=13)
    assert res.ranks.min() >= 0 and res.ranks.max() <= 100 and res.num_posterior_samples == 100
    assert min(res.ks_pvals) > 0.01, res.ks_pvals
    counts = np.stack([np.bincount(r // 10, minlength=11)[:10] for r in res.ranks.T])  # ranks 0..99 in 10 bins
    assert stats.chisquare(counts, axis=1).pvalue.min() > 0.01
    for width in (0.8, 1.25):  # too narrow: U-shaped ranks; too wide: peaked
        assert max(sbc_from_draws(theta, exact_draws(x, 100, seed=12, width=width)).ks_pvals) < 1e-3


def test_sbc_ranks_count_draws_below_the_truth():
    theta = np.array([[0.0, 1.0], [2.0, -1.0]])
    draws = np.array([[[-1, 0], [3, 0]], [[1, 2], [1, -2]], [[-2, 0.5], [5, -3]]], dtype=float)  # (L=3, N=2, d=2)
    np.testing.assert_array_equal(sbc_ranks(theta, draws), [[2, 2], [1, 2]])


def test_tarp_of_the_exact_posterior_is_on_the_diagonal_and_flags_the_wrong_width():
    """Exact draws: ATC within 0.03 of 0 (measured sd of sbi's ATC over 20 repetitions of 200
    tests: 0.010; 500 tests here) and a uniform KS; 1.5x too wide: ATC > 0; 0.7x too narrow: < 0."""
    sim = GaussianLinear(dim=2)
    theta, x = simulate(sim, 500, seed=21)
    exact = tarp_from_draws(theta, exact_draws(x, 200, seed=22), seed=23)
    assert abs(exact["atc"]) < 0.03 and exact["ks_pvalue"] > 0.01, (exact["atc"], exact["ks_pvalue"])
    assert exact["alpha"][0] == pytest.approx(0, abs=0.02) and exact["alpha"][-1] == pytest.approx(1, abs=0.02)
    wide = tarp_from_draws(theta, exact_draws(x, 200, seed=22, width=1.5), seed=23)
    narrow = tarp_from_draws(theta, exact_draws(x, 200, seed=22, width=0.7), seed=23)
    assert wide["atc"] > 0.04 and wide["ks_pvalue"] < 1e-3, (wide["atc"], wide["ks_pvalue"])
    assert narrow["atc"] < -0.02 and narrow["ks_pvalue"] < 1e-3, (narrow["atc"], narrow["ks_pvalue"])


def test_contraction_exact_cases():
    """The prior as posterior: 0; the exact Gaussian-linear posterior: 1 - 0.05 / 0.1 = 1/2; a point mass: 1."""
    sim = GaussianLinear(dim=2)
    theta, x = simulate(sim, 300, seed=31)
    rng = np.random.default_rng(32)
    prior_as_posterior = np.sqrt(0.1) * rng.standard_normal((400, 300, 2))
    # sd of the estimate: a mean of 300 variances of 400 draws, sqrt(2 / 399 / 300) = 0.004; 0.02 is 5 sd
    np.testing.assert_allclose(sbc_from_draws(theta, prior_as_posterior).contraction([0.1, 0.1]), 0, atol=0.02)
    np.testing.assert_allclose(sbc_from_draws(theta, exact_draws(x, 400, seed=33)).contraction([0.1, 0.1]), 0.5,
                               atol=0.02)
    np.testing.assert_allclose(posterior_contraction(np.zeros((5, 2)), [0.1, 0.2]), [1, 1])
    with pytest.raises(ValueError, match="finite and positive"):
        posterior_contraction(np.zeros((5, 2)), [0.1, 0.0])


# --- (3) the measured reasons ---

def test_sbi_rank_ks_on_raw_discrete_ranks_is_miscalibrated_and_the_jitter_fixes_it():
    """Why ranks are jittered before sbi's KS test: exactly uniform ranks (1000 tests, 20 posterior
    samples; 50 repetitions) fail sbi's test on the raw ranks in almost every repetition, and fail
    at about the nominal rate with the jitter. If this starts failing, sbi has changed its test: re-measure."""
    from sbi.diagnostics.sbc import check_uniformity_frequentist

    rng = np.random.default_rng(41)
    raw, ours = [], []
    theta = np.zeros((1000, 1))
    for rep in range(50):
        ranks = rng.integers(0, 21, (1000, 1))  # what exact posterior draws give
        raw.append(float(check_uniformity_frequentist(torch.as_tensor(ranks, dtype=torch.float32), 20)[0]))
        draws = np.where(np.arange(20)[:, None, None] < ranks[None], -1.0, 1.0)  # rank = draws below 0
        ours.append(sbc_from_draws(theta, draws, seed=rep).ks_pvals[0])
    assert sum(p < 0.05 for p in raw) >= 40, raw  # measured: 99% of 1000 repetitions
    assert sum(p < 0.05 for p in ours) <= 7, ours  # expected 2.5; P(>= 8) = 1% under the null


def test_sbi_tarp_pvalue_misses_a_wrong_width_that_ours_flags():
    """Why the TARP p-value is the KS test of the coverage values: sbi's check_tarp p-value (a
    two-sample KS of the ECP curve's points against the grid's) passes a 1.5x-too-wide posterior."""
    from sbi.diagnostics.tarp import check_tarp

    sim = GaussianLinear(dim=2)
    theta, x = simulate(sim, 200, seed=51)
    wide = tarp_from_draws(theta, exact_draws(x, 200, seed=52, width=1.5), seed=53)
    _, sbi_p = check_tarp(torch.tensor(wide["ecp"]), torch.tensor(wide["alpha"]))
    assert sbi_p > 0.05 and wide["ks_pvalue"] < 1e-3, (sbi_p, wide["ks_pvalue"])


# --- interfaces ---

def test_posterior_draws_layout_seed_and_global_state():
    sim = GaussianLinear(dim=2)
    theta, x = simulate(sim, 7, seed=61)
    state = torch.random.get_rng_state()
    a = posterior_draws(lambda xo: ExactPosterior(sim), x, 5, seed=1)
    refs = tarp_references(theta, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.shape == (5, 7, 2) and refs.shape == (7, 2)
    np.testing.assert_array_equal(a, posterior_draws(lambda xo: ExactPosterior(sim), x, 5, seed=1))
    assert np.all((refs >= theta.min(0)) & (refs <= theta.max(0)))
    t = tarp(lambda xo: ExactPosterior(sim), theta, x, 5, seed=1)
    assert set(t) == {"alpha", "ecp", "atc", "ks_pvalue", "f"} and len(t["f"]) == 7


def test_sbc_with_prior_samples_runs_sbis_full_check():
    """sbi's check_sbc: C2ST of the ranks against uniform and of the data-averaged posterior
    against the prior; both near 1/2 for exact draws (100 tests: C2ST noise is about 0.05)."""
    sim = GaussianLinear(dim=1)
    theta, x = simulate(sim, 100, seed=71)
    prior = sim.sample_prior(100, np.random.default_rng(72))
    res = sbc_from_draws(theta, exact_draws(x, 100, seed=73), prior_samples=prior)
    assert len(res.c2st_ranks) == len(res.c2st_dap) == 1
    assert 0.3 < res.c2st_ranks[0] < 0.7 and 0.3 < res.c2st_dap[0] < 0.7
    with pytest.raises(ValueError, match="prior_samples"):
        sbc_from_draws(theta, exact_draws(x, 100, seed=73), prior_samples=prior[:50])


def test_bad_inputs():
    theta = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"\(num_posterior_samples, n_tests, n_params\)"):
        sbc_from_draws(theta, np.zeros((10, 4, 3)))
    draws = np.zeros((10, 4, 2))
    draws[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="first at row 2"):
        tarp_from_draws(theta, draws)
    with pytest.raises(ValueError, match="parameter 1 has one value"):
        tarp_from_draws(np.c_[np.arange(4.0), np.ones(4)], np.zeros((10, 4, 2)))
    with pytest.raises(ValueError, match="num_posterior_samples"):
        posterior_draws(lambda xo: None, np.zeros((2, 2)), 0)
