"""R^2, RMSE and efficiency against exact cases."""
from __future__ import annotations

import numpy as np
import pytest

from calipers.spectra.bound import bound_comparison, r2_score, rmse


def test_r2_and_rmse_exact_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])  # SST = 5
    assert r2_score(y, y) == 1.0
    assert r2_score(np.full(4, 2.5), y) == 0.0  # predicting the mean
    m = y + np.array([1.0, -1.0, 1.0, -1.0])  # SSE = 4
    assert r2_score(m, y) == pytest.approx(1 - 4 / 5)
    assert rmse(m, y) == 1.0
    assert r2_score(2 * y, y) == pytest.approx(1 - 30 / 5)  # MSE form: a biased scale is penalised
    assert np.isnan(r2_score([1.0], [1.0]))
    with pytest.raises(ValueError, match="row 1"):
        r2_score([1.0, np.nan], [1.0, 2.0])


def test_bound_comparison_efficiency_and_leakage_flag():
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 5, 4000)
    snr = np.repeat([5.0, 20.0], 2000)
    # noise of known variance: the expected R^2 is 1 - s^2 / Var(y)
    s = np.where(snr == 5.0, 0.6, 0.2)
    m = y + s * rng.normal(size=y.size)
    var_y = 16 / 12
    ceilings = {"snr": {"5": 1 - 0.36 / var_y, "20": 0.9}}
    rows = bound_comparison(m, y, {"snr": snr}, ceilings, model="toy")
    by = {r["group"]: r for r in rows}
    assert set(by) == {"5", "20"} and by["5"]["n"] == 2000 and by["5"]["model"] == "toy"
    assert by["5"]["efficiency"] == pytest.approx(1.0, abs=0.05)
    assert not by["5"]["leakage"]
    # R^2 at S/N 20 is ~0.97 against a stated ceiling of 0.9: efficiency > 1.05 flags leakage
    assert by["20"]["efficiency"] > 1.05 and by["20"]["leakage"]
    rows = bound_comparison(m, y, {"snr": snr}, {})
    assert all(r["efficiency"] is None and r["r2_max"] is None and not r["leakage"] for r in rows)
    with pytest.raises(ValueError, match="group 'snr'"):
        bound_comparison(m, y, {"snr": snr[:10]}, {})


def test_group_ceilings_exact_and_band_brackets_it():
    from calipers.spectra.bound import group_ceilings

    y = np.tile([1.0, 2.0, 3.0, 4.0], 50)  # Var = 1.25 in every group
    snr = np.repeat([5.0, 20.0], 100)
    sigma = np.where(snr == 5.0, 0.5, 0.25)  # constant per group: R^2_max = 1 - s^2 / 1.25 exactly
    out = group_ceilings(sigma, y, {"snr": snr}, n_boot=100, seed=1)["snr"]
    assert out["5"]["r2_max"] == pytest.approx(1 - 0.25 / 1.25)
    assert out["20"]["r2_max"] == pytest.approx(1 - 0.0625 / 1.25)
    assert out["5"]["n"] == 100
    for row in out.values():
        assert row["lo"] <= row["r2_max"] <= row["hi"] and row["hi"] - row["lo"] < 0.1
    with pytest.raises(ValueError, match="row 3"):
        group_ceilings(np.array([0.1, 0.1, 0.1, np.nan]), np.arange(4.0), {})
