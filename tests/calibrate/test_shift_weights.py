"""Importance weights for covariate shift, against exact analytic cases.

The toy: labelled x ~ N(0, 1), target x ~ N(1, 1). The true density ratio is
p_target / p_labelled = exp(x - 1/2), whose mean over the labelled population is 1 and whose
second moment is e, so the Kish ESS fraction of the true weights is 1/e.
"""
import numpy as np
import pytest

from calipers.calibrate import (DensityRatio, WeightCollapseError, check_effective_sample_size,
                                density_ratio_weights, effective_sample_size, photometry_shift_features)
from calipers.calibrate.shift_weights import check_weights


def true_ratio(x):
    return np.exp(x - 0.5)


@pytest.fixture(scope="module")
def gaussians():
    rng = np.random.default_rng(0)
    return rng.normal(0.0, 1.0, 10_000), rng.normal(1.0, 1.0, 10_000)


def test_effective_sample_size_exact_cases():
    assert effective_sample_size(np.ones(37)) == pytest.approx(37, rel=1e-15)
    assert effective_sample_size(np.full(50, 3.7)) == pytest.approx(50, rel=1e-14)
    one = np.zeros(20)
    one[7] = 5.0
    assert effective_sample_size(one) == 1.0
    # n - 1 unit weights and one weight k: (n - 1 + k)^2 / (n - 1 + k^2)
    n, k = 100, 10.0
    w = np.r_[np.ones(n - 1), k]
    assert effective_sample_size(w) == pytest.approx((n - 1 + k) ** 2 / (n - 1 + k * k), rel=1e-14)
    assert effective_sample_size(1e-200 * w) == pytest.approx(effective_sample_size(w), rel=1e-14)  # scale-free


def test_logistic_classifier_recovers_the_gaussian_density_ratio(gaussians):
    """Degree-2 logistic regression contains the true log ratio (linear in x): only estimation
    noise of 2 x 10,000 rows remains, ~0.02 in log ratio. Tolerance: 0.08 at every grid point."""
    xl, xt = gaussians
    ratio = DensityRatio(method="classifier", classifier="logistic", seed=0).fit(xl, xt)
    grid = np.linspace(-1.5, 2.5, 41)
    err = np.abs(np.log(ratio.ratio(grid) / true_ratio(grid)))
    assert err.max() < 0.08, err.max()
    # cross-fitted weights of the labelled rows themselves, mean exactly 1, track the truth
    w = ratio.labelled_weights
    assert np.mean(w) == pytest.approx(1.0, abs=1e-12)
    inside = (xl > -1.5) & (xl < 2.5)
    assert np.mean(np.abs(np.log(w[inside] * ratio.scale / true_ratio(xl[inside])))) < 0.05
    # its ESS is that of the true weights on the same rows
    assert ratio.report.ess_fraction == pytest.approx(effective_sample_size(true_ratio(xl)) / len(xl), abs=0.03)
    assert ratio.report.n_clipped == 0 and ratio.report.method == "classifier"


def test_gradient_boosting_ratio_within_its_noise(gaussians):
    """A piecewise-constant classifier: coarser, tolerance 0.5 in log ratio at every point of
    [-1, 2] and 0.2 on average."""
    xl, xt = gaussians
    ratio = DensityRatio(method="classifier", classifier="gradient_boosting", n_folds=3, seed=0).fit(xl, xt)
    grid = np.linspace(-1.0, 2.0, 31)
    err = np.abs(np.log(ratio.ratio(grid) / true_ratio(grid)))
    assert err.max() < 0.5 and err.mean() < 0.2, (err.max(), err.mean())


def test_knn_ratio_within_binomial_noise(gaussians):
    """Among k neighbours a fraction r / (1 + r) is target (equal sample sizes), so the log
    ratio has a binomial standard deviation sqrt(1/k_t + 1/k_l); each grid point must lie within
    4 of them (about 0.4 - 0.5 for k = 400), and the mean error well below."""
    xl, xt = gaussians
    k = 400
    ratio = DensityRatio(method="knn", n_neighbors=k).fit(xl, xt)
    grid = np.linspace(-1.0, 2.0, 13)
    r = true_ratio(grid)
    sigma = np.sqrt(1 / (k * r / (1 + r)) + 1 / (k / (1 + r)))
    err = np.abs(np.log(ratio.ratio(grid) / r))
    assert np.all(err < 4 * sigma), (err, sigma)
    assert err.mean() < 0.15
    assert np.mean(ratio.labelled_weights) == pytest.approx(1.0, abs=1e-12)


def test_weights_of_new_rows_are_on_the_fit_scale(gaussians):
    """A fresh labelled sample weighted by the same DensityRatio has mean weight 1 (E_l[w] = 1)."""
    xl, xt = gaussians
    ratio = DensityRatio(seed=1).fit(xl[:4000], xt[:4000])
    fresh = np.random.default_rng(5).normal(0, 1, 20_000)
    w = ratio.weights(fresh)
    se = np.std(w) / np.sqrt(len(w))
    assert abs(np.mean(w) - 1.0) < 4 * se + 0.02
    np.testing.assert_allclose(w, ratio.ratio(fresh) / ratio.scale)


def test_clipping_caps_the_ratio_and_is_reported(gaussians):
    xl, xt = gaussians
    cap = DensityRatio(clip_quantile=0.9).fit(xl, xt)
    assert cap.report.n_clipped == pytest.approx(0.1 * len(xl), abs=2)
    assert cap.labelled_weights.max() == pytest.approx(cap.clip_ratio / cap.scale)
    assert np.all(cap.ratio(np.linspace(-3, 5, 50)) <= cap.clip_ratio)
    fixed = DensityRatio(max_ratio=2.0).fit(xl, xt)
    assert fixed.clip_ratio == 2.0 and fixed.report.clip_ratio == 2.0
    assert fixed.report.n_clipped == int(np.sum(fixed.labelled_weights * fixed.scale >= 2.0 - 1e-12))
    both = DensityRatio(clip_quantile=0.99, max_ratio=2.0).fit(xl, xt)
    assert both.clip_ratio == 2.0  # the lower cap wins
    assert cap.report.ess_fraction > DensityRatio().fit(xl, xt).report.ess_fraction


def test_shortcut_returns_weights_and_report(gaussians):
    xl, xt = gaussians
    w, report = density_ratio_weights(xl[:2000], xt[:2000], "knn", n_neighbors=50)
    assert w.shape == (2000,) and np.mean(w) == pytest.approx(1.0)
    assert report.to_dict()["method"] == "knn" and report.n_labelled == 2000 and report.n_target == 2000
    assert report.ess == pytest.approx(effective_sample_size(w))


def test_weight_collapse_is_a_clear_error():
    rng = np.random.default_rng(2)
    xl, xt = rng.normal(0, 1, 2000), rng.normal(4.0, 0.5, 2000)  # target beyond the labelled support
    with pytest.raises(WeightCollapseError, match=r"below the floor min_ess_fraction=0\.05") as info:
        DensityRatio(min_ess_fraction=0.05).fit(xl, xt)
    message = str(info.value)
    assert "effective sample size" in message and "row " in message
    assert info.value.floor == 0.05 and info.value.ess < 0.05 * 2000
    assert xl[info.value.rows[0]] > 2.5  # the heaviest row is at the labelled sample's upper edge
    assert isinstance(info.value, ValueError)
    # the exact case: one weight carries everything
    w = np.r_[np.full(99, 1e-3), 1000.0]
    with pytest.raises(WeightCollapseError, match=r"row 99 .*min_ess_fraction|min_ess_fraction=0\.1.*row 99"):
        check_effective_sample_size(w, 0.1)
    assert check_effective_sample_size(w, 0.0) == pytest.approx(effective_sample_size(w))


def test_bad_inputs_name_the_row():
    rng = np.random.default_rng(3)
    xl, xt = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    bad = xt.copy()
    bad[17, 1] = np.nan
    with pytest.raises(ValueError, match="target sample.*row 17"):
        DensityRatio().fit(xl, bad)
    with pytest.raises(ValueError, match="different numbers of features"):
        DensityRatio().fit(xl, xt[:, :1])
    with pytest.raises(ValueError, match="unknown density-ratio method"):
        DensityRatio(method="kde").fit(xl, xt)
    with pytest.raises(ValueError, match="clip_quantile"):
        DensityRatio(clip_quantile=1.5).fit(xl, xt)
    with pytest.raises(RuntimeError, match="before fit"):
        DensityRatio().weights(xl)
    with pytest.raises(ValueError, match="negative in 1 row.*row 2"):
        check_weights([1.0, 2.0, -1.0])
    with pytest.raises(ValueError, match="all zero"):
        effective_sample_size(np.zeros(4))
    fitted = DensityRatio().fit(xl, xt)
    with pytest.raises(ValueError, match="fitted on 2 features, got 3"):
        fitted.weights(np.zeros((4, 3)))


def test_mlp_classifier_runs_and_orders_the_ratio():
    rng = np.random.default_rng(4)
    ratio = DensityRatio(classifier="mlp", n_folds=2).fit(rng.normal(0, 1, 1500), rng.normal(1, 1, 1500))
    r = ratio.ratio(np.array([-1.0, 0.5, 2.0]))
    assert np.all(np.isfinite(r)) and r[0] < r[1] < r[2]


def test_photometry_features_match_the_core_features():
    """Non-detections become the labelled sample's fill magnitudes, exactly as in the features of
    calipers.core.features (which calibrate may not import)."""
    from calipers.core.features import photometry_features
    from calipers.photoz import PhotometryPreprocessor

    rng = np.random.default_rng(6)
    mags = rng.uniform(20, 25, (300, 3))
    errs = rng.uniform(0.01, 0.2, (300, 3))
    mags[5, 1] = 99.0
    mags[8, 2] = np.nan
    prep = PhotometryPreprocessor(["g", "r", "i"]).fit(mags, errs)
    x = photometry_shift_features(mags, errs, prep)
    np.testing.assert_array_equal(x, photometry_features(mags, errs, prep))
    assert x.shape == (300, 5) and np.all(np.isfinite(x))
    flagged = photometry_shift_features(mags, errs, prep, include_flags=True)
    assert flagged.shape == (300, 8) and flagged[5, 6] == 1.0 and flagged[8, 7] == 1.0
