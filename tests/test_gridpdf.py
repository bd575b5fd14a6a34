"""The one CDF convention (calipers.gridpdf) against exact analytic cases."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from calipers.gridpdf import (cdf_at, crps_values, grid_cdf, grid_quantiles, inverse_cdf, outside_grid, pdf_at,
                              remap_pdfs)

COARSE = np.linspace(0.0, 3.0, 61)
FINE = np.linspace(0.0, 3.0, 601)


def gaussians(zgrid, width, n, seed):
    """n Gaussian p(z) of the given width (scalar or per object) on the grid, and truths drawn from them."""
    rng = np.random.default_rng(seed)
    if callable(width):
        mu = rng.uniform(0.5, 2.5, n)
        sigma = width(mu)
    else:  # keep 5 widths away from the ends, so that the grid holds the whole Gaussian
        mu = rng.uniform(zgrid[0] + 5 * width, zgrid[-1] - 5 * width, n)
        sigma = np.full(n, width)
    z = rng.normal(mu, sigma)
    pdfs = stats.norm.pdf(zgrid[None, :], mu[:, None], sigma[:, None])
    return pdfs, z, mu, sigma


@pytest.mark.parametrize("zgrid", [COARSE, FINE], ids=["61 points", "601 points"])
def test_sharp_gaussian_pit_is_the_analytic_cdf(zgrid):
    step = zgrid[1] - zgrid[0]
    n = 20_000
    pdfs, z, mu, sigma = gaussians(zgrid, 5 * step, n, seed=0)  # width five grid steps
    pit = cdf_at(pdfs, zgrid, z)
    exact = stats.norm.cdf(z, mu, sigma)
    assert np.max(np.abs(pit - exact)) < 1e-3
    assert abs(np.mean(pit - exact)) < 1e-4  # no systematic offset (a cumulative sum reads ~half a step high)
    # the KS distance is what the exact PIT's is, and within the finite-sample null
    ks = stats.kstest(pit, "uniform").statistic
    assert abs(ks - stats.kstest(exact, "uniform").statistic) < 1e-3
    assert ks < 1.63 / np.sqrt(n)  # 99% point of the KS null


def test_pipeline_grid_width_002_1pz():
    """The issue's case: perfect p(z) of width 0.02(1+z) on the pipeline's 601-point grid."""
    n = 20_000
    pdfs, z, mu, sigma = gaussians(FINE, lambda m: 0.02 * (1 + m), n, seed=1)
    pit = cdf_at(pdfs, FINE, z)
    exact = stats.norm.cdf(z, mu, sigma)
    assert np.max(np.abs(pit - exact)) < 2e-3  # was 0.041 with the cumulative-sum CDF
    assert abs(np.mean(pit - exact)) < 2e-4  # was +0.016
    assert stats.kstest(pit, "uniform").statistic < 1.63 / np.sqrt(n)


def test_piecewise_linear_pdf_cdf_is_exact():
    # a triangle on [1, 2] peaking at 1.5 is piecewise linear on this grid: its CDF is known exactly
    zgrid = np.linspace(0.0, 3.0, 13)  # step 0.25: 1, 1.5 and 2 are grid points
    pdf = np.clip(2 - 4 * np.abs(zgrid - 1.5), 0, None)[None, :]
    z = np.array([0.5, 1.0, 1.1, 1.37, 1.5, 1.8, 2.0, 2.9])
    tri = stats.triang(c=0.5, loc=1.0, scale=1.0)
    got = np.array([cdf_at(pdf, zgrid, [v])[0] for v in z])
    np.testing.assert_allclose(got, tri.cdf(z), atol=1e-14)
    np.testing.assert_allclose([pdf_at(pdf, zgrid, [v])[0] for v in z], tri.pdf(z), atol=1e-14)
    q = grid_quantiles(pdf, zgrid, [0.01, 0.1, 0.5, 0.77, 0.99])[0]
    np.testing.assert_allclose(q, tri.ppf([0.01, 0.1, 0.5, 0.77, 0.99]), atol=1e-12)
    # CRPS of the triangle at z = 1.37 against numerical integration of (F - H)^2
    ref = (integrate.quad(lambda x: tri.cdf(x) ** 2, 1.0, 1.37, points=[1.0, 1.37])[0]
           + integrate.quad(lambda x: (1 - tri.cdf(x)) ** 2, 1.37, 2.0, points=[1.5])[0])
    assert crps_values(pdf, zgrid, [1.37])[0] == pytest.approx(ref, abs=1e-12)


def test_truth_outside_the_grid_has_pit_0_or_1_and_density_0():
    zgrid = np.linspace(0.0, 3.0, 301)
    pdf = np.ones((3, len(zgrid)))  # uniform on [0, 3]
    z = np.array([-0.5, 1.2, 3.4])
    np.testing.assert_allclose(cdf_at(pdf, zgrid, z), [0.0, 0.4, 1.0], atol=1e-14)
    np.testing.assert_allclose(pdf_at(pdf / 3, zgrid, z), [0.0, 1 / 3, 0.0], atol=1e-14)
    below, above = outside_grid(z, zgrid)
    assert below.tolist() == [True, False, False] and above.tolist() == [False, False, True]
    # CRPS of U(0, 3): analytic (F - H)^2 integral, including the distance to the grid outside it
    def crps_uniform(v, a=0.0, b=3.0):
        if v < a:
            return (a - v) + (b - a) / 3
        if v > b:
            return (v - b) + (b - a) / 3
        return ((v - a) ** 3 + (b - v) ** 3) / (3 * (b - a) ** 2)
    np.testing.assert_allclose(crps_values(pdf, zgrid, z), [crps_uniform(v) for v in z], rtol=1e-12)


@pytest.mark.parametrize("steps", [3, 5, 15])
def test_crps_of_gaussian_is_analytic(steps):
    pdfs, z, mu, sigma = gaussians(FINE, steps * 0.005, 5000, seed=2)
    u = (z - mu) / sigma
    exact = sigma * (u * (2 * stats.norm.cdf(u) - 1) + 2 * stats.norm.pdf(u) - 1 / np.sqrt(np.pi))
    # the gridded Gaussian is not the Gaussian: its linear interpolation differs by ~(step/width)^2
    got = crps_values(pdfs, FINE, z)
    np.testing.assert_allclose(got, exact, rtol=0, atol=0.1 * sigma[0] / steps ** 2)
    assert np.mean(got) == pytest.approx(np.mean(exact), rel=2e-3 / steps)


def test_gaussian_quantiles():
    pdfs, _, mu, sigma = gaussians(FINE, 0.05, 200, seed=3)
    probs = [0.025, 0.16, 0.5, 0.84, 0.975]
    q = grid_quantiles(pdfs, FINE, probs)
    np.testing.assert_allclose(q, mu[:, None] + sigma[:, None] * stats.norm.ppf(probs), atol=2e-4)


def test_remap_identity_is_exact_and_square_map_is_the_maximum_of_two_draws():
    pdfs, _, mu, sigma = gaussians(FINE, 0.1, 50, seed=4)
    norm = pdfs / np.trapezoid(pdfs, FINE, axis=1)[:, None]
    np.testing.assert_allclose(remap_pdfs(pdfs, FINE, lambda c: c), norm, rtol=1e-12, atol=1e-12)
    # G(u) = u^2 is the CDF of the larger of two draws: density 2 F f
    got = remap_pdfs(pdfs, FINE, lambda c: c ** 2)
    exact = 2 * stats.norm.cdf(FINE, mu[:, None], sigma[:, None]) * norm
    np.testing.assert_allclose(got, exact, atol=2e-3 * exact.max())
    # and its PIT of the old truths is G(PIT): consistent under the same CDF
    z = mu + 0.3 * sigma
    np.testing.assert_allclose(cdf_at(got, FINE, z), cdf_at(pdfs, FINE, z) ** 2, atol=1e-3)


def test_rows_that_do_not_normalise_are_named():
    pdfs = np.ones((3, 5))
    pdfs[1] = 0
    with pytest.raises(ValueError, match="row 1"):
        grid_cdf(pdfs, np.linspace(0, 1, 5))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=4, max_size=30).filter(lambda v: sum(v) > 1e-3),
       st.floats(0.001, 0.999))
def test_quantile_inverts_cdf(values, u):
    zgrid = np.linspace(0.0, 1.0, len(values))
    pdf = np.asarray(values)[None, :]
    q = grid_quantiles(pdf, zgrid, [u])[0, 0]
    assert cdf_at(pdf, zgrid, [q])[0] == pytest.approx(u, abs=1e-9)
    # the CDF is monotone and runs from 0 to 1
    c = cdf_at(np.repeat(pdf, 50, axis=0), zgrid, np.linspace(-0.1, 1.1, 50))
    assert np.all(np.diff(c) >= -1e-12) and c[0] == 0 and c[-1] == 1


def test_inverse_cdf_samples_the_piecewise_linear_pdf():
    # draws from a triangle p(z) (exactly piecewise linear on the grid) follow the triangle law
    zgrid = np.linspace(0.0, 3.0, 13)
    pdf = np.clip(2 - 4 * np.abs(zgrid - 1.5), 0, None)[None, :]
    u = np.random.default_rng(0).random((1, 20_000))
    draws = inverse_cdf(pdf, zgrid, u)[0]
    tri = stats.triang(c=0.5, loc=1.0, scale=1.0)
    np.testing.assert_allclose(tri.cdf(draws), u[0], atol=1e-12)  # exact inversion, not only in law
    assert stats.kstest(draws, tri.cdf).pvalue > 0.01
    with pytest.raises(ValueError, match="one row per p"):
        inverse_cdf(pdf, zgrid, u[0])


def test_remap_far_into_underflowing_tails_stays_finite():
    # a strong widening (probit scale x 20) of a p(z) whose tails underflow to 0 on the grid: the
    # slope of G there is enormous, the density must still be finite, normalised and widened
    pdfs = stats.norm.pdf(FINE[None, :], 1.5, 0.01)
    widen = lambda c: stats.norm.cdf(stats.norm.ppf(np.clip(c, 1e-300, 1 - 1e-16)) / 20) * (c > 0)  # noqa: E731
    out = remap_pdfs(pdfs, FINE, widen)
    assert np.all(np.isfinite(out)) and np.trapezoid(out[0], FINE) == pytest.approx(1.0)
    # a remapped CDF is constant where F is (F underflows to 0 about 38 widths out), so the mass
    # the map would put beyond the input's support on the grid gathers at its edges: still widened
    q = grid_quantiles(out, FINE, [0.16, 0.84])[0]
    assert q[1] - q[0] > 3 * 0.02
