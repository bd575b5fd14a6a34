"""PIT batch statistics against exact moments, the PIT of Gaussian and Bernoulli predictions."""
import numpy as np
import pytest
from scipy import stats

from calipers.monitor.calibration import (PIT_VAR, pit_batch_alarm, pit_batch_statistics, pit_binary,
                                          pit_from_zscores, sample_variance_sd)


def test_sample_variance_sd_is_exact():
    # n = 2: s^2 = (u1 - u2)^2 / 2 and E (u1 - u2)^4 = 1/15, so Var(s^2) = 1/60 - 1/144 = 7/720
    assert sample_variance_sd(2) ** 2 == pytest.approx(7 / 720, rel=1e-12)
    # large n: against simulation
    u = np.random.default_rng(0).random((20000, 50))
    assert np.std(u.var(1, ddof=1)) == pytest.approx(sample_variance_sd(50), rel=0.02)
    with pytest.raises(ValueError):
        sample_variance_sd(1)


def test_statistics_of_a_uniform_grid_are_exact():
    n = 1000
    u = (np.arange(n) + 0.5) / n  # mean 1/2; sample variance (n + 1) / (12 n)
    s = pit_batch_statistics(u)
    assert s["pit_mean"] == pytest.approx(0.5) and abs(s["z_mean"]) < 1e-9
    assert s["pit_var"] == pytest.approx((n + 1) / (12 * n), rel=1e-12)
    assert s["z_dispersion"] == pytest.approx((1 / (12 * n)) / sample_variance_sd(n), rel=1e-9)
    assert s["ks"] == pytest.approx(0.5 / n) and not pit_batch_alarm(s)


def test_width_shrink_raises_the_pit_variance_as_predicted():
    """Predictive sigma a factor ``1/a`` too small: PIT = Phi(a Z), Var = arcsin(a^2 / (1 + a^2)) / (2 pi)."""
    a = 1 / 0.75
    z = np.random.default_rng(1).normal(size=200_000)
    pit = pit_from_zscores(a * z)
    exact = np.arcsin(a * a / (1 + a * a)) / (2 * np.pi)
    assert pit.var() == pytest.approx(exact, rel=0.01) and exact > PIT_VAR
    s = pit_batch_statistics(pit[:1000])
    assert s["z_dispersion"] > 5 and pit_batch_alarm(s)


def test_binary_pit_is_uniform_when_calibrated_and_bounded_by_the_outcome():
    rng = np.random.default_rng(2)
    p = rng.random(50_000)
    y = (rng.random(p.size) < p).astype(int)
    u = pit_binary(p, y, rng)
    assert stats.kstest(u, "uniform").pvalue > 0.01
    assert np.all(u[y == 0] <= 1 - p[y == 0]) and np.all(u[y == 1] >= 1 - p[y == 1])
    over = pit_binary(np.clip(1.5 * (p - 0.5) + 0.5, 0, 1), y, rng)  # over-confident probabilities
    assert pit_batch_statistics(over[:2000])["z_dispersion"] > 3
    with pytest.raises(ValueError):
        pit_binary([0.2, 1.2], [0, 1], rng)


def test_bad_pits_are_named():
    with pytest.raises(ValueError, match="row 2"):
        pit_batch_statistics([0.1, 0.5, 1.5, 0.2])


def test_per_batch_false_alarm_rate_is_at_most_alpha():
    rng = np.random.default_rng(3)
    alarms = [pit_batch_alarm(pit_batch_statistics(rng.random(1000))) for _ in range(1000)]
    assert np.mean(alarms) <= 0.05 + 0.02
