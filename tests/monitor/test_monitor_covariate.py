"""Per-batch covariate and prediction drift tests: exact cases, false-alarm rate and power."""
import numpy as np
import pytest

from calipers.monitor.covariate import ks_bonferroni, mmd_drift, prediction_drift


def test_ks_bonferroni_exact_cases():
    x = np.arange(100.0)[:, None] * np.ones((1, 3))
    same = ks_bonferroni(x, x)
    assert all(v == 0 for v in same["ks_statistic"].values()) and same["p_bonferroni"] == 1.0 and not same["alarm"]
    apart = x.copy()
    apart[:, 1] += 1000.0  # one feature entirely above the reference: D = 1
    res = ks_bonferroni(x, apart, names=["u", "g", "r"])
    assert res["ks_statistic"]["g"] == 1.0 and res["ks_worst_feature"] == "g" and res["alarm"]
    assert res["p_bonferroni"] == pytest.approx(3 * res["ks_p"]["g"])


def test_per_batch_false_alarm_rates_are_at_most_alpha():
    """Each batch against a fresh reference: the unconditional rate, exact for the permutation test.
    (Against one fixed reference the rate scatters around alpha by the reference's own sampling
    noise, about sqrt(n_batch / n_reference) of the test's scale: 0.04 to 0.09 for three references
    of 3,000 rows and batches of 300, measured; the benchmark uses a reference 10x its batches.)"""
    rng = np.random.default_rng(0)
    ks = [ks_bonferroni(rng.normal(size=(3000, 4)), rng.normal(size=(500, 4)))["alarm"] for _ in range(300)]
    mmd = [mmd_drift(rng.normal(size=(600, 4)), rng.normal(size=(300, 4)), n_permutations=100, max_n=600,
                     seed=i)["alarm"] for i in range(150)]
    assert np.mean(ks) <= 0.07 and np.mean(mmd) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 150)


def test_mmd_sees_a_mean_shift_in_one_feature():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2000, 4))
    batch = rng.normal(size=(500, 4))
    batch[:, 0] += 0.5
    res = mmd_drift(ref, batch, n_permutations=200, max_n=1000, seed=2)
    assert res["alarm"] and res["mmd_p"] < 0.01 and res["n_reference"] == 1000 and res["n_batch"] == 500


def test_prediction_drift_on_widths():
    rng = np.random.default_rng(3)
    z, w = rng.random(2000), rng.lognormal(-3, 0.2, 2000)
    assert not prediction_drift(z, w, rng.random(1000), rng.lognormal(-3, 0.2, 1000))["alarm"]
    res = prediction_drift(z, w, rng.random(1000), 0.8 * rng.lognormal(-3, 0.2, 1000))
    assert res["alarm"] and res["ks_worst_feature"] == "width"


def test_bad_batches_are_named():
    x = np.zeros((10, 2))
    y = np.ones((10, 2))
    y[7, 1] = np.inf
    with pytest.raises(ValueError, match="batch: non-finite values in 1 row.*row 7"):
        ks_bonferroni(x, y)
    with pytest.raises(ValueError, match="features"):
        ks_bonferroni(x, np.ones((10, 3)))


def test_mean_shift_z_and_colours_exact():
    from calipers.monitor.covariate import colour_features, mean_shift_z

    ref = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])       # means 2, 3; variances 4, 4
    batch = np.array([[1.0, 3.0], [3.0, 3.0]])                  # means 2, 3; variances 2, 0
    assert np.allclose(mean_shift_z(ref, batch), [0.0, 0.0])
    z = mean_shift_z(ref, batch + np.array([1.0, 0.0]))
    assert z[0] == pytest.approx(1.0 / np.sqrt(4 / 3 + 2 / 2))
    x, names = colour_features(np.array([[20.0, 19.5, 19.0], [21.0, 21.0, 20.0]]), ["g", "r", "i"], anchor="r")
    assert names == ["g-r", "r-i", "r"] and np.allclose(x, [[0.5, 0.5, 19.5], [0.0, 1.0, 21.0]])
    with pytest.raises(ValueError, match="anchor"):
        colour_features(np.zeros((2, 3)), ["g", "r", "i"], anchor="z")
