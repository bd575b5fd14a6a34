"""Global PIT recalibration calibrates deliberately over- and under-dispersed toy models."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from calipers.calibrate import PITRecalibrator
from calipers.gridpdf import grid_cdf
from calipers.validate.metrics import pit_values

ZGRID = np.linspace(-8, 8, 801)


def toy(n, width, seed):
    """Truth z ~ N(mu, 1); the model says N(mu, width)."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(-2, 2, n)
    z = rng.normal(mu, 1.0)
    pdfs = stats.norm.pdf(ZGRID[None, :], mu[:, None], width)
    return pdfs, z


@settings(max_examples=8, deadline=None)
@given(width=st.sampled_from([0.4, 0.6, 1.6, 2.5]), seed=st.integers(0, 10_000))
def test_recalibration_makes_pit_uniform(width, seed):
    cal_pdfs, cal_z = toy(3000, width, seed)
    test_pdfs, test_z = toy(3000, width, seed + 1)
    before = stats.kstest(pit_values(test_pdfs, ZGRID, test_z), "uniform").statistic
    rec = PITRecalibrator(n_knots=50).fit(pit_values(cal_pdfs, ZGRID, cal_z))
    new = rec.transform_pdfs(test_pdfs, ZGRID)
    after = stats.kstest(pit_values(new, ZGRID, test_z), "uniform").statistic
    assert before > 0.08  # the toy really is miscalibrated
    assert after < 0.05, (before, after)  # KS noise of 3000 test + 3000 calibration draws
    np.testing.assert_allclose(np.trapezoid(new, ZGRID, axis=1), 1.0, atol=1e-9)
    assert np.all(new >= 0)


def test_identity_on_calibrated_model():
    pdfs, z = toy(4000, 1.0, 3)
    rec = PITRecalibrator(n_knots=20).fit(pit_values(pdfs, ZGRID, z))
    cdf = grid_cdf(pdfs[:50], ZGRID)
    assert np.max(np.abs(rec.transform_cdf(cdf) - cdf)) < 0.05


def test_round_trip_and_errors():
    pdfs, z = toy(500, 2.0, 4)
    pit = pit_values(pdfs, ZGRID, z)
    rec = PITRecalibrator(n_knots=30).fit(pit)
    back = PITRecalibrator.from_dict(rec.to_dict())
    np.testing.assert_array_equal(back.transform_cdf(pit), rec.transform_cdf(pit))
    pit[3] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        PITRecalibrator().fit(pit)
    with pytest.raises(RuntimeError, match="before fit"):
        PITRecalibrator().transform_cdf(pit)
