"""Support flags: exact entropies of piecewise-linear p(z), the ensemble's mutual information,
and the kNN support score with its conformal out-of-support threshold."""
import json
import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calipers.validate.support import (
    KNNSupport,
    ensemble_entropies,
    grid_entropy,
    member_grid_pdfs,
    member_mutual_information,
)


# ---------------------------------------------------------------- exact entropies

@pytest.mark.parametrize("lo, hi, n_grid", [(0.0, 1.0, 2), (0.5, 2.0, 7), (-3.0, 4.5, 301), (0.0, 1e-3, 11)])
def test_uniform_pdf_entropy_is_log_width(lo, hi, n_grid):
    zgrid = np.linspace(lo, hi, n_grid)
    assert grid_entropy(np.full(n_grid, 7.0), zgrid)[()] == pytest.approx(math.log(hi - lo), abs=1e-14)


def test_uniform_on_a_non_uniform_grid():
    zgrid = np.array([0.0, 0.1, 0.15, 0.9, 2.5])
    assert grid_entropy(np.ones(5), zgrid)[()] == pytest.approx(math.log(2.5), abs=1e-14)


@pytest.mark.parametrize("zgrid, apex", [(np.array([0.0, 0.3, 1.0]), 1), (np.array([2.0, 2.5, 3.0]), 1),
                                         (np.linspace(0.0, 2.0, 201), 30)])
def test_triangle_pdf_entropy(zgrid, apex):
    """A triangle of base w (any apex) has entropy 1/2 + log(w / 2): with apex height H = 2 / w,
    each side gives int p log p = L (H/2)(log H - 1/2) over its length L, so the total is
    -(w H / 2)(log H - 1/2) = 1/2 - log H = 1/2 + log(w / 2)."""
    lo, top, hi = zgrid[0], zgrid[apex], zgrid[-1]
    pdf = np.where(zgrid <= top, (zgrid - lo) / (top - lo), (hi - zgrid) / (hi - top))
    assert grid_entropy(pdf, zgrid)[()] == pytest.approx(0.5 + math.log((hi - lo) / 2), abs=1e-10)


def test_gaussian_entropy_converges_at_second_order():
    """A Gaussian sampled on a grid of step h: the piecewise-linear pdf's entropy is
    0.5 log(2 pi e sigma^2) up to O((h / sigma)^2) (about (h/sigma)^2 / 12)."""
    sigma = 0.1
    exact = 0.5 * math.log(2 * math.pi * math.e * sigma**2)
    errors = []
    for n_grid in (401, 801, 1601):
        zgrid = np.linspace(-1.0, 1.0, n_grid)
        errors.append(grid_entropy(np.exp(-0.5 * (zgrid / sigma) ** 2), zgrid)[()] - exact)
    assert abs(errors[-1]) < 2e-5
    assert errors[0] / errors[1] == pytest.approx(4, rel=0.01) and errors[1] / errors[2] == pytest.approx(4, rel=0.01)


@pytest.mark.parametrize("lo, hi", [(1.0, 1.0), (1.0, 1.0 + 1e-7), (1.0, 1.0198), (1.0, 1.0204), (1.0, 1.6),
                                    (0.2, 7.0), (0.0, 3.0), (5.0, 0.0)])
def test_one_segment_against_quadrature(lo, hi):
    """Both branches of the closed form (series below r = 1e-2, log form above) against
    30-digit quadrature (mpmath) of -int p log p on [0, 1], the density normalised first."""
    with mpmath.workdps(30):
        a, b = mpmath.mpf(lo), mpmath.mpf(hi)
        mid = (a + b) / 2

        def plogp(t):
            p = (a + (b - a) * t) / mid
            return p * mpmath.log(p) if p > 0 else mpmath.mpf(0)

        expected = float(-mpmath.quad(plogp, [0, 1]))
    assert grid_entropy(np.array([lo, hi]), np.array([0.0, 1.0]))[()] == pytest.approx(expected, abs=2e-14)


positive = st.floats(0.0, 10.0, allow_nan=False)


@settings(max_examples=60)
@given(st.lists(positive, min_size=2, max_size=12).filter(lambda v: sum(v) > 1e-3),
       st.floats(0.01, 100.0), st.floats(-5.0, 5.0))
def test_entropy_shifts_by_log_scale_and_ignores_mirroring(values, scale, shift):
    """H[p(z / c) / c] = H[p] + log c; a shift or a mirror image of the pdf leaves H unchanged;
    no pdf on [a, b] beats the uniform, log(b - a)."""
    pdf = np.array(values)
    zgrid = np.cumsum(np.r_[0.0, 0.1 + np.arange(len(pdf) - 1) % 3 * 0.2])
    h = grid_entropy(pdf, zgrid)[()]
    assert grid_entropy(pdf, scale * zgrid + shift)[()] == pytest.approx(h + math.log(scale), abs=1e-12)
    assert grid_entropy(pdf[::-1], -zgrid[::-1])[()] == pytest.approx(h, abs=1e-12)
    assert h <= math.log(zgrid[-1] - zgrid[0]) + 1e-12


def test_entropy_of_many_rows_and_bad_rows():
    zgrid = np.linspace(0, 1, 5)
    rows = np.vstack([np.ones(5), [0, 1, 2, 1, 0]])
    assert grid_entropy(rows, zgrid).shape == (2,)
    bad = np.ones((4, 5))
    bad[3, 2] = -0.1
    with pytest.raises(ValueError, match="negative densities.*row 3"):
        grid_entropy(bad, zgrid)
    bad[3, 2], bad[1, 0] = 1.0, np.nan
    with pytest.raises(ValueError, match="non-finite.*row 1"):
        grid_entropy(bad, zgrid)
    bad[1] = 0.0
    with pytest.raises(ValueError, match="no mass.*row 1"):
        grid_entropy(bad, zgrid)
    with pytest.raises(ValueError, match="5 grid values per row, zgrid has 4"):
        grid_entropy(np.ones(5), zgrid[:4])


# ---------------------------------------------------------------- mutual information (BALD)

def test_identical_members_have_exactly_zero_mutual_information():
    rng = np.random.default_rng(3)
    zgrid = np.linspace(0, 3, 61)
    pdfs = rng.random((7, 61))
    for n_members in (2, 3, 5):
        ent = member_mutual_information(np.broadcast_to(pdfs, (n_members, 7, 61)) * 1.7, zgrid)
        assert np.all(ent.epistemic == 0.0)
        np.testing.assert_array_equal(ent.total, ent.aleatoric)
        np.testing.assert_allclose(ent.total, grid_entropy(pdfs, zgrid), rtol=0, atol=1e-14)


@pytest.mark.parametrize("n_members", [2, 3, 4])
def test_members_with_disjoint_support_give_log_n_members(n_members):
    """Uniform members on disjoint blocks of the grid (with a zero grid point between them, so no
    cell holds two members): I(z; member) = H[mean] - mean H = log(n_members) exactly."""
    block = 10
    zgrid = np.linspace(0, 1, n_members * (block + 1))
    members = np.zeros((n_members, 1, len(zgrid)))
    for m in range(n_members):
        members[m, 0, m * (block + 1):m * (block + 1) + block] = 1.0 + m
    ent = member_mutual_information(members, zgrid)
    assert ent.epistemic[0] == pytest.approx(math.log(n_members), abs=1e-14)
    assert ent.total[0] - ent.aleatoric[0] == pytest.approx(math.log(n_members), abs=1e-14)


def test_two_uniform_members_on_halves_of_the_grid():
    """Members uniform on [0, 1] and [2, 3] (zero on the cells between): log 2."""
    zgrid = np.linspace(0, 3, 31)
    members = np.stack([(zgrid <= 1.0).astype(float), (zgrid >= 2.0).astype(float)])[:, None, :]
    assert member_mutual_information(members, zgrid).epistemic[0] == pytest.approx(math.log(2), abs=1e-14)


@settings(max_examples=40)
@given(st.integers(2, 5), st.integers(0, 10_000))
def test_mutual_information_between_zero_and_log_n_members(n_members, seed):
    rng = np.random.default_rng(seed)
    zgrid = np.linspace(0, 2, 41)
    members = rng.random((n_members, 3, 41)) ** 4
    ent = member_mutual_information(members, zgrid)
    assert np.all(ent.epistemic >= 0) and np.all(ent.epistemic <= math.log(n_members) + 1e-12)
    np.testing.assert_allclose(ent.total - ent.aleatoric, ent.epistemic, atol=1e-14)


def test_member_errors_name_member_and_row():
    members = np.ones((2, 3, 5))
    members[1, 2, 0] = -1
    with pytest.raises(ValueError, match="member 1, row 2"):
        member_mutual_information(members, np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="n_members, n, n_grid"):
        member_mutual_information(np.ones((3, 5)), np.linspace(0, 1, 5))


def ensemble_mixture(n, n_members=3, k=2, seed=0):
    """Mixture arrays laid out as DeepEnsemble.predict: member-major, weights summing to 1/M."""
    rng = np.random.default_rng(seed)
    w = rng.random((n, n_members, k))
    w /= w.sum(axis=2, keepdims=True) * n_members
    mu = rng.uniform(0.5, 2.5, (n, n_members, k))
    s = rng.uniform(0.05, 0.3, (n, n_members, k))
    return [a.reshape(n, n_members * k) for a in (w, mu, s)]


def test_member_grid_pdfs_split_the_ensemble_member_major():
    from calipers.photoz.mixture import mixture_pdf

    zgrid = np.linspace(0, 3, 151)
    w, mu, s = ensemble_mixture(4)
    pdfs = member_grid_pdfs(w, mu, s, 3, zgrid)
    assert pdfs.shape == (3, 4, 151)
    for m in range(3):
        cols = slice(2 * m, 2 * m + 2)
        np.testing.assert_allclose(pdfs[m], mixture_pdf(3 * w[:, cols], mu[:, cols], s[:, cols], zgrid), rtol=1e-12)
    # the members' mean is the ensemble's own mixture density
    np.testing.assert_allclose(pdfs.mean(axis=0), mixture_pdf(w, mu, s, zgrid), rtol=1e-12, atol=1e-300)
    with pytest.raises(ValueError, match="cannot be split into 4 members"):
        member_grid_pdfs(w, mu, s, 4, zgrid)
    s[2, 3] = 0.0
    with pytest.raises(ValueError, match="stds.*row 2"):
        member_grid_pdfs(w, mu, s, 3, zgrid)


def test_ensemble_entropies_in_chunks_equal_one_pass_and_name_the_row():
    zgrid = np.linspace(0, 3, 151)
    w, mu, s = ensemble_mixture(7, seed=1)
    whole = member_mutual_information(member_grid_pdfs(w, mu, s, 3, zgrid), zgrid)
    chunked = ensemble_entropies(w, mu, s, 3, zgrid, chunk=3)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    w[5, 0] = np.nan
    with pytest.raises(ValueError, match="weights.*row 5"):
        ensemble_entropies(w, mu, s, 3, zgrid, chunk=3)
    w[5, 0], mu[4, 2:4] = 0.1, 50.0  # member 1 of row 4 far above the grid: no mass on it
    with pytest.raises(ValueError, match="no mass.*member 1, row 4"):
        ensemble_entropies(w, mu, s, 3, zgrid, chunk=3)


# ---------------------------------------------------------------- kNN support

def test_knn_scores_on_a_line_are_exact():
    """Labelled points 0, 1, ..., 9 (std s = sqrt(8.25)); k = 1: every leave-one-out distance
    is 1 / s, a query at 4.5 scores 0.5 / s and one at 20 scores 11 / s."""
    labelled = np.arange(10.0)[:, None]
    support = KNNSupport(n_neighbors=1, level=0.9).fit(labelled)
    s = math.sqrt(8.25)
    np.testing.assert_allclose(support.loo_scores_, 1 / s, rtol=1e-14)
    np.testing.assert_allclose(support.score([[4.5], [20.0]]), [0.5 / s, 11 / s], rtol=1e-14)
    assert support.threshold == pytest.approx(1 / s)
    np.testing.assert_array_equal(support.ood([[4.5], [20.0]]), [False, True])
    # k = 2 at the end point 0: the two nearest others are 1 and 2
    assert KNNSupport(2, 0.9).fit(labelled).loo_scores_[0] == pytest.approx(1.5 / s)


def test_leave_one_out_drops_the_row_itself_not_its_duplicate():
    labelled = np.r_[0.0, 0.0, np.arange(1.0, 10.0)][:, None]
    loo = KNNSupport(n_neighbors=1, level=0.9).fit(labelled).loo_scores_
    assert loo[0] == 0.0 and loo[1] == 0.0 and loo[2] > 0


def gaussian_cloud(n, seed):
    rng = np.random.default_rng(seed)
    # correlated, differently scaled features, as colours and magnitudes are
    return rng.normal(0, 1, (n, 3)) @ np.array([[2.0, 0.5, 0.0], [0.0, 0.3, 0.1], [0.0, 0.0, 5.0]]) + [20, 1, -3]


@pytest.mark.parametrize("level", [0.9, 0.99])
def test_flagged_fraction_of_fresh_draws_is_one_minus_level(level):
    """Five labelled samples of 2000 rows; 20000 fresh rows from the same distribution each.
    Given a labelled sample, the flagged fraction of fresh rows is Binomial(20000, q)/20000 with q
    itself Beta-distributed about 1 - level (conformal: mean at most 1 - level, spread
    sqrt(level (1 - level) / 2000)); the mean of the five is within 4 standard errors."""
    fractions = []
    for seed in range(5):
        support = KNNSupport(n_neighbors=10, level=level).fit(gaussian_cloud(2000, seed))
        fractions.append(np.mean(support.ood(gaussian_cloud(20000, 100 + seed))))
    sd = math.sqrt(level * (1 - level) * (1 / 2000 + 1 / 20000) / 5)
    assert abs(np.mean(fractions) - (1 - level)) < 4 * sd, (fractions, sd)


def test_points_far_from_the_labelled_cloud_are_flagged():
    support = KNNSupport(n_neighbors=5, level=0.99).fit(gaussian_cloud(1000, 7))
    far = np.array([[20, 1, -3]]) + np.array([[12, 0, 0], [0, 2.5, 0], [0, 0, -40], [-10, -2, 30]])
    flags = support.flags(np.vstack([far, [[20.0, 1.0, -3.0]]]))
    np.testing.assert_array_equal(flags["ood"], [True, True, True, True, False])
    assert np.all(flags["support_score"][:4] > 2 * support.threshold)


def test_round_trip_through_json_gives_the_same_scores():
    support = KNNSupport(n_neighbors=7, level=0.95).fit(gaussian_cloud(500, 2))
    again = KNNSupport.from_dict(json.loads(json.dumps(support.to_dict())))
    x = gaussian_cloud(300, 3) * 1.3
    np.testing.assert_array_equal(again.score(x), support.score(x))
    assert again.threshold == support.threshold and again.n_neighbors == 7 and again.level == 0.95
    with pytest.raises(ValueError, match="not a KNNSupport"):
        KNNSupport.from_dict({"kind": "other"})


def test_knn_bad_inputs():
    data = gaussian_cloud(200, 1)
    data[17, 1] = np.inf
    with pytest.raises(ValueError, match="row 17"):
        KNNSupport().fit(data)
    support = KNNSupport(n_neighbors=3, level=0.9).fit(gaussian_cloud(200, 1))
    with pytest.raises(ValueError, match="2 features, the labelled sample had 3"):
        support.score(np.zeros((4, 2)))
    bad = np.zeros((4, 3))
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        support.score(bad)
    with pytest.raises(ValueError, match="too few for level 0.99.*99 rows"):
        KNNSupport(n_neighbors=3, level=0.99).fit(gaussian_cloud(50, 1))
    with pytest.raises(RuntimeError, match="before fit"):
        KNNSupport().score(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="level"):
        KNNSupport(level=1.0)
