"""calipers.cosmology at the array level: binning, n(z) realizations, C_ell and covariance."""
import numpy as np
import pytest

from calipers.cosmology import (CosmologyParams, NZAccumulator, SurveySpec, angular_power_spectra, assign_by_mass,
                                assign_by_point, ell_bins, equal_number_edges, knox_covariance, make_cosmology,
                                nz_mean_z, tracer_pairs, truth_nz)
from calipers.cosmology.cl import check_nz

ZGRID = np.linspace(0, 3, 301)


def gaussians(mu, sigma):
    return np.exp(-0.5 * ((ZGRID[None, :] - np.atleast_1d(mu)[:, None]) / np.atleast_1d(sigma)[:, None]) ** 2)


def test_equal_number_edges_and_point_assignment():
    z = np.random.default_rng(0).gamma(3, 0.3, 10_000)
    edges = equal_number_edges(z, 4, 0.0, 3.0)
    bins = assign_by_point(z, edges)
    inside = bins >= 0
    counts = np.bincount(bins[inside], minlength=4)
    assert counts.max() - counts.min() <= 2
    assert np.all(bins[z >= 3.0] == -1)
    with pytest.raises(ValueError, match="strictly increasing"):
        assign_by_point(z, [0.0, 1.0, 1.0])


def test_assign_by_mass_takes_the_bin_with_most_probability():
    pdfs = gaussians([0.2, 0.45, 0.55, 1.5], [0.05, 0.05, 0.05, 0.05])
    pdfs[3] = np.nan
    np.testing.assert_array_equal(assign_by_mass(pdfs, ZGRID, [0.0, 0.5, 1.0]), [0, 0, 1, -1])


@pytest.mark.parametrize("method", ["bootstrap", "sample", "both"])
def test_nz_realizations_scatter_around_the_stack(method):
    rng = np.random.default_rng(1)
    mu = rng.uniform(0.3, 1.2, 3000)
    pdfs = gaussians(mu, 0.05 * (1 + mu))
    bins = (mu > 0.75).astype(int)
    acc = NZAccumulator(ZGRID, 2, n_realizations=60, method=method, seed=3)
    acc.add(pdfs[:1000], bins[:1000], 0)
    acc.add(pdfs[1000:], bins[1000:], 1000)
    fid, real = acc.result()
    np.testing.assert_allclose(np.trapezoid(fid, ZGRID, axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.trapezoid(real, ZGRID, axis=2), 1.0, atol=1e-6)
    m_fid, m_real = nz_mean_z(fid, ZGRID), nz_mean_z(real, ZGRID)
    sd = m_real.std(0)
    # each realization's mean z scatters around the stack's by roughly sigma_z / sqrt(N) per bin
    for b in range(2):
        n_b = (bins == b).sum()
        width = np.sqrt(np.var(mu[bins == b]) + np.mean((0.05 * (1 + mu[bins == b])) ** 2))
        expect = width / np.sqrt(n_b) * (1.0 if method != "both" else np.sqrt(2))
        assert 0.5 * expect < sd[b] < 2.0 * expect, (b, sd[b], expect)
        assert abs(m_real[:, b].mean() - m_fid[b]) < 4 * sd[b] / np.sqrt(60) + 1e-3


def test_nz_chunking_and_rank_split_give_the_same_result():
    rng = np.random.default_rng(2)
    mu = rng.uniform(0.3, 1.2, 900)
    pdfs, bins = gaussians(mu, 0.1), (mu > 0.7).astype(int)
    one = NZAccumulator(ZGRID, 2, 10, "both", 5)
    for s in range(0, 900, 300):
        one.add(pdfs[s:s + 300], bins[s:s + 300], s)
    a, b = NZAccumulator(ZGRID, 2, 10, "both", 5), NZAccumulator(ZGRID, 2, 10, "both", 5)
    a.add(pdfs[:300], bins[:300], 0)
    a.add(pdfs[600:], bins[600:], 600)
    b.add(pdfs[300:600], bins[300:600], 300)
    a.merge(b)
    for x, y in zip(one.result(), a.result()):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_nz_errors():
    acc = NZAccumulator(ZGRID, 3, 4)
    pdfs = gaussians([0.5, 0.6], [0.1, 0.1])
    acc.add(pdfs, np.array([0, 1]), 0)
    with pytest.raises(ValueError, match=r"bin\(s\) \[2\] hold no galaxies"):
        acc.result()
    bad = pdfs.copy()
    bad[1, 10] = -1.0
    with pytest.raises(ValueError, match="negative or not finite .* row 11"):
        acc.add(bad, np.array([0, 1]), 10)
    with pytest.raises(ValueError, match="uniform"):
        NZAccumulator(np.array([0.0, 0.1, 0.3]), 1)


def test_truth_nz_means():
    z = np.array([0.1, 0.2, 0.9, 1.1])
    nz, mean = truth_nz(z, np.array([0, 0, 1, 1]), 2, ZGRID)
    np.testing.assert_allclose(mean, [0.15, 1.0])
    np.testing.assert_allclose(nz_mean_z(nz, ZGRID), [0.15, 1.0], atol=1e-9)


@pytest.fixture(scope="module")
def cosmo():
    return make_cosmology(CosmologyParams())


def test_cl_matches_a_direct_pyccl_call(cosmo):
    import pyccl as ccl

    nz = gaussians([0.5, 1.0], [0.1, 0.15])
    ell, _ = ell_bins(20, 2000, 8)
    pairs = tracer_pairs(2)
    cl = angular_power_spectra(cosmo, ZGRID, nz, ell, pairs, bias=1.7)
    direct = make_cosmology(CosmologyParams())  # a fresh cosmology: nothing shared with ours
    for (a, b), ours in zip(pairs, cl):
        def tracer(t):
            n = nz[t[1]]
            if t[0] == "shear":
                return ccl.WeakLensingTracer(direct, dndz=(ZGRID, n))
            return ccl.NumberCountsTracer(direct, has_rsd=False, dndz=(ZGRID, n), bias=(ZGRID, 1.7 * np.ones_like(ZGRID)))
        np.testing.assert_allclose(ours, ccl.angular_cl(direct, tracer(a), tracer(b), ell), rtol=1e-6)
    assert len(pairs) == 3 + 2 + 4


def test_knox_covariance_diagonal_formula(cosmo):
    import pyccl as ccl

    nz = gaussians([0.8], [0.1])
    ell, dell = ell_bins(50, 500, 4)
    survey = SurveySpec(f_sky=0.1, n_gal_arcmin2=5.0, sigma_e=0.3)
    cov = knox_covariance(cosmo, ZGRID, nz, ell, dell, tracer_pairs(1, ("shear",)), 1.0, [1.0], survey)
    cl = ccl.angular_cl(cosmo, ccl.WeakLensingTracer(cosmo, dndz=(ZGRID, nz[0])),
                        ccl.WeakLensingTracer(cosmo, dndz=(ZGRID, nz[0])), ell)
    noise = 0.3 ** 2 / (5.0 * (180 * 60 / np.pi) ** 2)
    np.testing.assert_allclose(np.diag(cov), 2 * (cl + noise) ** 2 / ((2 * ell + 1) * dell * 0.1), rtol=1e-10)
    assert np.allclose(cov, np.diag(np.diag(cov)))  # one spectrum: diagonal in ell


def test_bad_nz_inputs(cosmo):
    ell, _ = ell_bins(20, 200, 3)
    pairs = tracer_pairs(1, ("shear",))
    neg = gaussians([0.5], [0.1])
    neg[0, 5] = -0.1
    with pytest.raises(ValueError, match="negative values .* bin 0"):
        angular_power_spectra(cosmo, ZGRID, neg, ell, pairs, 1.0)
    with pytest.raises(ValueError, match=r"bin\(s\) \[1\] integrate to zero"):
        check_nz(ZGRID, np.vstack([gaussians([0.5], [0.1]), np.zeros((1, len(ZGRID)))]))
    far = np.linspace(0, 12, 301)
    with pytest.raises(ValueError, match="beyond the cosmology's range"):
        angular_power_spectra(cosmo, far, np.exp(-0.5 * ((far - 1) / 0.1) ** 2)[None], ell, pairs, 1.0)
    with pytest.raises(ValueError, match="probes"):
        tracer_pairs(2, ("shear", "kappa"))
