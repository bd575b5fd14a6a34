"""Bad inputs a new user meets (issue 16): each is a clear error naming the file, column, row or
key, raised before any output is left behind; plus the robustness fixes of issue 16 item 4."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import qp
import yaml

from calipers.core.errors import CalipersError, CatalogError, ConfigError, FileFormatError, ModelMismatchError, OutputLocked
from calipers.core.lock import output_lock_path, run_lock_path
from conftest import (
    TINY_INFORM,
    TRAIN_100,
    VALID_10,
    leftovers,
    random_rows,
    run_as_ranks,
    run_stage,
    subset,
    write_catalog,
    write_config,
)
from test_validation_gate import toy


def config(tmp_path, **sections) -> str:
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def assert_nothing_written(path) -> None:
    path = Path(path)
    assert not path.exists(), f"{path} was left behind"
    assert not (path.parent / f"inprogress_{path.name}").exists()
    assert leftovers(path.parent) == []


def toy_with_ids(d: Path, n: int = 200, seed: int = 0, truth_ids=None):
    """Calibrated Gaussian p(z) with ancil ids 1000.., and a truth catalog with ``truth_ids``."""
    rng = np.random.default_rng(seed)
    z = rng.gamma(4.0, 0.2, n).clip(0.02, 2.9)
    sigma = 0.03 * (1 + z)
    ens = qp.Ensemble(qp.mixmod, data=dict(means=(z + rng.normal(0, sigma))[:, None], stds=sigma[:, None],
                                           weights=np.ones((n, 1))))
    ids = np.arange(1000, 1000 + n)
    ens.set_ancil({"id": ids, "zmode": z})
    d.mkdir(exist_ok=True)
    ens.write_to(str(d / "pz.hdf5"))
    truth = write_catalog(d / "truth.hdf5", {"redshift": z, "id": ids if truth_ids is None else truth_ids})
    return str(d / "pz.hdf5"), truth


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def write_lock(path: str, pid: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"pid": pid, "host": socket.gethostname(), "started": "earlier", "command": "another run"}, fh)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------- 2: concurrent runs
def test_second_run_into_a_locked_output_is_refused_and_touches_nothing(tmp_path):
    pz, truth = toy(tmp_path, n=300)
    report = tmp_path / "report"
    other = tmp_path / "inprogress_report"          # the holder's half-written output
    other.mkdir()
    (other / "report.json").write_text("{}")
    holder = sleeper()
    try:
        write_lock(output_lock_path(str(report)), holder.pid)
        with pytest.raises(OutputLocked) as err:
            run_stage("ValidationGate", config(tmp_path, ValidationGate={"on_fail": "warn"}), pz=pz, truth=truth,
                      report=str(report))
        assert output_lock_path(str(report)) in str(err.value) and f"pid {holder.pid}" in str(err.value)
        assert (other / "report.json").exists()  # the refused run did not clean up the holder's file
        assert not report.exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_output_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    pz, truth = toy(tmp_path, n=300)
    report = tmp_path / "report"
    write_lock(output_lock_path(str(report)), dead_pid())
    with caplog.at_level(logging.WARNING):
        run_stage("ValidationGate", config(tmp_path, ValidationGate={"on_fail": "warn"}), pz=pz, truth=truth,
                  report=str(report))
    assert "taking over the stale lock" in caplog.text
    assert (report / "report.json").exists()
    assert not os.path.exists(output_lock_path(str(report)))  # released at the end


def test_live_calipers_run_lock_on_the_directory_refuses_a_stage(tmp_path, monkeypatch):
    pz, truth = toy(tmp_path, n=300)
    lock = run_lock_path(str(tmp_path))
    holder = sleeper()
    cfg = config(tmp_path, ValidationGate={"on_fail": "warn"})
    try:
        write_lock(lock, holder.pid)
        with pytest.raises(OutputLocked, match=f"{lock}.*pid {holder.pid}"):
            run_stage("ValidationGate", cfg, pz=pz, truth=truth, report=str(tmp_path / "report"))
        assert not (tmp_path / "report").exists()
        monkeypatch.setenv("CALIPERS_RUN_LOCK", lock)  # a stage of that very run may write
        run_stage("ValidationGate", cfg, pz=pz, truth=truth, report=str(tmp_path / "report"))
        assert (tmp_path / "report" / "report.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_ranks_of_one_stage_share_its_lock_and_all_stop_on_a_refusal(tmp_path):
    """Only rank 0 locks (two ranks of one stage never lock each other out); when it is refused,
    every rank raises (none waits in a collective call)."""
    from calipers.stages import ValidationGate

    pz, truth = toy(tmp_path, n=300)
    cfg = config(tmp_path, ValidationGate={"on_fail": "warn", "chunk_size": 100})
    args = {"pz": pz, "truth": truth, "report": str(tmp_path / "r"), "config": cfg}
    run_as_ranks(ValidationGate, args)
    assert (tmp_path / "r" / "report.json").exists()
    holder = sleeper()
    try:
        write_lock(output_lock_path(str(tmp_path / "r2")), holder.pid)
        with pytest.raises(OutputLocked):
            run_as_ranks(ValidationGate, dict(args, report=str(tmp_path / "r2")))
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "r2").exists()


def test_calipers_run_holds_the_directory_lock_and_refuses_a_second_run(tmp_path, monkeypatch, capsys):
    import calipers.cli as cli

    cat = write_catalog(tmp_path / "cat.hdf5", {"a": np.arange(10.0)})
    cfg = tmp_path / "stages.yml"
    cfg.write_text(yaml.safe_dump({"CatalogSplit": {"fraction_a": 0.5}}))
    out = tmp_path / "out"
    pipe = tmp_path / "pipe.yml"
    pipe.write_text(yaml.safe_dump({
        "modules": "calipers.stages", "launcher": {"name": "mini"}, "site": {"name": "local"},
        "stages": [{"name": "CatalogSplit", "nprocess": 1}], "inputs": {"catalog": cat}, "config": str(cfg),
        "output_dir": str(out), "log_dir": str(out)}))
    seen = {}

    def fake_ceci(cmd, env):
        seen["env"] = env.get("CALIPERS_RUN_LOCK")
        seen["holder"] = json.loads(Path(run_lock_path(str(out))).read_text())["pid"]
        return 0

    monkeypatch.setattr(subprocess, "call", fake_ceci)
    assert cli.main(["run", str(pipe)]) == 0
    assert seen == {"env": run_lock_path(str(out)), "holder": os.getpid()}
    assert not os.path.exists(run_lock_path(str(out)))  # released
    holder = sleeper()
    try:
        write_lock(run_lock_path(str(out)), holder.pid)
        seen.clear()
        assert cli.main(["run", str(pipe)]) == 1
        err = capsys.readouterr().err
        assert run_lock_path(str(out)) in err and f"pid {holder.pid}" in err and not seen
    finally:
        holder.kill()
        holder.wait()
    write_lock(run_lock_path(str(out)), dead_pid())  # a killed run's lock: taken over
    assert cli.main(["run", str(pipe)]) == 0 and seen["holder"] == os.getpid()


# ---------------------------------------------------------------------------- 3: missing declared output
def test_a_declared_output_not_written_is_an_error(tmp_path, monkeypatch):
    from calipers.stages import CatalogCut

    cat = write_catalog(tmp_path / "cat.hdf5", {"mag_i_lsst": np.linspace(20, 26, 50)})
    monkeypatch.setattr(CatalogCut, "process", lambda self: None)
    with pytest.raises(CalipersError, match="without writing its declared output.*'selected'"):
        run_stage("CatalogCut", config(tmp_path, CatalogCut={}), catalog=cat, selected=str(tmp_path / "sel.hdf5"))
    assert_nothing_written(tmp_path / "sel.hdf5")


# ---------------------------------------------------------------------------- 4: one-row chunks
def test_one_row_last_chunk_in_calibrate_apply_and_gate(tmp_path):
    """n = chunk_size + 1 leaves a last chunk of one row (qp squeezed it: IndexError before)."""
    chunk = 150
    pz, truth = toy(tmp_path, n=chunk + 1, width_factor=1.5, seed=5)
    cfg = config(tmp_path, PZCalibrate={"n_knots": 10, "chunk_size": chunk},
                 PZApplyCalibration={"chunk_size": chunk},
                 ValidationGate={"chunk_size": chunk, "on_fail": "warn"})
    calibrator, out = tmp_path / "cal", tmp_path / "calibrated.hdf5"
    run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(calibrator))
    run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(calibrator), catalog=truth, calibrated_pz=str(out))
    yvals = qp.read(str(out)).objdata["yvals"]
    assert yvals.shape[0] == chunk + 1 and np.all(np.isfinite(yvals[-1]))
    for source in (pz, str(out)):  # mixmod and interp input
        run_stage("ValidationGate", cfg, pz=source, truth=truth, report=str(tmp_path / "report"))
        metrics = json.loads((tmp_path / "report" / "report.json").read_text())["metrics"]
        assert metrics["n"] == chunk + 1 and metrics["n_invalid"] == 0


# ---------------------------------------------------------------------------- 5: PZCalibrate settings / empty input
@pytest.mark.parametrize("option", [{"n_members": 0}, {"n_components": 0}, {"max_epochs": 0}])
def test_pit_local_needs_at_least_one_member(tmp_path, option):
    pz, truth = toy(tmp_path, n=100)
    key = next(iter(option))
    cfg = config(tmp_path, PZCalibrate={"method": "pit_local", "feature_columns": ["redshift"], **option})
    with pytest.raises(ConfigError, match=f"{key} must be >= 1.*got 0"):
        run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(tmp_path / "c"))
    assert_nothing_written(tmp_path / "c")


def test_empty_calibration_set_names_the_file(tmp_path):
    from calipers.core.qpio import QPChunkWriter

    empty = tmp_path / "empty_pz.hdf5"
    with QPChunkWriter(str(empty), 0, meta={"pdf_name": np.array([b"mixmod"]), "pdf_version": np.array([0])},
                       data_shapes={"weights": (2,), "means": (2,), "stds": (2,)}, ancil_names=[]):
        pass
    truth = write_catalog(tmp_path / "truth.hdf5", {"redshift": np.zeros(0)})
    with pytest.raises(CatalogError, match=f"{empty}: holds no p\\(z\\) \\(0 rows\\)"):
        run_stage("PZCalibrate", config(tmp_path), calibration_pz=str(empty), calibration_truth=truth,
                  calibrator=str(tmp_path / "c"))
    assert_nothing_written(tmp_path / "c")


# ---------------------------------------------------------------------------- 6: config types
@pytest.mark.parametrize("key, value, fragment", [
    ("augment", "no", "'augment' = 'no' (str"),              # a quoted word is not a boolean
    ("n_members", 2.5, "'n_members' = 2.5 (float"),          # would be truncated to 2
    ("n_members", "2", "'n_members' = '2' (str"),
    ("bands", "ugrizy", "'bands' = 'ugrizy' (str"),          # would be split into letters
    ("learning_rate", "fast", "'learning_rate' = 'fast'"),
    ("redshift_column", 3, "'redshift_column' = 3 (int"),
])
def test_config_values_of_the_wrong_type_name_key_and_value(tmp_path, key, value, fragment):
    from calipers.stages import PZInform

    cfg = write_config(tmp_path / "c.yml", inform={**TINY_INFORM, key: value})
    with pytest.raises(ConfigError) as err:
        PZInform.make_stage(training_catalog=TRAIN_100, model=str(tmp_path / "m"), config=cfg)
    assert fragment in str(err.value) and "section 'PZInform'" in str(err.value)


def test_config_values_that_are_fine(tmp_path):
    from calipers.stages import PZInform

    cfg = write_config(tmp_path / "c.yml", inform={**TINY_INFORM, "n_members": 3.0, "learning_rate": 1,
                                                   "weight_decay": "1e-4", "augment": False})
    stage = PZInform.make_stage(training_catalog=TRAIN_100, model=str(tmp_path / "m"), config=cfg)
    assert stage.config["n_members"] == 3 and isinstance(stage.config["n_members"], int)
    assert stage.config["learning_rate"] == 1.0 and stage.config["weight_decay"] == 1e-4
    with pytest.raises(ConfigError, match="'chunk_size' = 1.5 .*in arguments"):
        from calipers.stages import PZEstimate

        PZEstimate.make_stage(model="m", catalog=VALID_10, pz=str(tmp_path / "p"), chunk_size=1.5)


def test_misspelt_stage_section_is_an_error_when_the_stage_runs_alone(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"PZInfrom": dict(TINY_INFORM)}))
    with pytest.raises(ConfigError, match="no section 'PZInform'.*'PZInfrom'"):
        run_stage("PZInform", str(cfg), training_catalog=TRAIN_100, model=str(tmp_path / "m"))
    assert_nothing_written(tmp_path / "m")


# ---------------------------------------------------------------------------- 9: unreadable inputs
def test_truncated_catalog_in_a_stage_run_alone(tmp_path):
    cat = write_catalog(tmp_path / "cat.hdf5", {"mag_i_lsst": np.linspace(20, 26, 20000)})
    data = Path(cat).read_bytes()
    Path(cat).write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=f"{cat}: .*truncated"):
        run_stage("CatalogCut", config(tmp_path, CatalogCut={}), catalog=cat, selected=str(tmp_path / "s.hdf5"))
    assert_nothing_written(tmp_path / "s.hdf5")


def test_string_and_2d_columns_in_a_stage(tmp_path):
    pz, _ = toy(tmp_path, n=50)
    path = tmp_path / "truth2d.hdf5"
    with h5py.File(path, "w") as f:
        f["photometry/redshift"] = np.ones((50, 2))
    with pytest.raises(CatalogError, match=f"{path}: column 'redshift' of group 'photometry' has shape"):
        run_stage("ValidationGate", config(tmp_path), pz=pz, truth=str(path), report=str(tmp_path / "r"))
    assert_nothing_written(tmp_path / "r")
    words = write_catalog(tmp_path / "words.hdf5", {"mag_i_lsst": np.array([b"bright", b"faint"])})
    with pytest.raises(CatalogError, match="'mag_i_lsst'.*numeric"):
        run_stage("CatalogCut", config(tmp_path, CatalogCut={}), catalog=words, selected=str(tmp_path / "s.hdf5"))
    assert_nothing_written(tmp_path / "s.hdf5")


@pytest.fixture(scope="module")
def global_calibrator(tmp_path_factory):
    d = tmp_path_factory.mktemp("global_cal")
    pz, truth = toy(d, n=300, width_factor=1.5, seed=3)
    run_stage("PZCalibrate", config(d, PZCalibrate={"n_knots": 20}), calibration_pz=pz, calibration_truth=truth,
              calibrator=str(d / "calibrator"))
    return d, pz, truth


def test_corrupt_calibrator_json_names_the_file(tmp_path, global_calibrator):
    import shutil

    d, pz, truth = global_calibrator
    broken = tmp_path / "calibrator"
    shutil.copytree(d / "calibrator", broken)
    (broken / "calibrator.json").write_text('{"method": "pit_glo')
    with pytest.raises(FileFormatError, match=f"{broken / 'calibrator.json'}: not valid JSON"):
        run_stage("PZApplyCalibration", config(tmp_path), pz=pz, calibrator=str(broken), catalog=truth,
                  calibrated_pz=str(tmp_path / "o.hdf5"))
    assert_nothing_written(tmp_path / "o.hdf5")


def test_truncated_calibrator_weights_name_the_file(tmp_path):
    pz, truth = toy(tmp_path, n=300, width_factor=1.5, seed=3)
    cfg = config(tmp_path, PZCalibrate={"method": "pit_local", "feature_columns": ["redshift"], "n_members": 1,
                                        "max_epochs": 2, "hidden": 4, "n_components": 1})
    run_stage("PZCalibrate", cfg, calibration_pz=pz, calibration_truth=truth, calibrator=str(tmp_path / "cal"))
    weights = tmp_path / "cal" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FileFormatError, match=f"{weights}: cannot be read as torch weights"):
        run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(tmp_path / "cal"), catalog=truth,
                  calibrated_pz=str(tmp_path / "o.hdf5"))
    assert_nothing_written(tmp_path / "o.hdf5")
    import torch  # a pickle of live objects is refused, never executed

    torch.save({"member0": Exploit()}, weights)
    with pytest.raises(FileFormatError, match=f"{weights}: refused"):
        run_stage("PZApplyCalibration", cfg, pz=pz, calibrator=str(tmp_path / "cal"), catalog=truth,
                  calibrated_pz=str(tmp_path / "o.hdf5"))
    assert not EXPLOITED and not (tmp_path / "o.hdf5").exists()


EXPLOITED = []


class Exploit:
    def __reduce__(self):
        return (EXPLOITED.append, ("ran",))


# ---------------------------------------------------------------------------- 11: row order and model
def test_ids_out_of_order_stop_gate_calibration_and_apply(tmp_path, global_calibrator):
    ids = np.arange(1000, 1200)
    shuffled = ids.copy()
    shuffled[[57, 58]] = shuffled[[58, 57]]
    pz, truth = toy_with_ids(tmp_path / "bad", truth_ids=shuffled)
    expected = "row 57 has id 1057 .* but 1058"
    with pytest.raises(CatalogError, match=expected):
        run_stage("ValidationGate", config(tmp_path, ValidationGate={"chunk_size": 50}), pz=pz, truth=truth,
                  report=str(tmp_path / "r"))
    assert_nothing_written(tmp_path / "r")
    with pytest.raises(CatalogError, match=expected):
        run_stage("PZCalibrate", config(tmp_path, PZCalibrate={"n_knots": 10}), calibration_pz=pz,
                  calibration_truth=truth, calibrator=str(tmp_path / "c"))
    assert_nothing_written(tmp_path / "c")
    d, _, _ = global_calibrator
    with pytest.raises(CatalogError, match=expected):
        run_stage("PZApplyCalibration", config(tmp_path, PZApplyCalibration={"chunk_size": 50}), pz=pz,
                  calibrator=str(d / "calibrator"), catalog=truth, calibrated_pz=str(tmp_path / "o.hdf5"))
    assert_nothing_written(tmp_path / "o.hdf5")
    # the same rows in the same order pass; id_column '' switches the comparison off
    good_pz, good_truth = toy_with_ids(tmp_path / "good")
    run_stage("ValidationGate", config(tmp_path, ValidationGate={"on_fail": "warn"}), pz=good_pz, truth=good_truth,
              report=str(tmp_path / "r"))
    run_stage("ValidationGate", config(tmp_path, ValidationGate={"on_fail": "warn", "id_column": ""}), pz=pz,
              truth=truth, report=str(tmp_path / "r2"))


@pytest.fixture(scope="module")
def two_models_pz(tmp_path_factory, tiny_model_dir, griz_model_dir, dc2):
    d = tmp_path_factory.mktemp("two_models")
    cat = write_catalog(d / "cat.hdf5", subset(dc2, random_rows(len(dc2["id"]), 200, seed=4)))
    cfg = write_config(d / "c.yml", estimate={"chunk_size": 64})
    out = {}
    for label, model in (("ugrizy", tiny_model_dir), ("griz", griz_model_dir)):
        out[label] = str(d / f"pz_{label}.hdf5")
        run_stage("PZEstimate", cfg, model=model, catalog=cat, pz=out[label])
    return d, cat, out


def test_calibrator_records_its_model_and_refuses_another_models_pz(tmp_path, two_models_pz, tiny_model_dir, caplog):
    from calipers.core.provenance import file_hash

    d, cat, pz = two_models_pz
    cfg = config(tmp_path, PZCalibrate={"n_knots": 10}, PZApplyCalibration={})
    cal = tmp_path / "cal"
    run_stage("PZCalibrate", cfg, calibration_pz=pz["ugrizy"], calibration_truth=cat, calibrator=str(cal))
    fitted = json.loads((cal / "calibrator.json").read_text())["fitted_on"]
    assert fitted["hash"] == file_hash(tiny_model_dir) and fitted["path"] == tiny_model_dir
    run_stage("PZApplyCalibration", cfg, pz=pz["ugrizy"], calibrator=str(cal), catalog=cat,
              calibrated_pz=str(tmp_path / "same.hdf5"))
    with pytest.raises(ModelMismatchError) as err:
        run_stage("PZApplyCalibration", cfg, pz=pz["griz"], calibrator=str(cal), catalog=cat,
                  calibrated_pz=str(tmp_path / "other.hdf5"))
    assert pz["griz"] in str(err.value) and tiny_model_dir in str(err.value) and "on_model_mismatch" in str(err.value)
    assert_nothing_written(tmp_path / "other.hdf5")
    warn = config(tmp_path, PZApplyCalibration={"on_model_mismatch": "warn"})
    with caplog.at_level(logging.WARNING):
        run_stage("PZApplyCalibration", warn, pz=pz["griz"], calibrator=str(cal), catalog=cat,
                  calibrated_pz=str(tmp_path / "other.hdf5"))
    assert "on_model_mismatch=warn" in caplog.text and (tmp_path / "other.hdf5").exists()


# ---------------------------------------------------------------------------- item 4: stale point estimates, NaN cuts
def test_rows_that_cannot_be_calibrated_get_nan_point_estimates(tmp_path, global_calibrator):
    """A chunk whose p(z) are all invalid used to keep the input's point estimates."""
    d, _, _ = global_calibrator
    pz, truth = toy(tmp_path, n=60, nan_rows=range(10), seed=7)
    ens = qp.read(pz)
    ens.set_ancil({"zmode": np.full(60, 1.234), "zmedian": np.full(60, 1.234), "id": np.arange(60)})
    ens.write_to(pz)
    out = tmp_path / "o.hdf5"
    run_stage("PZApplyCalibration", config(tmp_path, PZApplyCalibration={"chunk_size": 10}), pz=pz,
              calibrator=str(d / "calibrator"), catalog=truth, calibrated_pz=str(out))
    got = qp.read(str(out))
    for key in ("zmode", "zmedian"):
        assert np.all(np.isnan(got.ancil[key][:10])), key          # no stale 1.234 left
        assert np.all(np.isfinite(got.ancil[key][10:])) and not np.any(got.ancil[key][10:] == 1.234)
    np.testing.assert_array_equal(got.ancil["id"], np.arange(60))
    assert np.all(np.isnan(got.objdata["yvals"][:10]))


def test_catalog_cut_says_how_many_nan_rows_it_drops(tmp_path, caplog):
    from conftest import read_catalog

    v = np.linspace(20, 26, 100)
    v[[3, 40, 41]] = np.nan
    cat = write_catalog(tmp_path / "cat.hdf5", {"mag_i_lsst": v, "id": np.arange(100)})
    out = tmp_path / "sel.hdf5"
    with caplog.at_level(logging.WARNING):
        run_stage("CatalogCut", config(tmp_path, CatalogCut={"chunk_size": 30}), catalog=cat, selected=str(out))
    assert "dropped 3 row(s) whose 'mag_i_lsst' is NaN (first at row 3)" in caplog.text
    assert len(read_catalog(str(out))["id"]) == 97


# ---------------------------------------------------------------------------- item 4: ShiftTest with few bands
@pytest.mark.parametrize("bands", [["r", "i"], ["g", "r", "i"]])
def test_shift_test_with_fewer_than_four_bands(tmp_path, dc2, bands):
    n = len(dc2["id"])
    a = random_rows(n, 300, seed=1)
    b = random_rows(n, 300, seed=2, exclude=a)
    ref = write_catalog(tmp_path / "ref.hdf5", subset(dc2, a))
    tgt = write_catalog(tmp_path / "tgt.hdf5", subset(dc2, b))
    cfg = config(tmp_path, ShiftTest={"bands": bands, "max_rows": 200, "n_permutations": 20, "on_fail": "warn"})
    run_stage("ShiftTest", cfg, reference_catalog=ref, target_catalog=tgt, shift_report=str(tmp_path / "shift"))
    png = tmp_path / "shift" / "features.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_shift_figure_for_every_band_count():
    from calipers.validate.plots import shift_features_figure

    rng = np.random.default_rng(0)
    for nb in range(1, 7):
        x = rng.normal(size=(50, 2 * nb - 1))
        fig = shift_features_figure(x, x + 0.1, list("ugrizy"[:nb]))
        labels = [ax.get_xlabel() for ax in fig.axes]
        assert labels[0] == f"{'ugrizy'[min(3, nb - 1)]} magnitude"
        assert (labels[1] == "") == (nb == 1)


def test_nz_gate_checks_the_tomography_ids_against_the_truth(tmp_path):
    ids = np.arange(1000, 1400)
    shuffled = ids.copy()
    shuffled[[300, 301]] = shuffled[[301, 300]]
    pz, truth = toy_with_ids(tmp_path, n=400, truth_ids=shuffled)
    cfg = config(tmp_path, TomographicBinning={"n_bins": 2, "zmax_bins": 2.5},
                 NZEstimate={"n_realizations": 3, "method": "bootstrap"}, NZGate={"on_fail": "warn"})
    tomo, nz = str(tmp_path / "tomo.hdf5"), str(tmp_path / "nz.hdf5")
    run_stage("TomographicBinning", cfg, pz=pz, tomography=tomo)
    run_stage("NZEstimate", cfg, pz=pz, tomography=tomo, nz=nz)
    with pytest.raises(CatalogError, match=f"{tomo} and {truth} are not in the same row order: row 300"):
        run_stage("NZGate", cfg, nz=nz, tomography=tomo, truth=truth, nz_report=str(tmp_path / "nz_report"))
    assert_nothing_written(tmp_path / "nz_report")


def test_estimate_logs_non_detections_and_replaced_errors_per_band(tmp_path, valid10, tiny_model_dir, caplog):
    cols = {k: v.copy() for k, v in valid10.items()}
    cols["mag_u_lsst"][[1, 7]] = 99.0
    cols["mag_err_g_lsst"][3] = np.nan
    cat = write_catalog(tmp_path / "cat.hdf5", cols)
    with caplog.at_level(logging.INFO):
        run_stage("PZEstimate", write_config(tmp_path / "c.yml", estimate={"chunk_size": 4}), model=tiny_model_dir,
                  catalog=cat, pz=str(tmp_path / "pz.hdf5"))
    assert f"non-detections per band in {cat}: {{'u': 2, 'g': 0, 'r': 0, 'i': 0, 'z': 0, 'y': 0}}" in caplog.text
    assert "replaced errors per band" in caplog.text and "'g': 1" in caplog.text


def test_truncated_pz_file_in_a_stage_run_alone(tmp_path):
    pz, truth = toy(tmp_path, n=3000)
    data = Path(pz).read_bytes()
    Path(pz).write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match=f"{pz}: .*truncated"):
        run_stage("ValidationGate", config(tmp_path), pz=pz, truth=truth, report=str(tmp_path / "r"))
    assert_nothing_written(tmp_path / "r")
