"""The conformal test martingale: exact p-values, Ville's bound, resumable state, detection."""
import numpy as np
import pytest
from scipy import stats

from calipers.monitor.martingale import ConformalTestMartingale


def test_p_values_of_an_increasing_stream_are_theta_over_n():
    ctm = ConformalTestMartingale(n_levels=1000, high=1.0, seed=1)
    p = ctm.p_values(np.linspace(0.05, 0.95, 10), batch_index=0)
    theta = 1.0 - np.random.default_rng([1, 0]).random(10)
    assert np.allclose(p, theta / np.arange(1, 11))  # each score the largest so far, no ties
    # a score equal to every earlier one: g = 0, e = n, p = theta
    ctm = ConformalTestMartingale(n_levels=10, high=1.0, seed=2)
    p = ctm.p_values(np.full(5, 0.33), batch_index=3)
    assert np.allclose(p, 1.0 - np.random.default_rng([2, 3]).random(5))


def test_p_values_are_uniform_and_independent_of_chunking_under_exchangeability():
    scores = np.random.default_rng(3).random(5000) * 0.5
    a = ConformalTestMartingale(seed=4)
    a.add_reference(np.random.default_rng(5).random(2000) * 0.5)
    b = ConformalTestMartingale.from_dict(a.to_dict())
    pa = a.p_values(scores, 0)
    pb = b.p_values(scores, 0, chunk=333)
    assert np.array_equal(pa, pb)
    assert stats.kstest(pa, "uniform").pvalue > 0.01
    # coarse levels: many ties, still uniform
    c = ConformalTestMartingale(n_levels=8, seed=6)
    assert stats.kstest(c.p_values(scores, 0), "uniform").pvalue > 0.01


def test_ville_bounds_the_false_alarm_probability_over_the_whole_stream():
    rng = np.random.default_rng(7)
    alarms = 0
    for s in range(200):
        ctm = ConformalTestMartingale(threshold=10.0, seed=s)
        ctm.add_reference(rng.random(500) * 0.5)
        for b in range(20):
            ctm.update(rng.random(250) * 0.5, b)
        alarms += ctm.alarm_at is not None
    assert alarms / 200 <= 0.1 + 2 * np.sqrt(0.1 * 0.9 / 200)


def test_state_survives_a_restart_and_a_shift_is_detected():
    rng = np.random.default_rng(8)
    ref = np.abs(rng.random(2000) - 0.5)
    null = [np.abs(rng.random(500) - 0.5) for _ in range(4)]
    z = rng.normal(size=(6, 500)) / 0.75
    shifted = [np.abs(stats.norm.cdf(zz) - 0.5) for zz in z]
    batches = null + shifted
    whole = ConformalTestMartingale(seed=9)
    whole.add_reference(ref)
    out_whole = [whole.update(b, i) for i, b in enumerate(batches)]
    part = ConformalTestMartingale(seed=9)
    part.add_reference(ref)
    out = [part.update(b, i) for i, b in enumerate(batches[:5])]
    part = ConformalTestMartingale.from_dict(part.to_dict())
    out += [part.update(b, i + 5) for i, b in enumerate(batches[5:])]
    assert out == out_whole and part.to_dict() == whole.to_dict()
    assert not any(o["alarm"] for o in out[:4]) and whole.alarm_at is not None and whole.alarm_at[0] >= 4


def test_bad_settings_and_scores_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        ConformalTestMartingale(threshold=1.0)
    with pytest.raises(ValueError, match="epsilons"):
        ConformalTestMartingale(epsilons=[0.5, 1.5])
    with pytest.raises(ValueError, match="row 1"):
        ConformalTestMartingale().update([0.1, np.nan], 0)


def test_jumper_recursion_by_hand():
    """Two objects: C1 = f(p1) / K; C2 = ((1 - J) C1 + J sum(C1) / K) f(p2); M2 = sum C2."""
    eps, jump = np.array([0.3, 0.7]), 0.2
    ctm = ConformalTestMartingale(epsilons=eps, jump=jump, n_levels=1000, high=1.0, seed=3)
    p = ctm.p_values([0.9, 0.2], batch_index=0)  # the p-values the update below will see
    ctm = ConformalTestMartingale(epsilons=eps, jump=jump, n_levels=1000, high=1.0, seed=3)
    out = ctm.update([0.9, 0.2], batch_index=0, shuffle=False)

    def f(q):
        return np.concatenate([eps * q ** (eps - 1), eps * (1 - q) ** (eps - 1), [1.0]])

    k = 5
    c1 = f(p[0]) / k
    c2 = ((1 - jump) * c1 + jump * c1.sum() / k) * f(p[1])
    assert out["max_log10_in_batch"] == pytest.approx(max(np.log10(c1.sum()), np.log10(c2.sum())), rel=1e-12)
    assert out["log10_martingale"] == pytest.approx(np.log10(c2.sum()), rel=1e-12)
    assert ctm.log10() == pytest.approx(np.log10(c2.sum()), rel=1e-12)


def test_a_sorted_batch_is_bet_on_in_random_order():
    """Within a batch order means nothing: a calm batch sorted by its scores (as a catalog sorted by
    redshift sorts its PITs' neighbours) must not look like drift."""
    rng = np.random.default_rng(11)
    ref, batch = rng.random(3000) * 0.5, np.sort(rng.random(1000) * 0.5)
    sorted_bets = ConformalTestMartingale(seed=1)
    sorted_bets.add_reference(ref)
    assert sorted_bets.update(batch, 0, shuffle=False)["alarm"]
    shuffled = ConformalTestMartingale(seed=1)
    shuffled.add_reference(ref)
    out = shuffled.update(batch, 0)
    assert not out["alarm"] and out["max_log10_in_batch"] < 1
