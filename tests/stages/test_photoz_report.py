"""PhotozReport: the photo-z report (point vs true z, example p(z), PIT/coverage before and after
calibration, target n(z) beside the labelled sample's, failure modes, model card with its
calibration, failure-mode and shift sections) and its gate on the target's ood fraction, on real
p(z) made by PZEstimate, PZCalibrate and PZApplyCalibration and real ShiftTest/ShiftWeights reports."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from calipers.core.errors import GateFailed, ModelMismatchError
from conftest import BANDS, GROUP, TINY_INFORM, mag_col, random_rows, run_stage, subset, write_catalog

FIGURES = ("point_vs_true", "examples", "pit_coverage", "nz", "failure_modes")
IO_TAGS = ("model", "validation_pz", "calibrated_validation_pz", "validation_catalog", "target_pz", "labelled_catalog",
           "calibrator", "shift_report", "shift_weights_report")
LOOSE = {"max_pit_ks": 1.0, "max_coverage_error": 1.0, "max_ood_fraction": 1.0}


def config(path, **sections) -> str:
    path.write_text(yaml.safe_dump({"global": {"hdf5_groupname": GROUP}, **sections}))
    return str(path)


@pytest.fixture(scope="module")
def photoz_inputs(tmp_path_factory, dc2):
    """A small model trained by PZInform on 1500 DC2 galaxies; labelled (calibration +
    validation parts) and target catalogs drawn from the other DC2 galaxies, their p(z), a
    pit_global calibrator fitted on the calibration part importance-weighted towards the target
    (ShiftWeights of the calibration part) and applied to the validation part and the target, and
    a ShiftTest of the labelled sample against the target (on_fail: warn). The target has no
    redshift column, and 20 of its galaxies are made 4 magnitudes fainter so that they fall
    outside the training support."""
    d = tmp_path_factory.mktemp("photoz_report")
    n = len(dc2["redshift"])
    train_rows = random_rows(n, 1500, seed=0)
    cal_rows = random_rows(n, 300, seed=1, exclude=train_rows)
    val_rows = random_rows(n, 200, seed=2, exclude=np.concatenate([train_rows, cal_rows]))
    tgt_rows = random_rows(n, 250, seed=3, exclude=np.concatenate([train_rows, cal_rows, val_rows]))
    train_cat = write_catalog(d / "train.hdf5", subset(dc2, train_rows))
    model = str(d / "model")
    inform = dict(TINY_INFORM, bands=BANDS, hidden=32, max_epochs=30, patience=10)
    run_stage("PZInform", config(d / "inform.yml", PZInform=inform), training_catalog=train_cat, model=model)
    cal_cat = write_catalog(d / "cal.hdf5", subset(dc2, cal_rows))
    val_cat = write_catalog(d / "val.hdf5", subset(dc2, val_rows))
    labelled = write_catalog(d / "labelled.hdf5", subset(dc2, np.sort(np.concatenate([cal_rows, val_rows]))))
    target = subset(dc2, tgt_rows, drop=("redshift",))
    for b in BANDS:
        target[mag_col(b)] = target[mag_col(b)].copy()
        target[mag_col(b)][:20] += 4.0
    tgt_cat = write_catalog(d / "target.hdf5", target)
    cfg = config(d / "cfg.yml", PZEstimate={"chunk_size": 64},
                 PZCalibrate={"method": "pit_global", "n_knots": 20, "weight_column": "shift_weight"},
                 PZApplyCalibration={"chunk_size": 64},
                 ShiftTest={"on_fail": "warn", "bands": BANDS, "max_rows": 200, "n_permutations": 20},
                 ShiftWeights={"bands": BANDS, "n_folds": 3, "clip_quantile": 0.99})
    out = {"model": model, "validation_catalog": val_cat, "labelled_catalog": labelled, "dir": d,
           "shift_report": str(d / "shift_report"), "shift_weights_report": str(d / "shift_weights_report")}
    run_stage("ShiftTest", cfg, reference_catalog=labelled, target_catalog=tgt_cat, shift_report=out["shift_report"])
    weighted_cal = str(d / "cal_weighted.hdf5")
    run_stage("ShiftWeights", cfg, labelled_catalog=cal_cat, target_catalog=tgt_cat, weighted_catalog=weighted_cal,
              shift_weights_report=out["shift_weights_report"])
    for label, cat in (("cal", cal_cat), ("val", val_cat), ("target", tgt_cat)):
        run_stage("PZEstimate", cfg, model=model, catalog=cat, pz=str(d / f"{label}_pz.hdf5"))
    run_stage("PZCalibrate", cfg, calibration_pz=str(d / "cal_pz.hdf5"), calibration_truth=weighted_cal,
              calibrator=str(d / "calibrator"))
    for label, cat in (("val", val_cat), ("target", tgt_cat)):
        run_stage("PZApplyCalibration", cfg, pz=str(d / f"{label}_pz.hdf5"), calibrator=str(d / "calibrator"),
                  catalog=cat, calibrated_pz=str(d / f"{label}_calibrated.hdf5"))
    out |= {"validation_pz": str(d / "val_pz.hdf5"), "calibrated_validation_pz": str(d / "val_calibrated.hdf5"),
            "target_pz": str(d / "target_calibrated.hdf5"), "raw_target_pz": str(d / "target_pz.hdf5"),
            "calibrator": str(d / "calibrator"), "cal_pz": str(d / "cal_pz.hdf5"), "calibration_catalog": weighted_cal}
    return out


def run_report(tmp_path, inputs, name="report", **options):
    cfg = config(tmp_path / f"{name}.yml", PhotozReport=options)
    report = tmp_path / name
    io = {k: inputs[k] for k in IO_TAGS}
    run_stage("PhotozReport", cfg, **io, photoz_report=str(report))
    return report


def ancil(path, name):
    with h5py.File(path, "r") as f:
        return f["ancil"][name][:]


def test_calibration_carries_the_ood_flags(photoz_inputs):
    """PZApplyCalibration copies the ancil: the calibrated target keeps PZEstimate's flags."""
    raw, cal = photoz_inputs["raw_target_pz"], photoz_inputs["target_pz"]
    np.testing.assert_array_equal(ancil(cal, "ood"), ancil(raw, "ood"))
    np.testing.assert_array_equal(ancil(cal, "support_score"), ancil(raw, "support_score"))


def test_report_pages_figures_card_and_ood_fraction(tmp_path, photoz_inputs):
    from calipers.core.models import load_model_and_support

    report = run_report(tmp_path, photoz_inputs, **LOOSE)
    data = json.loads((report / "report.json").read_text())
    assert data["passed"] is True
    page = (report / "index.html").read_text()
    for fig in FIGURES:
        assert (report / f"{fig}.png").stat().st_size > 0
        assert f"<img src='{fig}.png'" in page
    assert sorted(data["figures"]) == sorted(f"{f}.png" for f in FIGURES)
    # the model card, in the page and (as stored with the model) in report.json
    card = load_model_and_support(photoz_inputs["model"])[2]
    assert card and {k: v for k, v in data["model_card"].items() if k in card} == json.loads(json.dumps(card))
    assert set(data["model_card"]) == set(card) | {"calibration", "failure_modes", "shift"}
    assert "<h2>Model card</h2>" in page and "support_region" in page and "training_data" in page
    # the ood fraction is the one of the target's ancil, and it is not trivial here
    ood = ancil(photoz_inputs["target_pz"], "ood")
    m = data["metrics"]
    assert m["target_ood_fraction"] == pytest.approx(np.mean(ood != 0), abs=0)
    assert m["target_n"] == len(ood) == 250 and m["target_n_ood"] == int(np.sum(ood != 0)) >= 20
    check = {c["name"]: c for c in data["checks"]}["target_ood_fraction"]
    assert check["value"] == m["target_ood_fraction"] and check["threshold"] == 1.0
    assert {"calibrated_validation_pit_ks", "calibrated_validation_cov68", "calibrated_validation_cov95",
            "calibrated_validation_invalid_fraction", "target_invalid_fraction"} <= {c["name"] for c in data["checks"]}
    # n(z): the target's stacked p(z) integrate to 1 on their grid, with and without the ood galaxies
    nz = data["nz"]
    zgrid = np.asarray(nz["zgrid"])
    assert len(zgrid) == 601 and zgrid[-1] == 3.0
    for key in ("target", "target_in_support", "validation_stacked"):
        assert np.trapezoid(nz[key], zgrid) == pytest.approx(1.0, abs=1e-12)
        assert np.all(np.asarray(nz[key]) >= 0)
    assert not np.allclose(nz["target"], nz["target_in_support"])
    assert np.sum(np.asarray(nz["labelled_density"]) * np.diff(nz["labelled_edges"])) == pytest.approx(1.0)
    assert m["labelled_n"] == 500 and m["validation_n"] == 200
    # calibration is measured before and after, on the validation part
    assert m["raw_pit_ks"] != m["calibrated_pit_ks"]
    # examples: six rows spread over the validation part's redshift range, with their truth
    with h5py.File(photoz_inputs["validation_catalog"], "r") as f:
        z = f[GROUP]["redshift"][:]
    rows = data["examples"]["rows"]
    assert len(rows) == 6 == len(set(rows))
    np.testing.assert_array_equal(data["examples"]["ztrue"], z[rows])
    assert min(z[rows]) < np.quantile(z, 0.25) and max(z[rows]) > np.quantile(z, 0.75)


def test_gate_fails_above_max_ood_fraction_and_warns_when_asked(tmp_path, photoz_inputs):
    measured = float(np.mean(ancil(photoz_inputs["target_pz"], "ood") != 0))
    assert measured > 0
    with pytest.raises(GateFailed) as err:
        run_report(tmp_path, photoz_inputs, **(LOOSE | {"max_ood_fraction": measured / 2}))
    assert len(err.value.failures) == 1 and err.value.failures[0].startswith("target_ood_fraction")
    assert not (tmp_path / "report").exists()
    failed = json.loads((tmp_path / "report.FAILED" / "report.json").read_text())
    assert failed["passed"] is False and failed["metrics"]["target_ood_fraction"] == measured
    report = run_report(tmp_path, photoz_inputs, name="warned", on_fail="warn",
                        **(LOOSE | {"max_ood_fraction": measured / 2}))
    assert json.loads((report / "report.json").read_text())["passed"] is False
    assert "FAILED" in (report / "index.html").read_text()
    # at the measured fraction exactly, the gate passes
    run_report(tmp_path, photoz_inputs, name="exact", **(LOOSE | {"max_ood_fraction": measured}))


def test_pit_check_judges_the_calibrated_validation_part(tmp_path, photoz_inputs):
    """No p(z) of 200 galaxies pass a PIT KS below 1e-6: the failure names the check."""
    with pytest.raises(GateFailed) as err:
        run_report(tmp_path, photoz_inputs, **(LOOSE | {"max_pit_ks": 1e-6}))
    assert [f.split(" ")[0] for f in err.value.failures] == ["calibrated_validation_pit_ks"]


def test_target_without_ood_flags_fails_the_check(tmp_path, photoz_inputs):
    import shutil

    target = tmp_path / "no_flags.hdf5"
    shutil.copy(photoz_inputs["target_pz"], target)
    with h5py.File(target, "a") as f:
        del f["ancil"]["ood"]
    with pytest.raises(GateFailed) as err:
        run_report(tmp_path, photoz_inputs | {"target_pz": str(target)}, **LOOSE)
    assert err.value.failures[0].startswith("target_ood_fraction = nan") and "support_flags" in str(err.value)


def test_point_estimate_computed_when_the_ancil_lacks_it(tmp_path, photoz_inputs):
    import shutil

    report = run_report(tmp_path, photoz_inputs, **LOOSE)
    cal = tmp_path / "no_points.hdf5"
    shutil.copy(photoz_inputs["calibrated_validation_pz"], cal)
    with h5py.File(cal, "a") as f:
        del f["ancil"]["zmode"]
    again = run_report(tmp_path, photoz_inputs | {"calibrated_validation_pz": str(cal)}, name="computed", **LOOSE)
    a, b = (json.loads((r / "report.json").read_text())["metrics"] for r in (report, again))
    for key in ("point_sigma_iqr", "point_bias", "point_outlier_015"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)


def test_chunking_and_ranks_give_the_same_report(tmp_path, photoz_inputs):
    from calipers.stages import PhotozReport
    from conftest import run_as_ranks

    small = run_report(tmp_path, photoz_inputs, name="small", chunk_size=25, **LOOSE)
    big = run_report(tmp_path, photoz_inputs, name="big", chunk_size=100_000, **LOOSE)
    cfg = config(tmp_path / "mpi.yml", PhotozReport=dict(LOOSE, chunk_size=25))
    io = {k: photoz_inputs[k] for k in IO_TAGS}
    run_as_ranks(PhotozReport, io | {"photoz_report": str(tmp_path / "mpi"), "config": cfg}, size=3)
    reports = [json.loads((r / "report.json").read_text()) for r in (small, big, tmp_path / "mpi")]
    for other in reports[1:]:
        for key in ("target_ood_fraction", "target_n_ood", "labelled_n", "point_sigma_iqr", "calibrated_cov68",
                    "raw_pit_ks", "calibrated_pit_ks"):
            assert other["metrics"][key] == reports[0]["metrics"][key], key
        assert other["model_card"]["failure_modes"] == reports[0]["model_card"]["failure_modes"]
        np.testing.assert_allclose(other["nz"]["target"], reports[0]["nz"]["target"], rtol=1e-10, atol=1e-12)
        assert other["examples"] == reports[0]["examples"]


def test_validation_rows_must_match_the_truth_by_id(tmp_path, photoz_inputs):
    from calipers.core.errors import CatalogError
    from conftest import read_catalog

    cols = read_catalog(photoz_inputs["validation_catalog"])
    cols["id"] = cols["id"].copy()
    cols["id"][[5, 6]] = cols["id"][[6, 5]]
    swapped = write_catalog(tmp_path / "swapped.hdf5", cols)
    with pytest.raises(CatalogError, match="row 5"):
        run_report(tmp_path, photoz_inputs | {"validation_catalog": swapped}, **LOOSE)
    assert not (tmp_path / "report").exists()


def test_validation_pz_of_another_model_is_refused(tmp_path, photoz_inputs, griz_model_dir):
    with pytest.raises(ModelMismatchError, match="another model"):
        run_report(tmp_path, photoz_inputs | {"model": griz_model_dir}, **LOOSE)
    assert not (tmp_path / "report").exists()


def test_bad_options_are_refused(tmp_path, photoz_inputs):
    from calipers.core.errors import ConfigError

    with pytest.raises(ConfigError, match="point_estimate"):
        run_report(tmp_path, photoz_inputs, point_estimate="zbest")
    with pytest.raises(ConfigError, match="chunk_size"):
        run_report(tmp_path, photoz_inputs, chunk_size=0)
    with pytest.raises(ConfigError, match="failure_magnitude_edges"):
        run_report(tmp_path, photoz_inputs, failure_magnitude_edges=[23.0, 22.0])
    with pytest.raises(ConfigError, match="failure_redshift_edges"):
        run_report(tmp_path, photoz_inputs, failure_redshift_edges=[0.5])
    with pytest.raises(ConfigError, match="mag_column"):
        run_report(tmp_path, photoz_inputs, mag_column="mag_i")


def test_example_rows_spread_over_the_redshift_range():
    from calipers.stages.validation import _example_rows

    z = np.concatenate([np.full(90, 0.1), np.linspace(0.2, 2.0, 10), [np.nan]])
    rows = _example_rows(z, 6, np.random.default_rng(0))
    assert rows == _example_rows(z, 6, np.random.default_rng(0)) and len(set(rows)) == 6
    assert 100 not in rows and z[rows].max() > 1.6  # the sparse high-z tail is represented
    assert sorted(_example_rows(z[:3], 6, np.random.default_rng(0))) == [0, 1, 2]
    assert _example_rows(z, 0, np.random.default_rng(0)) == []


def test_write_report_extra_sections_and_entries(tmp_path):
    from calipers.core.report import write_report
    from calipers.validate.gate import Check

    checks = [Check("x", 0.1, "<=", 1.0)]
    write_report(str(tmp_path / "r"), "T", {"a": 1.0}, checks, {}, extra_html="<h2>Card</h2><p>hi</p>",
                 extra={"model_card": {"kind": "k"}})
    assert "<h2>Card</h2><p>hi</p>" in (tmp_path / "r" / "index.html").read_text()
    assert json.loads((tmp_path / "r" / "report.json").read_text())["model_card"] == {"kind": "k"}
    with pytest.raises(ValueError, match="reserved"):
        write_report(str(tmp_path / "s"), "T", {}, checks, {}, extra={"metrics": {}})
    write_report(str(tmp_path / "plain"), "T", {"a": 1.0}, checks, {})  # every existing caller: unchanged
    assert set(json.loads((tmp_path / "plain" / "report.json").read_text())) == {
        "title", "passed", "checks", "metrics", "figures", "provenance"}



def test_card_failure_modes_calibration_and_shift_sections(tmp_path, photoz_inputs):
    """The card's sections the stage adds: failure modes of the validation part by i magnitude and
    true redshift, the calibration (method, data, weights, before/after), the shift results."""
    from calipers.core.provenance import file_hash

    report = run_report(tmp_path, photoz_inputs, **LOOSE)
    data = json.loads((report / "report.json").read_text())
    m, card = data["metrics"], data["model_card"]
    with h5py.File(photoz_inputs["validation_catalog"], "r") as f:
        z, mag_i = f[GROUP]["redshift"][:], f[GROUP][mag_col("i")][:]
    # failure modes: every validation row is in one bin, as the catalog's magnitudes and redshifts say
    failure = card["failure_modes"]
    by_mag, by_z = failure["by_magnitude"], failure["by_redshift"]
    assert [r["bin"] for r in by_mag["rows"]] == ["< 22", "22 - 23", "23 - 24", "24 - 25", ">= 25"]
    assert [r["bin"] for r in by_z["rows"]][0] == "0 - 0.3" and len(by_z["rows"]) == 7
    for table in (by_mag, by_z):
        assert sum(r["n"] + r["n_invalid"] for r in table["rows"]) + table["n_not_binned"] == m["validation_n"] == 200
        assert table["n_not_binned"] == 0
        # the bins' outliers add up to the validation part's outlier rate (the same point estimates)
        outliers = sum(r["n"] * r["outlier_015"] for r in table["rows"] if r["n"])
        assert outliers / 200 == pytest.approx(m["point_outlier_015"], abs=1e-12)
    detected = np.abs(mag_i) < 90
    expected = np.histogram(mag_i[detected], [-np.inf, 22, 23, 24, 25, np.inf])[0]
    assert [r["n"] for r in by_mag["rows"]] == expected.tolist()
    assert [r["n"] for r in by_z["rows"]] == np.histogram(z, [0, 0.3, 0.6, 0.9, 1.2, 1.5, 2, 3])[0].tolist()
    # calibration: the calibrator's method, data and weights, and the validation part before/after
    cal = card["calibration"]
    assert cal["method"] == "pit_global" and cal["settings"]["n_knots"] == 20
    assert cal["calibration_data"]["rows"] == 300
    assert cal["calibration_data"]["catalog"] == photoz_inputs["calibration_catalog"]
    assert cal["calibration_data"]["catalog_sha256"] == file_hash(photoz_inputs["calibration_catalog"])
    assert cal["calibration_data"]["pz_sha256"] == file_hash(photoz_inputs["cal_pz"])
    assert cal["fitted_on_model"]["sha256"] == file_hash(photoz_inputs["model"])
    spec = json.loads((Path(photoz_inputs["calibrator"]) / "calibrator.json").read_text())
    assert cal["importance_weights"] == spec["importance_weights"]
    assert cal["importance_weights"]["column"] == "shift_weight"
    assert set(cal["importance_weights"]["pit_summary"]) == {"unweighted", "weighted"}
    rows = {r["metric"]: r for r in cal["validation_before_after"]}
    assert set(rows) == {"pit_ks", "cov68", "cov95", "crps", "cde_loss"}
    for key, row in rows.items():
        assert row["before (raw p(z))"] == m[f"raw_{key}"] and row["after (calibrated)"] == m[f"calibrated_{key}"]
    # shift: the numbers of the ShiftTest and ShiftWeights reports
    test = json.loads((Path(photoz_inputs["shift_report"]) / "report.json").read_text())
    weights = json.loads((Path(photoz_inputs["shift_weights_report"]) / "report.json").read_text())
    shift = card["shift"]
    assert shift["shift_test"]["mmd_p_value"] == test["metrics"]["mmd"]["p_value"]
    assert shift["shift_test"]["classifier_p_value"] == test["metrics"]["classifier"]["p_value"]
    assert shift["shift_test"]["passed"] is test["passed"] and shift["shift_test"]["min_p_value"] == 0.01
    for key in ("ess", "ess_fraction", "n_clipped", "max_weight"):
        assert shift["importance_weights"][key] == weights["metrics"][key], key
    assert shift["importance_weights"]["n_clipped"] >= 1  # clip_quantile 0.99
    # on the page: a section per part, the failure-mode tables
    page = (report / "index.html").read_text()
    for title in ("<h3>Calibration</h3>", "<h3>Known failure modes (validation part)</h3>",
                  "<h3>Covariate shift: labelled sample vs target</h3>", "By i-band magnitude", "By true redshift",
                  "<td>22 - 23</td>", "<th>outlier_015</th>", "mmd_p_value", "pit_global"):
        assert title in page, title


def test_nondetected_magnitudes_are_counted_in_no_bin(tmp_path, photoz_inputs):
    from conftest import read_catalog

    cols = read_catalog(photoz_inputs["validation_catalog"])
    cols[mag_col("i")] = cols[mag_col("i")].copy()
    cols[mag_col("i")][[3, 7, 11]] = [99.0, np.nan, -99.0]
    val = write_catalog(tmp_path / "val_nondetected.hdf5", cols)
    report = run_report(tmp_path, photoz_inputs | {"validation_catalog": val}, **LOOSE)
    by_mag = json.loads((report / "report.json").read_text())["model_card"]["failure_modes"]["by_magnitude"]
    assert by_mag["n_not_binned"] == 3 and "not detected" in by_mag["not_binned_why"]
    assert sum(r["n"] + r["n_invalid"] for r in by_mag["rows"]) == 197


def test_calibrated_pz_of_another_calibrator_are_refused(tmp_path, photoz_inputs):
    """The card shows the calibrator given: p(z) calibrated with another one would not match it."""
    cfg = config(tmp_path / "cal.yml", PZCalibrate={"method": "conformal"})
    other = str(tmp_path / "conformal")
    run_stage("PZCalibrate", cfg, calibration_pz=photoz_inputs["cal_pz"],
              calibration_truth=photoz_inputs["calibration_catalog"], calibrator=other)
    with pytest.raises(ModelMismatchError, match="another calibrator"):
        run_report(tmp_path, photoz_inputs | {"calibrator": other}, **LOOSE)
    assert not (tmp_path / "report").exists()


def test_shift_reports_must_be_the_right_stages(tmp_path, photoz_inputs):
    from calipers.core.errors import FileFormatError

    swapped = {"shift_report": photoz_inputs["shift_weights_report"]}
    with pytest.raises(FileFormatError, match="expected one of ShiftTest"):
        run_report(tmp_path, photoz_inputs | swapped, **LOOSE)
    with pytest.raises(FileNotFoundError, match="no report.json"):
        run_report(tmp_path, photoz_inputs | {"shift_weights_report": str(tmp_path)}, **LOOSE)
