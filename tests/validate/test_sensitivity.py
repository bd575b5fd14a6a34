"""photometry_sensitivity against exact cases: a predictor linear in the magnitudes moves its point
estimates and n(z) mean by exactly a_b x offset under a band-b zero-point shift, by zero under a
shift of a band it ignores, and by noise whose mean shift is zero within the analytic standard
error; non-detections and errors reach the predictor untouched."""
from __future__ import annotations

import numpy as np
import pytest

from calipers.photoz.mixture import mixture_point_estimates
from calipers.photoz.preprocess import nondetected
from calipers.validate.sensitivity import photometry_sensitivity

BANDS = list("ugrizy")
A = np.array([0.0, 0.05, -0.03, 0.0, 0.1, 0.02])   # dz/dm per band; u and i are ignored
MIX_W = np.array([0.3, 0.7])
MIX_OFFSET = np.array([-0.1, 0.2])
MIX_S = np.array([0.05, 0.1])


class LinearPredictor:
    """A two-component mixture translated by z_lin = 0.8 + sum_b a_b (m_b - 22) (non-detections
    contribute 0), so every point estimate, the mean and the 68% width move exactly with z_lin.
    Keeps a copy of every input it was given."""

    def __init__(self, a=A):
        self.a, self.calls = np.asarray(a), []

    def z_lin(self, mags):
        det = ~nondetected(mags)
        return 0.8 + np.where(det, mags.astype(np.float64) - 22.0, 0.0) @ self.a

    def __call__(self, mags, errs):
        self.calls.append((mags.copy(), errs.copy()))
        z = self.z_lin(mags)
        n = len(mags)
        return (np.tile(MIX_W, (n, 1)), z[:, None] + MIX_OFFSET[None, :], np.tile(MIX_S, (n, 1)))


def photometry(n, seed=0):
    rng = np.random.default_rng(seed)
    mags = rng.uniform(20.0, 25.0, size=(n, len(BANDS)))
    errs = rng.uniform(0.01, 0.2, size=(n, len(BANDS)))
    return mags, errs


def test_zero_point_shift_of_a_linear_predictor_is_exact():
    mags, errs = photometry(300)
    pred = LinearPredictor()
    res = photometry_sensitivity(pred, mags, errs, BANDS, zero_point=0.02, n_noise=0)
    assert [r.name for r in res.rows] == [f"{b}{s}0.02" for b in BANDS + ["all"] for s in "+-"]
    w, mu, s = pred(mags, errs)
    zp0 = mixture_point_estimates(w, mu, s, which=("zmedian",))["zmedian"]
    assert res.nz_mean == pytest.approx(float((mu * w).sum(1).mean()), abs=1e-12)
    for j, b in enumerate(BANDS + ["all"]):
        slope = A[j] if b != "all" else A.sum()
        for sign in (+1, -1):
            row = res.row(f"{b}{'+' if sign > 0 else '-'}0.02")
            expect = sign * slope * 0.02
            assert row.offset == sign * 0.02 and row.band == b and row.kind == "zero_point" and row.n_draws == 1
            assert row.nz_mean_shift == pytest.approx(expect, abs=1e-12)          # the mean moves exactly
            rel = np.abs(expect) / (1 + zp0)                                      # every median moves by a_b * 0.02
            assert row.point_shift_median == pytest.approx(np.median(rel), abs=1e-8)
            assert row.point_shift_p68 == pytest.approx(np.percentile(rel, 68), abs=1e-8)
            assert row.point_shift_p95 == pytest.approx(np.percentile(rel, 95), abs=1e-8)
            assert row.point_bias == pytest.approx(np.mean(expect / (1 + zp0)), abs=1e-8)
            assert abs(row.width_change_median) < 1e-7                            # translation keeps the width
            if slope == 0:                                                        # u and i: nothing moves
                assert row.nz_mean_shift == 0 and row.point_shift_p95 < 1e-9
    assert res.worst_band == "z"                                                  # |a_z| = 0.1 is the largest
    assert res.worst_nz_mean.band == "all"                                        # sum a = 0.14
    d = res.to_dict()
    assert d["worst_band"] == "z" and d["max_abs_nz_mean_shift"] == pytest.approx(A.sum() * 0.02, abs=1e-12)
    assert len(d["rows"]) == 14 and d["rows"][0]["name"] == "u+0.02"


def test_other_offsets_and_no_all_bands_row():
    mags, errs = photometry(50)
    res = photometry_sensitivity(LinearPredictor(), mags, errs, BANDS, zero_point=0.05, n_noise=0, all_bands=False)
    assert [r.name for r in res.rows][-2:] == ["y+0.05", "y-0.05"]
    assert res.row("g-0.05").nz_mean_shift == pytest.approx(-0.05 * 0.05, abs=1e-12)


def test_noise_of_a_linear_predictor_has_zero_mean_shift_within_its_standard_error():
    mags, errs = photometry(20_000, seed=3)
    res = photometry_sensitivity(LinearPredictor(), mags, errs, BANDS, zero_point=0, n_noise=2, seed=5)
    (row,) = res.rows
    assert row.name == "noise" and row.kind == "noise" and row.n_draws == 2
    # per galaxy and draw, dz = sum_b a_b err_b eps_b: the mean over n galaxies x 2 draws has this error
    per_galaxy_var = (A ** 2 * errs ** 2).sum(1)
    analytic = np.sqrt(2 * per_galaxy_var.sum()) / (2 * len(mags))
    assert row.nz_mean_shift_error == pytest.approx(analytic, rel=0.03)
    assert abs(row.nz_mean_shift) < 4 * analytic
    # dz_p / (1 + z_p) with z_p > 0 has a smaller spread than dz: its mean is zero within the same bound
    assert abs(row.point_bias) < 4 * analytic
    assert row.point_shift_p95 > row.point_shift_p68 > row.point_shift_median > 0
    assert abs(row.width_change_median) < 1e-7


def test_same_seed_same_numbers_other_seed_other_numbers():
    mags, errs = photometry(500)
    a = photometry_sensitivity(LinearPredictor(), mags, errs, BANDS, seed=7).to_dict()
    b = photometry_sensitivity(LinearPredictor(), mags, errs, BANDS, seed=7).to_dict()
    c = photometry_sensitivity(LinearPredictor(), mags, errs, BANDS, seed=8).to_dict()
    assert a == b
    assert a["rows"][0] != c["rows"][0] and a["rows"][1:] == c["rows"][1:]


def test_non_detections_and_errors_reach_the_predictor_untouched():
    mags, errs = photometry(200)
    mags[::7, 0] = 99.0
    mags[1::11, 2] = -99.0
    mags[2::13, 4] = np.nan
    mags[3::17, 5] = np.inf
    errs[4::5, 1] = np.nan          # a detected magnitude with a missing error: not redrawn
    errs[5::9, 3] = -1.0
    mags0, errs0 = mags.copy(), errs.copy()
    pred = LinearPredictor()
    res = photometry_sensitivity(pred, mags, errs, BANDS, n_noise=2)
    np.testing.assert_array_equal(mags, mags0)                    # the caller's arrays are not changed
    np.testing.assert_array_equal(errs, errs0)
    nd = nondetected(mags0)
    no_err = ~nd & ~(np.isfinite(errs0) & (errs0 > 0))
    assert len(pred.calls) == 1 + 2 + 14
    for i, (m, e) in enumerate(pred.calls):
        np.testing.assert_array_equal(e, errs0)                   # errors are never changed
        np.testing.assert_array_equal(m[nd], mags0[nd])           # NaN == NaN here, 99 stays 99, inf stays inf
        if i in (1, 2):                                           # noise draws: every usable detection redrawn
            np.testing.assert_array_equal(m[no_err], mags0[no_err])
            assert np.all(m[~nd & ~no_err] != mags0[~nd & ~no_err])
    assert res.n_nondetected == {"u": 29, "g": 0, "r": 19, "i": 0, "z": 16, "y": 12}
    assert res.n_not_redrawn["g"] == 40 and res.n_not_redrawn["i"] == 22
    # a band-u shift moves only the detected galaxies: the mean moves by a_u-weighted share
    pred_u = LinearPredictor(a=[0.1, 0, 0, 0, 0, 0])
    res_u = photometry_sensitivity(pred_u, mags, errs, BANDS, n_noise=0)
    detected_u = (~nd[:, 0]).mean()
    assert res_u.row("u+0.02").nz_mean_shift == pytest.approx(0.1 * 0.02 * detected_u, abs=1e-12)
    shifted = pred_u.calls[1][0]
    np.testing.assert_allclose(shifted[~nd[:, 0], 0], mags0[~nd[:, 0], 0] + 0.02, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(shifted[:, 1:], mags0[:, 1:])


def test_float32_photometry_stays_float32():
    mags, errs = photometry(40)
    pred = LinearPredictor()
    photometry_sensitivity(pred, mags.astype(np.float32), errs.astype(np.float32), BANDS)
    assert all(m.dtype == np.float32 and e.dtype == np.float32 for m, e in pred.calls)


def test_bad_input_and_bad_predictor_output_are_errors():
    mags, errs = photometry(20)
    pred = LinearPredictor()
    with pytest.raises(ValueError, match="shape"):
        photometry_sensitivity(pred, mags, errs[:, :5], BANDS)
    with pytest.raises(ValueError, match="shape"):
        photometry_sensitivity(pred, mags, errs, BANDS[:5])
    with pytest.raises(ValueError, match="nothing to perturb"):
        photometry_sensitivity(pred, mags, errs, BANDS, zero_point=0, n_noise=0)
    with pytest.raises(ValueError, match="point"):
        photometry_sensitivity(pred, mags, errs, BANDS, point="zbest")
    with pytest.raises(ValueError, match="zero_point"):
        photometry_sensitivity(pred, mags, errs, BANDS, zero_point=-0.02)
    with pytest.raises(ValueError, match="n_noise"):
        photometry_sensitivity(pred, mags, errs, BANDS, n_noise=1.5)

    def nan_when_shifted(m, e):
        w, mu, s = pred(m, e)
        if not np.array_equal(m, mags):
            mu[3] = np.nan
        return w, mu, s

    with pytest.raises(ValueError, match="perturbation noise: 1 galaxy.*row 3"):
        photometry_sensitivity(nan_when_shifted, mags, errs, BANDS)
    with pytest.raises(ValueError, match="shapes"):
        photometry_sensitivity(lambda m, e: tuple(a[:-1] for a in pred(m, e)), mags, errs, BANDS)
