"""The local coverage test passes a calibrated model and finds where a locally wrong one fails."""
import numpy as np
from scipy import stats

from calipers.validate.local_coverage import local_coverage_test


def toy(n, seed, local_bug):
    """z ~ N(x, 0.1); the model says N(x, 0.1), except widths 3x too small for x > 0.5 if local_bug,
    and 1.5x too large for x < 0.5 so that the global PIT stays roughly flat."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    z = rng.normal(x, 0.1)
    width = np.full(n, 0.1)
    if local_bug:
        width = np.where(x > 0.5, 0.1 / 3, 0.15)
    return x, stats.norm.cdf(z, x, width)


def test_calibrated_passes():
    x, pit = toy(2000, 1, local_bug=False)
    res = local_coverage_test(x, pit, alphas=(0.16, 0.84), n_null=10)
    assert res.p_value > 0.05


def test_local_miscalibration_is_found_and_located():
    x, pit = toy(2000, 2, local_bug=True)
    res = local_coverage_test(x, pit, alphas=(0.16, 0.84), n_null=10)
    assert res.p_value == 1 / 11 and all(p == 1 / 11 for p in res.p_values)  # beyond every null refit
    r16 = res.local_coverage[:, 0]
    # over-confident region (x > 0.5): too many PIT values below 0.16
    assert r16[x > 0.6].mean() > 0.16 + 0.1
    assert r16[x < 0.4].mean() < 0.16
