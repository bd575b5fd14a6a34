"""Split-conformal coverage within its finite-sample bounds; width and temperature scaling calibrate."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from calipers.calibrate import GaussianWidthScaling, SplitConformalInterval, TemperatureScaling, conformal_quantile


def draws(n, width, rng):
    mu = rng.uniform(0, 2, n)
    z = rng.normal(mu, 0.1)
    half = width * 0.1  # base interval mu +- half: badly sized on purpose
    return mu - half, mu + half, z


@pytest.mark.parametrize("alpha", [0.05, 0.32])
@pytest.mark.parametrize("width", [0.3, 3.0])
def test_split_conformal_coverage_within_finite_sample_bounds(alpha, width):
    """Over repeated calibration/test draws the mean coverage lies in [1-alpha, 1-alpha+1/(n+1)]."""
    rng = np.random.default_rng(0)
    n_cal, n_test, reps = 200, 2000, 300
    cover = []
    for _ in range(reps):
        lo, hi, z = draws(n_cal, width, rng)
        model = SplitConformalInterval(alpha=alpha).fit(lo, hi, z)
        tlo, thi, tz = draws(n_test, width, rng)
        a, b = model.predict(tlo, thi)
        cover.append(np.mean((tz >= a) & (tz <= b)))
    mean = np.mean(cover)
    se = np.std(cover) / np.sqrt(reps)
    assert 1 - alpha - 3 * se <= mean <= 1 - alpha + 1 / (n_cal + 1) + 3 * se, (mean, se)


def test_conformal_quantile_edge_cases():
    assert conformal_quantile(np.arange(5.0), 0.01) == np.inf  # too few points for 99%
    assert conformal_quantile(np.arange(1.0, 100.0), 0.5) == 50.0
    with pytest.raises(ValueError, match="row 2"):
        conformal_quantile(np.array([1.0, 2.0, np.nan]), 0.1)


@settings(max_examples=10, deadline=None)
@given(factor=st.sampled_from([0.3, 0.7, 1.5, 4.0]), seed=st.integers(0, 1000))
def test_width_scaling_calibrates_over_and_under_dispersed(factor, seed):
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 1, 4000)
    z = rng.normal(mu, 0.2)
    sigma = np.full_like(mu, 0.2 * factor)
    s = GaussianWidthScaling().fit(mu[:2000], sigma[:2000], z[:2000])
    pit_before = stats.norm.cdf(z[2000:], mu[2000:], sigma[2000:])
    pit_after = stats.norm.cdf(z[2000:], mu[2000:], s.transform(sigma[2000:]))
    before = stats.kstest(pit_before, "uniform").statistic
    after = stats.kstest(pit_after, "uniform").statistic
    assert before > 0.05
    assert after < 0.05 and after < before / 2  # 0.05: about the 0.1% KS quantile for n = 2000
    assert s.temperature == pytest.approx(1 / factor, rel=0.1)


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(1)
    n, k = 6000, 4
    true_logits = rng.normal(0, 1.5, (n, k))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in p])
    overconfident = true_logits * 3.0
    ts = TemperatureScaling().fit(overconfident[:3000], labels[:3000])
    assert ts.temperature == pytest.approx(3.0, rel=0.1)
    before = TemperatureScaling.nll(overconfident[3000:], labels[3000:], 1.0)
    after = TemperatureScaling.nll(ts.transform(overconfident[3000:]), labels[3000:], 1.0)
    assert after < before
