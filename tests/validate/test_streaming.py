"""Streaming p(z) metrics: agree with the direct ones, and merge across any split bit for bit."""
import numpy as np
import pytest

from calipers.validate.classification import interval_outcomes, interval_probabilities, reliability
from calipers.validate.metrics import coverage, crps, cde_loss, pit_tests, pit_values, point_metrics
from calipers.validate.streaming import PZMetricAccumulator

ZGRID = np.linspace(0.0, 3.0, 301)
EDGES = (0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 2.0, 3.0)


def toy(n=3000, seed=0, width=1.0):
    rng = np.random.default_rng(seed)
    z = rng.gamma(4.0, 0.2, n).clip(0.02, 2.9)
    sig = 0.04 * (1 + z)
    mu = z + rng.normal(0, sig)
    mu[rng.random(n) < 0.03] = rng.uniform(0.1, 2.8, 1)  # a few catastrophic outliers
    p = np.exp(-0.5 * ((ZGRID[None, :] - mu[:, None]) / (width * sig[:, None])) ** 2)
    p /= np.trapezoid(p, ZGRID, axis=1)[:, None]
    valid = np.ones(n, bool)
    p[[5, 77]] = np.nan
    valid[[5, 77]] = False
    z[200] = np.nan
    return p, valid, z


def accumulate(p, valid, z, chunks, which=None):
    acc = PZMetricAccumulator(ZGRID, reliability_edges=EDGES)
    for i, (a, b) in enumerate(chunks):
        if which is None or which(i):
            acc.update(a, p[a:b], valid[a:b], z[a:b])
    return acc


def ranges(n, size):
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def test_streaming_equals_direct_metrics():
    p, valid, z = toy()
    m = accumulate(p, valid, z, ranges(len(z), 137)).result()
    ok = valid & np.isfinite(z)
    pp, zz = p[ok], z[ok]
    pit = pit_values(pp, ZGRID, zz)
    assert m["n"] == len(z) and m["n_invalid"] == 3
    np.testing.assert_allclose(m["cde_loss"], cde_loss(pp, ZGRID, zz), rtol=1e-12)
    np.testing.assert_allclose(m["crps"], crps(pp, ZGRID, zz), rtol=1e-12)
    exact = pit_tests(pit)
    assert abs(m["pit_ks"] - exact["pit_ks"]) <= m["pit_ks_resolution"] + 1e-12
    np.testing.assert_allclose(m["pit_cvm"], exact["pit_cvm"], rtol=2e-3)
    cov = coverage(pit)
    assert m["cov68"] == pytest.approx(cov[0.68], abs=1e-12) and m["cov95"] == pytest.approx(cov[0.95], abs=1e-12)
    pm = point_metrics(ZGRID[np.argmax(pp, axis=1)], zz)
    assert m["outlier_015"] == pytest.approx(pm["outlier_015"], abs=1e-12)
    assert m["sigma_iqr"] == pytest.approx(pm["sigma_iqr"], abs=2e-5)
    assert m["bias"] == pytest.approx(pm["bias"], abs=2e-5)
    rel = reliability(interval_probabilities(pp, ZGRID, EDGES).ravel(), interval_outcomes(zz, EDGES).ravel(), bins=10)
    assert m["ece"] == pytest.approx(rel["ece"], abs=1e-12) and m["mce"] == pytest.approx(rel["mce"], abs=1e-12)


def test_any_split_over_ranks_gives_identical_results():
    p, valid, z = toy(seed=3)
    chunks = ranges(len(z), 100)
    serial = accumulate(p, valid, z, chunks).result()
    for size in (2, 3):
        parts = [accumulate(p, valid, z, chunks, which=lambda i, r=r: i % size == r) for r in range(size)]
        merged = parts[-1]
        for other in reversed(parts[:-1]):  # merge in a different order from the serial one
            merged.merge(other)
        assert merged.result() == serial


def test_truths_outside_the_grid_are_counted():
    p, valid, z = toy(n=400, seed=4)
    z[10], z[11], z[12] = -0.3, 3.2, 5.0
    m = accumulate(p, valid, z, ranges(len(z), 150)).result()
    assert m["n_truth_below_grid"] == 1 and m["n_truth_above_grid"] == 2
    ok = valid & np.isfinite(z)
    np.testing.assert_allclose(m["crps"], crps(p[ok], ZGRID, z[ok]), rtol=1e-12)
    assert m["pit_outlier"] >= 3 / ok.sum()


def test_merge_refuses_mismatches():
    p, valid, z = toy(n=300)
    a = accumulate(p, valid, z, [(0, 100)])
    with pytest.raises(ValueError, match="both sides"):
        a.merge(accumulate(p, valid, z, [(0, 100)]))
    other = PZMetricAccumulator(np.linspace(0, 3, 101))
    with pytest.raises(ValueError, match="different grids"):
        a.merge(other)
    with pytest.raises(ValueError, match="already added"):
        a.update(0, p[:10], valid[:10], z[:10])


def test_over_confident_pz_are_caught():
    p, valid, z = toy(seed=1, width=0.5)
    m = accumulate(p, valid, z, ranges(len(z), 500)).result()
    assert m["pit_ks"] > 0.1 and m["cov68"] < 0.5 and m["ece"] > 0.01


def test_all_invalid_is_an_error():
    p, valid, z = toy(n=300)
    acc = accumulate(p, np.zeros(300, bool), z, [(0, 300)])
    with pytest.raises(ValueError, match="no valid rows"):
        acc.result()
