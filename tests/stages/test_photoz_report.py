"""PhotozReport: the photo-z report (point vs true z, example p(z), PIT/coverage before and after
calibration, target n(z) beside the labelled sample's, model card) and its gate on the target's
ood fraction, on real p(z) made by PZEstimate, PZCalibrate and PZApplyCalibration."""
import json

import h5py
import numpy as np
import pytest
import yaml

from calipers.core.errors import GateFailed, ModelMismatchError
from conftest import BANDS, GROUP, TINY_INFORM, mag_col, random_rows, run_stage, subset, write_catalog

FIGURES = ("point_vs_true", "examples", "pit_coverage", "nz")
LOOSE = {"max_pit_ks": 1.0, "max_coverage_error": 1.0, "max_ood_fraction": 1.0}


def config(path, **sections) -> str:
    path.write_text(yaml.safe_dump({"global": {"hdf5_groupname": GROUP}, **sections}))
    return str(path)


@pytest.fixture(scope="module")
def photoz_inputs(tmp_path_factory, dc2):
    """A small model trained by PZInform on 1500 DC2 galaxies; labelled (calibration +
    validation parts) and target catalogs drawn from the other DC2 galaxies, their p(z), a
    pit_global calibrator fitted on the calibration part and applied to the validation part and
    the target. The target has no redshift column, and 20 of its galaxies are made 4 magnitudes
    fainter so that they fall outside the training support."""
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
    cfg = config(d / "cfg.yml", PZEstimate={"chunk_size": 64}, PZCalibrate={"method": "pit_global", "n_knots": 20},
                 PZApplyCalibration={"chunk_size": 64})
    out = {"model": model, "validation_catalog": val_cat, "labelled_catalog": labelled, "dir": d}
    for label, cat in (("cal", cal_cat), ("val", val_cat), ("target", tgt_cat)):
        run_stage("PZEstimate", cfg, model=model, catalog=cat, pz=str(d / f"{label}_pz.hdf5"))
    run_stage("PZCalibrate", cfg, calibration_pz=str(d / "cal_pz.hdf5"), calibration_truth=cal_cat,
              calibrator=str(d / "calibrator"))
    for label, cat in (("val", val_cat), ("target", tgt_cat)):
        run_stage("PZApplyCalibration", cfg, pz=str(d / f"{label}_pz.hdf5"), calibrator=str(d / "calibrator"),
                  catalog=cat, calibrated_pz=str(d / f"{label}_calibrated.hdf5"))
    out |= {"validation_pz": str(d / "val_pz.hdf5"), "calibrated_validation_pz": str(d / "val_calibrated.hdf5"),
            "target_pz": str(d / "target_calibrated.hdf5"), "raw_target_pz": str(d / "target_pz.hdf5")}
    return out


def run_report(tmp_path, inputs, name="report", **options):
    cfg = config(tmp_path / f"{name}.yml", PhotozReport=options)
    report = tmp_path / name
    io = {k: inputs[k] for k in ("model", "validation_pz", "calibrated_validation_pz", "validation_catalog",
                                 "target_pz", "labelled_catalog")}
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
    assert card and data["model_card"] == json.loads(json.dumps(card))
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
    io = {k: photoz_inputs[k] for k in ("model", "validation_pz", "calibrated_validation_pz", "validation_catalog",
                                        "target_pz", "labelled_catalog")}
    run_as_ranks(PhotozReport, io | {"photoz_report": str(tmp_path / "mpi"), "config": cfg}, size=3)
    reports = [json.loads((r / "report.json").read_text()) for r in (small, big, tmp_path / "mpi")]
    for other in reports[1:]:
        for key in ("target_ood_fraction", "target_n_ood", "labelled_n", "point_sigma_iqr", "calibrated_cov68",
                    "raw_pit_ks", "calibrated_pit_ks"):
            assert other["metrics"][key] == reports[0]["metrics"][key], key
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
