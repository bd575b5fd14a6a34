"""CUSUM and Page-Hinkley: recursions by hand, Siegmund's ARL, thresholds that give the ARL asked."""
import numpy as np
import pytest

from calipers.monitor.sequential import (Cusum, PageHinkley, _page_hinkley_paths, cusum_arl, cusum_threshold,
                                         page_hinkley_threshold)


def test_cusum_recursion_by_hand_and_restart():
    c = Cusum(k=0.5, h=2.0)
    out = c.update([1.0, 1.5, -0.2, 1.4, 0.0])
    # S+: 0.5, 1.5, 0.8, 1.7, 1.2; S-: 0, 0, 0, 0, 0
    assert [round(o["statistic"], 10) for o in out] == [0.5, 1.5, 0.8, 1.7, 1.2]
    assert not any(o["alarm"] for o in out)
    out = c.update([1.0])  # S+ = 1.7 > 2? no: 1.2 + 1.0 - 0.5 = 1.7
    assert not out[0]["alarm"]
    out = c.update([1.0])  # 2.2 > 2: alarm, then restart
    assert out[0]["alarm"] and out[0]["direction"] == "up" and c.upper == 0.0
    down = Cusum(k=0.5, h=0.9).update([-1.0, -1.0])
    assert down[1]["alarm"] and down[1]["direction"] == "down"


def test_siegmund_reproduces_the_tabulated_arl():
    # k = 0.5: the one-sided in-control ARL is 336 at h = 4 and 930 at h = 5 (Montgomery, table 9.?;
    # Siegmund's approximation is within 1% of the exact Markov-chain values)
    assert cusum_arl(4.0, 0.5) == pytest.approx(336, rel=0.01)
    assert cusum_arl(5.0, 0.5) == pytest.approx(930, rel=0.01)
    # out of control by 1 sigma: about 8.4 at h = 4
    assert cusum_arl(4.0, 0.5, mean=1.0) == pytest.approx(8.4, rel=0.03)
    h = cusum_threshold(168.0, 0.5)  # two-sided 168 = one-sided 336
    assert h == pytest.approx(4.0, abs=0.01)


def run_lengths(make, n_streams, horizon, seed):
    rng = np.random.default_rng(seed)
    rl = []
    for _ in range(n_streams):
        det = make()
        x = rng.normal(size=horizon)
        hit = next((i + 1 for i, o in enumerate(det.update(x)) if o["alarm"]), horizon)
        rl.append(hit)
    return np.array(rl)


def test_cusum_threshold_gives_the_configured_arl_within_20_percent():
    rl = run_lengths(lambda: Cusum(k=0.5, arl=50), 1500, 1000, seed=4)
    assert rl.mean() == pytest.approx(50, rel=0.2)


def test_page_hinkley_class_matches_the_vectorised_paths_and_its_arl():
    x = np.random.default_rng(5).normal(size=(1, 300)) + np.r_[np.zeros(150), 0.3 * np.ones(150)]
    ph = PageHinkley(delta=0.5, lam=1e9)
    stat = [o["statistic"] for o in ph.update(x[0])]
    assert np.allclose(stat, _page_hinkley_paths(x, 0.5)[0])
    lam = page_hinkley_threshold(40.0, 0.5)
    rl = run_lengths(lambda: PageHinkley(delta=0.5, lam=lam), 1500, 400, seed=6)
    assert rl.mean() == pytest.approx(40, rel=0.2)


def test_state_round_trip_continues_the_stream_identically():
    x = np.random.default_rng(7).normal(size=60) + 0.4
    for make, cls in ((lambda: Cusum(arl=30), Cusum), (lambda: PageHinkley(arl=30), PageHinkley)):
        whole = make().update(x)
        a = make()
        first = a.update(x[:25])
        b = cls.from_dict(a.to_dict())
        assert first + b.update(x[25:]) == whole


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        cusum_threshold(0.5)
    with pytest.raises(ValueError):
        page_hinkley_threshold(10.0, -1.0)
