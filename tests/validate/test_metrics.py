"""calipers.validate metrics: agreement with the neutral benchmark metrics, and the NaN policy."""
import sys
from pathlib import Path

import numpy as np
import pytest
import qp
from scipy import stats

from calipers.validate import grid_pdfs, pz_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pzmetrics  # noqa: E402


def random_ensemble(n=500, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.2, 2.5, (n, 3))
    stds = rng.uniform(0.02, 0.2, (n, 3))
    weights = rng.dirichlet(np.ones(3), n)
    comp = np.array([rng.choice(3, p=w) for w in weights])
    ztrue = rng.normal(means[np.arange(n), comp], stds[np.arange(n), comp])
    return qp.Ensemble(qp.mixmod, data=dict(means=means, stds=stds, weights=weights)), np.clip(ztrue, 0.01, 2.99)


def test_agrees_with_neutral_benchmark_metrics():
    ens, z = random_ensemble()
    ours = pz_metrics(ens, z)
    ref = pzmetrics.metrics(pzmetrics.grid_pdfs(ens), z)
    assert ours["n_invalid"] == 0 and ours["n"] == 500
    for key in ("cde_loss", "pit_ks", "pit_cvm", "cov68", "cov95", "sigma_iqr", "bias", "outlier_015",
                "outlier_3sig", "pit_outlier"):
        assert ours[key] == pytest.approx(float(ref[key]), rel=1e-9, abs=1e-12), key
    # the neutral CRPS takes the step at grid points with the trapezoid rule; ours is exact
    assert ours["crps"] == pytest.approx(float(ref["crps"]), rel=1e-3)


def test_truths_outside_the_grid_are_counted_with_pit_0_or_1():
    ens, z = random_ensemble(n=300, seed=5)
    z = z.copy()
    z[:4] = [-0.2, -0.1, 3.5, 4.0]
    m = pz_metrics(ens, z)
    assert m["n_truth_below_grid"] == 2 and m["n_truth_above_grid"] == 2 and m["n_invalid"] == 0
    ref = pzmetrics.metrics(pzmetrics.grid_pdfs(ens), z)
    assert m["pit_outlier"] == pytest.approx(ref["pit_outlier"]) and m["pit_outlier"] >= 4 / 300
    assert m["cde_loss"] == pytest.approx(ref["cde_loss"], rel=1e-12)


def test_calibrated_truths_give_uniform_pit():
    ens, z = random_ensemble(n=3000, seed=1)
    m = pz_metrics(ens, z)
    assert m["pit_ks_p"] > 0.001
    assert abs(m["cov68"] - 0.68) < 0.03 and abs(m["cov95"] - 0.95) < 0.02


def test_nan_rows_are_counted_not_zero_filled():
    ens, z = random_ensemble(n=200, seed=2)
    means = ens.objdata["means"].copy()
    means[5] = np.nan
    bad = qp.Ensemble(qp.mixmod, data=dict(means=means, stds=ens.objdata["stds"], weights=ens.objdata["weights"]))
    z = z.copy()
    z[7] = np.nan
    m = pz_metrics(bad, z)
    assert m["n_invalid"] == 2 and m["n"] == 200
    keep = np.ones(200, bool)
    keep[[5, 7]] = False
    clean = pz_metrics(ens[np.flatnonzero(keep)], z[keep])
    assert m["cde_loss"] == pytest.approx(clean["cde_loss"])


def test_length_mismatch_is_an_error():
    ens, z = random_ensemble(n=10)
    with pytest.raises(ValueError, match="10 distributions but 9"):
        pz_metrics(ens, z[:9])


def test_one_row_ensembles_read_back_from_qp_files(tmp_path):
    ens, z = random_ensemble(n=1, seed=6)
    ens.write_to(str(tmp_path / "one.hdf5"))
    back = qp.read(str(tmp_path / "one.hdf5"))
    grid = np.linspace(0, 3, 301)
    d = {k: np.reshape(ens.objdata[k], (1, -1)) for k in ("weights", "means", "stds")}
    expected = sum(w * stats.norm.pdf(grid, m, s) for w, m, s in zip(d["weights"][0], d["means"][0], d["stds"][0]))
    expected /= np.trapezoid(expected, grid)
    interp = qp.Ensemble(qp.interp, data=dict(xvals=grid, yvals=expected[None, :]))
    interp.write_to(str(tmp_path / "one_interp.hdf5"))
    for e in (back, qp.read(str(tmp_path / "one_interp.hdf5"))):
        pdfs, valid = grid_pdfs(e, grid)
        assert pdfs.shape == (1, 301) and valid.tolist() == [True]
        np.testing.assert_allclose(pdfs[0], expected, rtol=1e-6, atol=1e-12)


def test_binned_point_metrics_exact_hand_made_case():
    """ztrue = 0 makes dz/(1+z) = zphot, so each bin's statistics are known by hand."""
    from calipers.validate.metrics import binned_point_metrics

    edges = [-np.inf, 22.0, 23.0, np.inf]
    #                 bin 0 (< 22)      bin 1 (22..23)             bin 2 (>= 23)     no bin  bin 2, invalid
    values = np.array([21.0, 21.5,     22.0, 22.5, 22.5, 22.9,    23.0, 30.0,       np.nan, 24.0])
    zphot = np.array([0.1, -0.2,       0.0, 0.04, 0.2, -0.4,      0.01, 0.01,       0.5, np.nan])
    ztrue = np.zeros(10)
    out = binned_point_metrics(zphot, ztrue, values, edges)
    np.testing.assert_array_equal(out["n"], [2, 4, 2])
    np.testing.assert_array_equal(out["n_invalid"], [0, 0, 1])
    assert out["n"].sum() + out["n_invalid"].sum() == 10 - 1  # the NaN magnitude is in no bin
    # outliers |dz|/(1+z) > 0.15: -0.2 in bin 0; 0.2 and -0.4 in bin 1; none in bin 2
    np.testing.assert_allclose(out["outlier_015"], [0.5, 0.5, 0.0], rtol=0, atol=0)
    # medians: (0.1 - 0.2)/2; (0.0 + 0.04)/2; 0.01
    np.testing.assert_allclose(out["bias"], [-0.05, 0.02, 0.01], rtol=0, atol=1e-15)
    # IQR by linear interpolation: bin 0 {-0.2, 0.1}: 0.025 - (-0.125) = 0.15;
    # bin 1 {-0.4, 0, 0.04, 0.2}: q75 = 0.04 + 0.25 * 0.16 = 0.08, q25 = -0.4 + 0.75 * 0.4 = -0.1; bin 2: 0
    np.testing.assert_allclose(out["sigma_iqr"], np.array([0.15, 0.18, 0.0]) / 1.349, rtol=1e-12, atol=1e-15)
    # a redshift binning with a closed last bin: z = 1 is in the last bin, z = 1.5 and z = -0.1 in none
    z = np.array([0.0, 0.2, 0.5, 1.0, 1.5, -0.1])
    byz = binned_point_metrics(z, z, z, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(byz["n"], [2, 2])
    np.testing.assert_array_equal(byz["outlier_015"], [0.0, 0.0])
    # an empty bin has counts 0 and NaN statistics; a non-finite value is in no bin even with infinite edges
    empty = binned_point_metrics(np.array([0.3]), np.array([0.0]), np.array([np.inf]), [-np.inf, 0.0, np.inf])
    np.testing.assert_array_equal(empty["n"] + empty["n_invalid"], [0, 0])
    assert np.all(np.isnan(empty["sigma_iqr"])) and np.all(np.isnan(empty["outlier_015"]))
    with pytest.raises(ValueError, match="increasing"):
        binned_point_metrics(z, z, z, [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="one length"):
        binned_point_metrics(z, z[:3], z, [0.0, 1.0])
