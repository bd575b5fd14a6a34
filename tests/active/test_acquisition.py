"""Active spec-z targeting: acquisition scores, exposure cost and batch selection."""
import ast
import math
from pathlib import Path

import numpy as np
import pytest

import calipers.active
from calipers.active import acquisition_scores, exposure_cost, select_batch
from calipers.validate.support import grid_entropy, member_mutual_information

ACTIVE = Path(calipers.active.__file__).parent


# ---------------------------------------------------------------- exposure cost

def test_exposure_cost_background_and_source_limited():
    """Background limited t ∝ 10^(0.8 (m - m_ref)): 1 at m_ref, 10 at m_ref + 1.25, 100 at
    m_ref + 2.5; source limited t ∝ 10^(0.4 (m - m_ref)): 10 at m_ref + 2.5."""
    np.testing.assert_allclose(exposure_cost([22.0, 23.25, 24.5, 20.75], ref_mag=22.0), [1, 10, 100, 0.1],
                               rtol=1e-14)
    assert exposure_cost(24.5, ref_mag=22.0, regime="source") == pytest.approx(10, rel=1e-14)
    assert exposure_cost(23.25, ref_mag=22.0, ref_time=900.0, overhead=120.0) == pytest.approx(9120.0, rel=1e-14)


def test_exposure_cost_rejects_bad_magnitudes():
    with pytest.raises(ValueError, match="row 2"):
        exposure_cost([22.0, 23.0, np.nan, np.inf], ref_mag=22.0)
    with pytest.raises(ValueError, match="regime"):
        exposure_cost([22.0], ref_mag=22.0, regime="moon")
    with pytest.raises(ValueError, match="ref_time must be positive"):
        exposure_cost([22.0], ref_mag=22.0, ref_time=0.0)


# ---------------------------------------------------------------- acquisition scores

def disjoint_and_equal_members():
    """Two members: row 0 uniform on [0, 1] and on [2, 3] (disjoint: BALD = log 2), row 1 the
    same triangle on [0, 3] in both (BALD = 0, entropy 1/2 + log 1.5)."""
    zgrid = np.linspace(0, 3, 31)
    triangle = np.minimum(zgrid, 3 - zgrid)
    members = np.stack([np.stack([(zgrid <= 1.0) * 1.0, triangle]), np.stack([(zgrid >= 2.0) * 1.0, triangle])])
    return members, zgrid


def test_bald_and_entropy_scores_are_exact():
    members, zgrid = disjoint_and_equal_members()
    bald = acquisition_scores("bald", members, zgrid)
    assert bald[0] == pytest.approx(math.log(2), abs=1e-14) and bald[1] == 0.0
    entropy = acquisition_scores("entropy", members, zgrid)
    assert entropy[1] == pytest.approx(0.5 + math.log(1.5), abs=1e-12)
    assert entropy[0] == pytest.approx(math.log(2) + grid_entropy(members[0, 0], zgrid)[()], abs=1e-14)
    ent = member_mutual_information(members, zgrid)
    np.testing.assert_array_equal(acquisition_scores("bald", entropies=ent), bald)


def test_random_scores_are_seeded():
    a = acquisition_scores("random", n_objects=50, seed=4)
    np.testing.assert_array_equal(a, acquisition_scores("random", n_objects=50, seed=4))
    assert not np.array_equal(a, acquisition_scores("random", n_objects=50, seed=5))
    members, _ = disjoint_and_equal_members()
    assert acquisition_scores("random", members, seed=1).shape == (2,)
    with pytest.raises(ValueError, match="unknown acquisition"):
        acquisition_scores("margin", n_objects=3)
    with pytest.raises(ValueError, match="need member_pdfs and zgrid"):
        acquisition_scores("bald", members)


# ---------------------------------------------------------------- batch selection

def test_topk_ranks_ids_and_scores():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    sel = select_batch(scores, 3, ids=np.array([10, 11, 12, 13, 14]))
    np.testing.assert_array_equal(sel.rows, [1, 3, 2])
    np.testing.assert_array_equal(sel.ids, [11, 13, 12])
    np.testing.assert_array_equal(sel.ranks, [1, 2, 3])
    np.testing.assert_array_equal(sel.scores, [0.9, 0.7, 0.5])
    np.testing.assert_array_equal(sel.costs, [1, 1, 1])


def test_cost_aware_ranking_is_by_score_per_cost():
    sel = select_batch(np.array([3.0, 2.0, 1.0]), 3, cost=np.array([10.0, 1.0, 1.0]))
    np.testing.assert_array_equal(sel.rows, [1, 2, 0])
    np.testing.assert_array_equal(sel.costs, [1.0, 1.0, 10.0])


@pytest.mark.parametrize("method", ["topk", "power", "softmax"])
def test_budget_is_respected_and_nothing_else_fits(method):
    rng = np.random.default_rng(0)
    scores, cost = rng.random(200), exposure_cost(rng.uniform(20, 24, 200), ref_mag=22.0)
    sel = select_batch(scores, cost=cost, method=method, budget=25.0, seed=3)
    assert sel.costs.sum() <= 25.0 and len(sel.rows) == len(set(sel.rows))
    left = np.setdiff1d(np.arange(200), sel.rows)
    assert np.all(cost[left] > 25.0 - sel.costs.sum())  # the greedy rule stops only when nothing fits
    capped = select_batch(scores, 4, cost=cost, method=method, budget=25.0, seed=3)
    np.testing.assert_array_equal(capped.rows, sel.rows[:4])
    assert len(select_batch(scores, cost=cost, budget=0.0).rows) == 0


def test_power_bald_with_large_beta_is_topk():
    scores = np.random.default_rng(1).random(60)
    for seed in range(5):
        np.testing.assert_array_equal(select_batch(scores, 15, method="power", beta=1e6, seed=seed).rows,
                                      select_batch(scores, 15).rows)


def test_power_bald_draws_with_probability_proportional_to_score_power():
    """First pick of power-BALD with beta = 2 on scores (1, 2, 3): probabilities (1, 4, 9) / 14;
    4000 seeds, each frequency within 4 binomial standard deviations. beta = 0 is uniform."""
    scores = np.array([1.0, 2.0, 3.0])
    for beta, expected in ((2.0, np.array([1, 4, 9]) / 14), (0.0, np.full(3, 1 / 3))):
        first = [select_batch(scores, 1, method="power", beta=beta, seed=s).rows[0] for s in range(4000)]
        freq = np.bincount(first, minlength=3) / 4000
        assert np.all(np.abs(freq - expected) < 4 * np.sqrt(expected * (1 - expected) / 4000)), (beta, freq)


def test_power_bald_takes_zero_scores_last_and_refuses_negative_ones():
    sel = select_batch(np.array([0.0, 0.0, 1.0, 2.0]), 4, method="power", seed=0)
    assert set(sel.rows[:2]) == {2, 3} and set(sel.rows[2:]) == {0, 1}
    with pytest.raises(ValueError, match="non-negative scores.*row 1"):
        select_batch(np.array([0.5, -0.1, 0.2]), 2, method="power")


@pytest.mark.parametrize("method", ["power", "softmax", "kmeans"])
def test_stochastic_selections_are_seeded(method):
    rng = np.random.default_rng(2)
    scores, features = rng.random(300), rng.normal(size=(300, 3))
    a = select_batch(scores, 10, method=method, features=features, seed=7)
    b = select_batch(scores, 10, method=method, features=features, seed=7)
    np.testing.assert_array_equal(a.rows, b.rows)
    if method != "kmeans":  # k-means on well-mixed data may find the same clusters from any seed
        others = [select_batch(scores, 10, method=method, seed=s).rows for s in range(8, 12)]
        assert any(not np.array_equal(a.rows, o) for o in others)


def test_kmeans_batch_spreads_over_clusters():
    """Two tight groups of candidates; the 20 best scores all lie in group A. Top-2 takes two
    rows of A; the diverse batch takes the best row of each group."""
    rng = np.random.default_rng(5)
    features = np.vstack([rng.normal(0, 0.1, (20, 2)), rng.normal(10, 0.1, (20, 2))])
    scores = np.r_[np.linspace(2.0, 1.5, 20), np.linspace(1.0, 0.5, 20)]
    assert set(select_batch(scores, 2).rows) == {0, 1}
    sel = select_batch(scores, 2, method="kmeans", features=features, pool_factor=20)
    np.testing.assert_array_equal(sel.rows, [0, 20])
    with pytest.raises(ValueError, match="needs the candidates' features"):
        select_batch(scores, 2, method="kmeans")


def test_selection_rejects_bad_costs_and_scores_naming_the_row():
    scores = np.ones(5)
    for bad_value in (-1.0, 0.0, np.nan, np.inf):
        cost = np.ones(5)
        cost[3] = bad_value
        with pytest.raises(ValueError, match="costs.*row 3"):
            select_batch(scores, 2, cost=cost)
    scores[4] = np.nan
    with pytest.raises(ValueError, match="scores not finite.*row 4"):
        select_batch(scores, 2)
    with pytest.raises(ValueError, match="batch_size"):
        select_batch(np.ones(3), 4)
    with pytest.raises(ValueError, match="batch_size, budget or both"):
        select_batch(np.ones(3))


# ---------------------------------------------------------------- layering (DESIGN.md)

@pytest.mark.parametrize("path", sorted(ACTIVE.glob("*.py")), ids=lambda p: p.name)
def test_active_imports_no_core_stage_or_ceci_and_opens_no_file(path):
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    bad = {m for m in imported if m.startswith(("calipers.core", "calipers.stages", "ceci"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "open"]
