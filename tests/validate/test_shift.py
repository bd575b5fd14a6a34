"""Covariate-shift tests: calibrated p-values under no shift, power under a faint-end shift."""
import numpy as np
import pytest

from calipers.validate.shift import classifier_two_sample_test, mmd_test


def sample(n, shift, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, 4)) + np.array([shift, 0, 0, 0])


def test_mmd_detects_shift_and_not_noise():
    assert mmd_test(sample(300, 0.0, 1), sample(300, 0.6, 2), n_permutations=100).p_value < 0.01
    assert mmd_test(sample(300, 0.0, 3), sample(300, 0.0, 4), n_permutations=100).p_value > 0.01


def test_mmd_pvalues_roughly_uniform_under_null():
    p = [mmd_test(sample(80, 0, 10 + i), sample(80, 0, 100 + i), n_permutations=50, seed=i).p_value
         for i in range(30)]
    assert 0.25 < np.mean(p) < 0.75


def test_classifier_test_detects_shift_and_not_noise():
    assert classifier_two_sample_test(sample(1500, 0, 1), sample(1500, 0.5, 2)).p_value < 0.01
    null = classifier_two_sample_test(sample(1500, 0, 3), sample(1500, 0, 4))
    assert null.p_value > 0.01 and abs(null.statistic - 0.5) < 0.05


def sorted_sample(n, shift, seed):
    """A 2-d Gaussian feature sample sorted by its first feature, as the DC2 training file is by z."""
    x = np.random.default_rng(seed).normal(0, 1, (n, 2)) + np.array([shift, 0])
    return x[np.argsort(x[:, 0])]


def test_classifier_test_on_sorted_samples_of_unequal_size():
    """Balancing must take a random subset of the larger sample, not its first (lowest) rows: one
    population, sorted, 3000 vs 1200 rows, fires at p < 0.05 in at most 2 of 20 seeds (expected
    1; taking the first rows fired in every seed at p < 1e-100)."""
    p = [classifier_two_sample_test(sorted_sample(3000, 0, s), sorted_sample(1200, 0, 100 + s), seed=s).p_value
         for s in range(20)]
    assert sum(v < 0.05 for v in p) <= 2, p
    shifted = classifier_two_sample_test(sorted_sample(3000, 0, 1), sorted_sample(1200, 0.5, 2))
    assert shifted.p_value < 1e-3 and shifted.n_reference == shifted.n_target == 1200


def test_mmd_on_sorted_samples_of_unequal_size():
    p = [mmd_test(sorted_sample(600, 0, s), sorted_sample(250, 0, 100 + s), max_n=300, n_permutations=50,
                  seed=s).p_value for s in range(10)]
    assert sum(v < 0.05 for v in p) <= 2, p
    assert mmd_test(sorted_sample(600, 0, 1), sorted_sample(250, 0.5, 2), max_n=300).p_value < 0.01


def test_bad_inputs():
    with pytest.raises(ValueError, match="different numbers of features"):
        mmd_test(sample(10, 0, 1), sample(10, 0, 1)[:, :3])
    bad = sample(10, 0, 1)
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        mmd_test(sample(10, 0, 1), bad)


def test_gaussian_kernel_median_heuristic_and_mmd_of_point_masses():
    from calipers.validate.shift import gaussian_kernel, mmd2_unbiased_permutations

    # three points on a line at 0, 1, 3: squared distances 1, 9, 4 -> median 4, sigma^2 = 2
    k, bw = gaussian_kernel(np.array([[0.0], [1.0], [3.0]]))
    assert bw == pytest.approx(np.sqrt(2.0)) and k[0, 2] == pytest.approx(np.exp(-9 / 4))
    # two point masses (3 copies of a, 4 of b): unbiased MMD^2 = 1 + 1 - 2 exp(-|a-b|^2 / (2 sigma^2))
    z = np.array([[0.0, 0.0]] * 3 + [[1.0, 2.0]] * 4)
    k, _ = gaussian_kernel(z, bandwidth=1.5)
    lab = np.zeros((7, 1), bool)
    lab[:3] = True
    assert mmd2_unbiased_permutations(k, lab)[0] == pytest.approx(2 - 2 * np.exp(-5 / (2 * 1.5 ** 2)), rel=1e-12)


def test_unbiased_mmd_matches_the_gaussian_closed_form():
    """1-D N(0, s^2) vs N(d, s^2) with a kernel of width w: MMD^2 = 2 w / sqrt(w^2 + 2 s^2)
    (1 - exp(-d^2 / (2 (w^2 + 2 s^2)))); the unbiased estimate averages to it."""
    from calipers.validate.shift import gaussian_kernel, mmd2_unbiased_permutations

    s, d, w, n = 1.0, 0.7, 0.8, 400
    est = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        z = np.concatenate([rng.normal(0, s, n), rng.normal(d, s, n)])[:, None]
        k, _ = gaussian_kernel(z, bandwidth=w)
        lab = np.zeros((2 * n, 1), bool)
        lab[:n] = True
        est.append(mmd2_unbiased_permutations(k, lab)[0])
    exact = 2 * w / np.sqrt(w ** 2 + 2 * s ** 2) * (1 - np.exp(-d ** 2 / (2 * (w ** 2 + 2 * s ** 2))))
    assert np.mean(est) == pytest.approx(exact, abs=3 * np.std(est) / np.sqrt(20))
    assert np.std(est) < 0.3 * exact
