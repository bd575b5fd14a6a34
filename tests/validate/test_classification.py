import numpy as np
import pytest

from calipers.calibrate import TemperatureScaling
from calipers.validate.classification import reliability


def test_ece_zero_for_calibrated_and_large_for_overconfident():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    outcome = rng.random(p.size) < p
    assert reliability(p, outcome)["ece"] < 0.01
    over = np.clip(0.5 + 1.8 * (p - 0.5), 0, 1)  # pushed towards 0 and 1
    r = reliability(over, outcome)
    assert r["ece"] > 0.1 and r["mce"] >= r["ece"]


def test_temperature_scaling_lowers_ece():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (20_000, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=q) for q in probs])
    hot = logits * 2.5
    ts = TemperatureScaling().fit(hot[:10_000], labels[:10_000])

    def ece(lg):
        q = np.exp(lg - lg.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        return reliability(q.max(1), q.argmax(1) == labels[10_000:])["ece"]

    assert ece(ts.transform(hot[10_000:])) < 0.5 * ece(hot[10_000:])


def test_nan_counted_and_bad_probabilities_rejected():
    r = reliability(np.array([0.2, np.nan, 0.9]), np.array([0, 1, 1]))
    assert r["n_invalid"] == 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability(np.array([1.2]), np.array([1]))


def test_interval_probabilities_match_the_analytic_gaussian():
    from scipy import stats

    from calipers.validate.classification import interval_outcomes, interval_probabilities

    zgrid = np.linspace(0, 3, 3001)
    mu = np.array([0.4, 1.1, 2.0])
    pdfs = stats.norm.pdf(zgrid[None, :], mu[:, None], 0.1)
    edges = [0.0, 0.5, 1.0, 1.5, 3.0]
    p = interval_probabilities(pdfs, zgrid, edges)
    expect = np.diff(stats.norm.cdf(np.array(edges)[None, :], mu[:, None], 0.1), axis=1)
    np.testing.assert_allclose(p, expect, atol=1e-4)  # the grid drops Phi(-4) = 3e-5 below z = 0
    np.testing.assert_array_equal(interval_outcomes(np.array([0.2, 1.0, 2.9]), edges),
                                  [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    with pytest.raises(ValueError, match="strictly increasing"):
        interval_probabilities(pdfs, zgrid, [0.0, 1.0, 1.0])
