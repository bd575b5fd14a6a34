"""PZCalibrate + PZApplyCalibration recalibrate an over-dispersed p(z) so that the gate passes."""
import json

import h5py

import numpy as np
import pytest
import qp
import yaml

from calipers.core.errors import GateFailed
from conftest import leftovers, run_stage, write_catalog
from test_validation_gate import toy


def config(tmp_path, **sections):
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


@pytest.mark.parametrize("method", ["pit_global", "conformal"])
@pytest.mark.parametrize("width_factor", [0.6, 1.8])
def test_calibration_fixes_miscalibrated_widths(tmp_path, width_factor, method):
    cal_dir, test_dir = tmp_path / "cal", tmp_path / "test"
    cal_dir.mkdir()
    test_dir.mkdir()
    cal_pz, cal_truth = toy(cal_dir, n=4000, width_factor=width_factor, seed=1)
    pz, truth = toy(test_dir, n=4000, width_factor=width_factor, seed=2)
    cfg = config(tmp_path, PZCalibrate={"n_knots": 50, "method": method}, ValidationGate={"max_pit_ks": 0.03})
    with pytest.raises(GateFailed):  # miscalibrated before
        run_stage("ValidationGate", cfg, pz=pz, truth=truth, report=str(tmp_path / "before"))
    calibrator = tmp_path / "calibrator"
    run_stage("PZCalibrate", cfg, calibration_pz=cal_pz, calibration_truth=cal_truth, calibrator=str(calibrator))
    kind = {"pit_global": "PITRecalibrator", "conformal": "ConformalPredictiveDistribution"}[method]
    assert json.loads((calibrator / "calibrator.json").read_text())["kind"] == kind
    out = tmp_path / "calibrated.hdf5"
    run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), catalog=truth, calibrated_pz=str(out))
    ens = qp.read(str(out))
    assert ens.npdf == 4000
    run_stage("ValidationGate", cfg, pz=str(out), truth=truth, report=str(tmp_path / "after"))
    after = json.loads((tmp_path / "after" / "report.json").read_text())["metrics"]
    assert after["pit_ks"] < 0.03 and abs(after["cov68"] - 0.68) < 0.03
    assert not leftovers(tmp_path)


def test_apply_is_chunk_independent(tmp_path):
    pz, truth = toy(tmp_path, n=500, width_factor=1.5, seed=3)
    calibrator = tmp_path / "calibrator"
    cfg = config(tmp_path, PZCalibrate={"n_knots": 20})
    run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(calibrator))
    outs = []
    for chunk in (64, 10_000):
        c = config(tmp_path, PZApplyCalibration={"chunk_size": chunk})
        out = tmp_path / f"out{chunk}.hdf5"
        run_stage("PZApplyCalibration", c, pz=pz, calibrator=str(calibrator), catalog=truth, calibrated_pz=str(out))
        outs.append(qp.read(str(out)).objdata["yvals"])
    np.testing.assert_array_equal(outs[0], outs[1])


def test_calibrate_rejects_nan_rows(tmp_path):
    pz, truth = toy(tmp_path, n=300, nan_rows=[7])
    cfg = config(tmp_path)
    with pytest.raises(ValueError, match="row 7"):
        run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(tmp_path / "c"))
    assert not (tmp_path / "c").exists() and not leftovers(tmp_path)


def local_toy(tmp_path, n, seed):
    """Calibrated widths times 0.5 where x < 0 and times 2 where x >= 0: opposite errors that a
    global remapping averages away."""
    rng = np.random.default_rng(seed)
    z = rng.gamma(4.0, 0.2, n).clip(0.02, 2.9)
    x = rng.uniform(-1, 1, n)
    sigma = 0.03 * (1 + z)
    centre = z + rng.normal(0, sigma)
    ens = qp.Ensemble(qp.mixmod, data={"means": centre[:, None], "weights": np.ones((n, 1)),
                                       "stds": (np.where(x < 0, 0.5, 2.0) * sigma)[:, None]})
    tmp_path.mkdir(exist_ok=True)
    ens.write_to(str(tmp_path / "pz.hdf5"))
    return str(tmp_path / "pz.hdf5"), write_catalog(tmp_path / "cat.hdf5", {"redshift": z, "x": x}), x


def test_local_calibration_stage_fixes_each_region(tmp_path):
    from calipers.validate.metrics import pit_tests, pit_values

    cal_pz, cal_cat, _ = local_toy(tmp_path / "cal", 5000, 1)
    pz, cat, x = local_toy(tmp_path / "test", 4000, 2)
    cfg = config(tmp_path, PZCalibrate={"method": "pit_local", "feature_columns": ["x"], "n_members": 2,
                                        "n_components": 3, "hidden": 32})
    calibrator = tmp_path / "calibrator"
    run_stage("PZCalibrate", cfg, calibration_pz=cal_pz, calibration_truth=cal_cat, calibrator=str(calibrator))
    assert (calibrator / "weights.pt").exists()
    out = tmp_path / "calibrated.hdf5"
    run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), catalog=cat, calibrated_pz=str(out))
    ens = qp.read(str(out))
    zgrid = np.asarray(ens.metadata["xvals"]).ravel()
    with h5py.File(cat) as f:
        ztrue = f["photometry/redshift"][:]
    pit = pit_values(ens.objdata["yvals"], zgrid, ztrue)
    for side in (x < 0, x >= 0):
        assert pit_tests(pit[side])["pit_ks"] < 0.05


def test_apply_rejects_catalog_of_other_length(tmp_path):
    pz, truth = toy(tmp_path, n=300, width_factor=1.5, seed=3)
    calibrator = tmp_path / "calibrator"
    cfg = config(tmp_path, PZCalibrate={"n_knots": 20})
    run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(calibrator))
    short = write_catalog(tmp_path / "short.hdf5", {"redshift": np.ones(299)})
    with pytest.raises(ValueError, match="300 p\\(z\\) but the catalog .*short.hdf5 has 299 rows"):
        run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), catalog=short,
                  calibrated_pz=str(tmp_path / "o.hdf5"))
    assert not (tmp_path / "o.hdf5").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("method", ["pit_global", "pit_local"])
def test_apply_over_two_ranks_equals_serial(tmp_path, method):
    from calipers.stages import PZApplyCalibration
    from conftest import run_as_ranks

    pz, truth = toy(tmp_path, n=600, width_factor=1.5, seed=4)
    with h5py.File(truth, "a") as f:  # a feature for the local method
        f["photometry/x"] = np.linspace(0, 1, 600)
    calibrator = tmp_path / "calibrator"
    cal = {"n_knots": 20, "method": method, "feature_columns": ["x"], "n_members": 1, "max_epochs": 5, "hidden": 8}
    cfg = config(tmp_path, PZCalibrate=cal, PZApplyCalibration={"chunk_size": 64})
    run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(calibrator))
    serial, mpi = tmp_path / "serial.hdf5", tmp_path / "mpi.hdf5"
    run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), catalog=truth, calibrated_pz=str(serial))
    run_as_ranks(PZApplyCalibration, {"pz": pz, "calibrator": str(calibrator), "catalog": truth,
                                      "calibrated_pz": str(mpi), "config": cfg})
    a, b = qp.read(str(serial)), qp.read(str(mpi))
    np.testing.assert_array_equal(a.objdata["yvals"], b.objdata["yvals"])
    assert not leftovers(tmp_path)


# ------------------------------------------------------------------ importance weights (issue 17, item 4b)
TINY_LOCAL = {"feature_columns": ["x"], "n_members": 1, "max_epochs": 5, "hidden": 8, "n_components": 2}


def weighted_toy(tmp_path, n=600, weights=None, seed=4, name="truth_w.hdf5"):
    """The toy's p(z) and truth, plus a copy of the truth catalog with a feature ``x`` and an
    importance-weight column ``shift_weight`` (``weights(z)``, default exp(2 z): a target at
    higher redshift than the labelled sample)."""
    pz, truth = toy(tmp_path, n=n, width_factor=1.5, seed=seed)
    with h5py.File(truth, "a") as f:
        f["photometry/x"] = np.linspace(0, 1, n)
        z = f["photometry/redshift"][:]
    w = np.exp(2 * z) if weights is None else np.asarray(weights(z), dtype=float)
    columns = {"redshift": z, "x": np.linspace(0, 1, n), "shift_weight": w}
    return pz, truth, write_catalog(tmp_path / name, columns), z, w


def calibrate(tmp_path, pz, truth, tag, **options):
    cfg = config(tmp_path, PZCalibrate={"n_knots": 20, **options})
    out = tmp_path / f"cal_{tag}"
    run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(out))
    return out


def calibration_pit(pz, z, nzbins=601):
    from calipers.core.qpio import read_qp_rows
    from calipers.validate.metrics import grid_pdfs, pit_values

    zgrid = np.linspace(0.0, 3.0, nzbins)
    pdfs, _ = grid_pdfs(read_qp_rows(pz, 0, len(z)), zgrid)
    return pit_values(pdfs, zgrid, z)


@pytest.mark.parametrize("method", ["pit_global", "conformal", "pit_local"])
def test_unweighted_calibrator_unchanged_by_a_weight_column(tmp_path, method):
    """weight_column unset: the calibrator is byte for byte the one fitted on a catalog without
    the column, and records no weights."""
    pz, truth, truth_w, _, _ = weighted_toy(tmp_path)
    opts = {"method": method, **TINY_LOCAL}
    plain = calibrate(tmp_path, pz, truth, "plain", **opts)
    ignored = calibrate(tmp_path, pz, truth_w, "ignored", **opts)
    empty = calibrate(tmp_path, pz, truth_w, "empty", weight_column="", **opts)
    files = ["calibrator.json"] + (["weights.pt"] if method == "pit_local" else [])
    for f in files:
        assert (ignored / f).read_bytes() == (plain / f).read_bytes() == (empty / f).read_bytes()
    assert "importance_weights" not in json.loads((plain / "calibrator.json").read_text())
    assert "weight_ess" not in json.loads((ignored / "provenance.json").read_text())


@pytest.mark.parametrize("method", ["pit_global", "conformal"])
def test_unit_weights_give_the_unweighted_calibrator(tmp_path, method):
    from calipers.core.calibrators import load_calibrator

    pz, truth, truth_w, _, _ = weighted_toy(tmp_path, weights=lambda z: np.ones_like(z))
    plain = calibrate(tmp_path, pz, truth, "plain", method=method)
    ones = calibrate(tmp_path, pz, truth_w, "ones", method=method, weight_column="shift_weight")
    _, a, _ = load_calibrator(str(plain))
    _, b, spec = load_calibrator(str(ones))
    assert spec["importance_weights"]["ess"] == pytest.approx(600) and spec["importance_weights"]["ess_fraction"] == 1
    cdf = np.linspace(0, 1, 1001)
    if method == "pit_global":
        np.testing.assert_allclose(b.knots_pit, a.knots_pit, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(b.knots_g, a.knots_g)
        np.testing.assert_allclose(b.transform_cdf(cdf), a.transform_cdf(cdf), rtol=0, atol=1e-12)
    else:  # weighted conformal with equal weights is the unweighted one bit for bit
        np.testing.assert_array_equal(b.scores, a.scores)
        np.testing.assert_array_equal(b.transform_cdf(cdf), a.transform_cdf(cdf))


@pytest.mark.parametrize("method", ["pit_global", "conformal", "pit_local"])
def test_tilted_weights_change_the_calibrator_and_round_trip(tmp_path, method):
    """exp(2z) weights: the fit differs from the unweighted one, equals the library fit on the
    same rows' weights (scaled to mean 1), is recorded (column, ESS) and loads with its weights."""
    from calipers.calibrate import ConformalPredictiveDistribution, PITRecalibrator, effective_sample_size
    from calipers.core.calibrators import load_calibrator

    pz, truth, truth_w, z, w = weighted_toy(tmp_path)
    opts = {"method": method, **TINY_LOCAL}
    plain = calibrate(tmp_path, pz, truth, "plain", **opts)
    tilted = calibrate(tmp_path, pz, truth_w, "tilted", weight_column="shift_weight", **opts)
    _, a, _ = load_calibrator(str(plain))
    _, b, spec = load_calibrator(str(tilted))
    record = spec["importance_weights"]
    assert record["column"] == "shift_weight" and record["catalog"].endswith("truth_w.hdf5")
    assert record["ess"] == pytest.approx(effective_sample_size(w)) and record["ess"] < 0.5 * 600
    assert record["ess_fraction"] == pytest.approx(record["ess"] / 600)
    summary = record["pit_summary"]
    assert set(summary) == {"unweighted", "weighted"} and summary["unweighted"] != summary["weighted"]
    prov = json.loads((tilted / "provenance.json").read_text())
    assert prov["weight_column"] == "shift_weight" and float(prov["weight_ess"]) == pytest.approx(record["ess"])
    pit, mean_one = calibration_pit(pz, z), w / w.mean()
    cdf = np.linspace(0, 1, 1001)
    if method == "pit_global":
        ref = PITRecalibrator(n_knots=20).fit(pit, mean_one)
        np.testing.assert_array_equal(b.knots_pit, ref.knots_pit)
        assert np.max(np.abs(b.transform_cdf(cdf) - a.transform_cdf(cdf))) > 0.01
    elif method == "conformal":
        ref = ConformalPredictiveDistribution().fit(pit, mean_one)
        np.testing.assert_array_equal(b.scores, ref.scores)
        np.testing.assert_array_equal(b.weights, ref.weights)  # the weights survive the JSON round trip
        assert np.max(np.abs(b.transform_cdf(cdf) - a.transform_cdf(cdf))) > 0.01
        # applied without test weights: the expected target weight sum w^2 / sum w for every object
        out = tmp_path / "calibrated.hdf5"
        cfg = config(tmp_path)
        run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(tilted), catalog=truth_w, calibrated_pz=str(out))
        from calipers.core.qpio import read_qp_rows
        from calipers.validate.metrics import grid_pdfs

        zgrid = np.linspace(0.0, 3.0, 601)
        pdfs, _ = grid_pdfs(read_qp_rows(pz, 0, 600), zgrid)
        np.testing.assert_allclose(qp.read(str(out)).objdata["yvals"], b.transform_pdfs(pdfs, zgrid),
                                   rtol=1e-6, atol=1e-9)  # qp re-normalises interp yvals
    else:
        assert (tilted / "weights.pt").read_bytes() != (plain / "weights.pt").read_bytes()
        x, grid = np.linspace(0, 1, 5)[:, None], np.tile(cdf, (5, 1))
        assert np.max(np.abs(b.transform_cdf(grid, x) - a.transform_cdf(grid, x))) > 1e-3
    assert not leftovers(tmp_path)


def shifted_toy(tmp_path, n, seed, target):
    """Widths x0.6 below z = 0.8 and x2 above: the PIT of the labelled sample (mostly low z)
    differs from that of a target at higher z. ``target``: z from the tilted population
    exp(2z) gamma(4, 0.2) = gamma(4, 1/3)."""
    rng = np.random.default_rng(seed)
    z = rng.gamma(4.0, 1 / 3 if target else 0.2, n).clip(0.02, 2.9)
    sigma = 0.03 * (1 + z)
    centre = z + rng.normal(0, sigma)
    ens = qp.Ensemble(qp.mixmod, data=dict(means=centre[:, None], weights=np.ones((n, 1)),
                                           stds=(np.where(z < 0.8, 0.6, 2.0) * sigma)[:, None]))
    tmp_path.mkdir(exist_ok=True)
    ens.write_to(str(tmp_path / "pz.hdf5"))
    return str(tmp_path / "pz.hdf5"), write_catalog(tmp_path / "truth.hdf5", {"redshift": z, "shift_weight": np.exp(2 * z)})


def test_weighted_calibration_targets_the_target_population(tmp_path):
    """Calibrated on a low-z labelled sample, applied to a high-z target: with the importance
    weights the target's 68% intervals cover 68%; unweighted they do not."""
    from calipers.validate.metrics import coverage, pit_values

    cal_pz, cal_truth = shifted_toy(tmp_path / "cal", 3000, 1, target=False)
    pz, truth = shifted_toy(tmp_path / "target", 3000, 2, target=True)
    with h5py.File(truth) as f:
        ztrue = f["photometry/redshift"][:]
    cov = {}
    for tag, weight_column in (("plain", ""), ("weighted", "shift_weight")):
        cal = calibrate(tmp_path, cal_pz, cal_truth, tag, method="pit_global", weight_column=weight_column)
        out = tmp_path / f"{tag}.hdf5"
        run_stage("PZApplyCalibration", config(tmp_path), pz=pz, calibrator=str(cal), catalog=truth,
                  calibrated_pz=str(out))
        ens = qp.read(str(out))
        pit = pit_values(ens.objdata["yvals"], np.asarray(ens.metadata["xvals"]).ravel(), ztrue)
        cov[tag] = coverage(pit)[0.68]
    # the weighted fit rests on ESS ~ 290 objects: +-0.03 of sampling noise in its coverage
    assert abs(cov["weighted"] - 0.68) < 0.05 and cov["plain"] - 0.68 > 0.1


@pytest.mark.parametrize("value, row, what", [(np.nan, 13, "not finite"), (np.inf, 40, "not finite"),
                                              (-0.5, 21, "negative")])
def test_bad_weights_name_file_column_and_row(tmp_path, value, row, what):
    def bad(z):
        w = np.exp(2 * z)
        w[row] = value
        return w

    pz, _, truth_w, _, _ = weighted_toy(tmp_path, weights=bad)
    with pytest.raises(ValueError, match=f"truth_w.hdf5: importance-weight column 'shift_weight'.*{what}.*"
                                         f"first at row {row}\\b"):
        calibrate(tmp_path, pz, truth_w, "bad", weight_column="shift_weight")
    assert not (tmp_path / "cal_bad").exists() and not leftovers(tmp_path)


def test_missing_or_zero_weights_are_errors(tmp_path):
    pz, truth, truth_w, _, _ = weighted_toy(tmp_path, weights=lambda z: np.zeros_like(z))
    with pytest.raises(ValueError, match="truth_w.hdf5: importance-weight column 'shift_weight'.*zero in every row"):
        calibrate(tmp_path, pz, truth_w, "zero", weight_column="shift_weight")
    with pytest.raises(ValueError, match="truth.hdf5.*shift_weight"):  # the plain catalog has no such column
        calibrate(tmp_path, pz, truth, "missing", weight_column="shift_weight")
    assert not leftovers(tmp_path)


def test_collapsed_weights_raise_the_ess_error(tmp_path):
    from calipers.calibrate import WeightCollapseError

    def collapsed(z):
        w = np.full_like(z, 1e-4)
        w[5] = 1.0
        return w

    pz, _, truth_w, _, _ = weighted_toy(tmp_path, weights=collapsed)
    with pytest.raises(WeightCollapseError, match="stage PZCalibrate: .*truth_w.hdf5: importance-weight column "
                                                  "'shift_weight'.*effective sample size .*row 5 .*min_ess_fraction"):
        calibrate(tmp_path, pz, truth_w, "collapsed", method="conformal", weight_column="shift_weight")
    assert not (tmp_path / "cal_collapsed").exists() and not leftovers(tmp_path)
    # the floor is a choice: lowered knowingly, the fit goes ahead and records the ESS
    cal = calibrate(tmp_path, pz, truth_w, "allowed", method="conformal", weight_column="shift_weight",
                    min_ess_fraction=0.0)
    assert json.loads((cal / "calibrator.json").read_text())["importance_weights"]["ess"] < 2


def test_weight_options_are_checked(tmp_path):
    from calipers.core.errors import ConfigError
    from calipers.stages import PZCalibrate

    pz, _, truth_w, _, _ = weighted_toy(tmp_path)
    for bad, match in (({"min_ess_fraction": 1.5}, "min_ess_fraction must be in"),
                       ({"weight_column": "redshift"}, "weight_column and redshift_column")):
        with pytest.raises(ConfigError, match=match):
            calibrate(tmp_path, pz, truth_w, "bad", **bad)
    cfg = {"redshift_column": "redshift", "weight_column": "shift_weight", "method": "conformal",
           "hdf5_groupname": "photometry"}
    assert PZCalibrate.required_columns(cfg)["calibration_truth"] == ("photometry", ["redshift", "shift_weight"])


def test_weighted_conformal_calibrator_without_its_weights_is_refused(tmp_path):
    from calipers.core.calibrators import load_calibrator
    from calipers.core.errors import FileFormatError

    pz, _, truth_w, _, _ = weighted_toy(tmp_path)
    cal = calibrate(tmp_path, pz, truth_w, "w", method="conformal", weight_column="shift_weight")
    path = cal / "calibrator.json"
    spec = json.loads(path.read_text())
    del spec["weights"]
    path.write_text(json.dumps(spec))
    with pytest.raises(FileFormatError, match="calibrator.json: a conformal calibrator fitted with importance "
                                              "weights \\(column 'shift_weight'\\) must store one weight"):
        load_calibrator(str(cal))


def test_pit_summary_against_scipy_and_repeated_rows():
    from scipy import stats

    from calipers.validate.metrics import pit_summary

    rng = np.random.default_rng(0)
    pit = rng.beta(2, 2, 200)
    s = pit_summary(pit)
    assert s["pit_ks"] == pytest.approx(stats.kstest(pit, "uniform").statistic, abs=1e-12)
    assert s["cov68"] == pytest.approx(np.mean((pit > 0.16) & (pit < 0.84)))
    counts = rng.integers(0, 4, 200)  # integer weights = rows repeated
    weighted, repeated = pit_summary(pit, counts), pit_summary(np.repeat(pit, counts))
    for k in repeated:
        assert weighted[k] == pytest.approx(repeated[k], abs=1e-12)
