"""Calibrating an already calibrated model must leave it alone (up to the calibration set's noise).

Perfect Gaussian p(z) of width 0.02(1+z) on the pipeline's 601-point grid, truths drawn from them.
With the one CDF convention, the PIT of such a model is uniform, so every calibrator learns only
the sampling noise of its calibration set: the KS distance of the test PIT and the mean redshift
must move by less than that noise. (With the cumulative-sum CDF used before issue 16 the PIT read
~0.016 high on average and pit_global moved every p(z) by about +0.002 in z.)
"""
import numpy as np
import pytest
import torch
from scipy import stats

from calipers.calibrate import ConformalPredictiveDistribution, LocalPITConfig, LocalPITRecalibrator, PITRecalibrator
from calipers.validate.metrics import grid_point_estimates, pit_values

ZGRID = np.linspace(0.0, 3.0, 601)
N_CAL, N_TEST = 4000, 4000


def perfect(n, seed):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.2, 2.5, n)
    sigma = 0.02 * (1 + mu)
    z = rng.normal(mu, sigma)
    pdfs = stats.norm.pdf(ZGRID[None, :], mu[:, None], sigma[:, None])
    x = np.column_stack([mu, rng.normal(size=n)])  # features for the local calibrator
    return pdfs / np.trapezoid(pdfs, ZGRID, axis=1)[:, None], z, x, sigma


@pytest.fixture(scope="module")
def data():
    return perfect(N_CAL, 0), perfect(N_TEST, 1)


def apply(method, cal, test):
    (pc, zc, xc, _), (pt, _, xt, _) = cal, test
    pit = pit_values(pc, ZGRID, zc)
    if method == "pit_global":
        return PITRecalibrator(n_knots=100).fit(pit).transform_pdfs(pt, ZGRID)
    if method == "conformal":
        return ConformalPredictiveDistribution().fit(pit).transform_pdfs(pt, ZGRID)
    torch.set_num_threads(1)
    cfg = LocalPITConfig(n_components=2, hidden=32, n_members=2, max_epochs=100, patience=10, seed=0)
    return LocalPITRecalibrator(cfg).fit(xc, pit).transform_pdfs(pt, ZGRID, xt)


def test_perfect_model_has_uniform_pit(data):
    (pc, zc, _, _), _ = data
    pit = pit_values(pc, ZGRID, zc)
    assert stats.kstest(pit, "uniform").pvalue > 0.01
    assert abs(np.mean(pit) - 0.5) < 3 * np.sqrt(1 / 12 / N_CAL)


@pytest.mark.parametrize("method", ["pit_global", "conformal", "pit_local"])
def test_calibrating_a_perfect_model_changes_it_less_than_the_null(data, method):
    cal, test = data
    pt, zt, _, _ = test
    new = apply(method, cal, test)
    ks_null = 1.36 / np.sqrt(N_CAL)  # 95% point of the KS distance of the calibration PIT
    before = pit_values(pt, ZGRID, zt)
    after = pit_values(new, ZGRID, zt)
    ks_before = stats.kstest(before, "uniform").statistic
    ks_after = stats.kstest(after, "uniform").statistic
    assert abs(ks_after - ks_before) < ks_null
    # each test galaxy's PIT moves by less than the calibration set's KS null (a global map);
    # the local map is fitted per region of feature space, so only most galaxies are held to it
    moved = np.abs(after - before)
    assert (np.max(moved) if method != "pit_local" else np.quantile(moved, 0.95)) < ks_null
    # and the mean redshift by much less than the artefact's +0.002 (a quarter of it)
    shift = grid_point_estimates(new, ZGRID, ["zmean"])["zmean"] - grid_point_estimates(pt, ZGRID, ["zmean"])["zmean"]
    assert abs(np.mean(shift)) < 5e-4
