"""The photo-z pipeline end to end through ``ceci``, and RAIL's evaluator on its output."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import qp
import yaml

from calipers.core.models import load_model
from calipers.photoz import mixture_pdf
from conftest import (GROUP, TINY_INFORM, mags_errs, random_rows, read_catalog, subprocess_env, subset, write_catalog,
                      write_pipeline)

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 300, 200


QUICK_CALIBRATE = {"n_members": 1, "max_epochs": 20, "hidden": 16, "n_components": 2}


def pipeline_files(tmp: Path, training: str, catalog: str, inform: dict, estimate: dict,
                   gate: dict | None = None, name: str = "photoz_target_split", extra: dict | None = None,
                   stages_name: str | None = None) -> Path:
    """A pipeline YAML and stage config like pipelines/<name>.yml + stages/<stages_name or name>.yml."""
    with open(REPO / "pipelines" / f"{name}.yml") as fh:
        pipe = yaml.safe_load(fh)
    with open(REPO / "stages" / f"{stages_name or name}.yml") as fh:
        stages = yaml.safe_load(fh)
    for section, values in (extra or {}).items():
        stages[section].update(values)
    stages["PZInform"].update(inform)
    stages["PZEstimate"].update(estimate)
    stages["PZEstimateCalibration"].update(estimate)
    stages["PZCalibrate"].update(QUICK_CALIBRATE)
    stages["ValidationGate"].update(gate or {})
    return write_pipeline(tmp, pipe, stages, inputs={"training_catalog": training, "target_catalog": catalog})


def run_ceci(pipeline: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["ceci", str(pipeline)], capture_output=True, text=True, env=subprocess_env(),
                          cwd=pipeline.parent, timeout=300)


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory, dc2):
    """Disjoint random training (300) and test (200) rows of the redshift-sorted DC2 catalog."""
    d = tmp_path_factory.mktemp("catalogs")
    n = len(dc2["id"])
    train_rows = random_rows(n, N_TRAIN, seed=1)
    test_rows = random_rows(n, N_TEST, seed=2, exclude=train_rows)
    train = write_catalog(d / "train.hdf5", subset(dc2, train_rows))
    test = write_catalog(d / "test.hdf5", subset(dc2, test_rows))
    return train, test


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, catalogs):
    """The whole chain on a few hundred rows; the 5-epoch model is poor, so the gate only warns."""
    d = tmp_path_factory.mktemp("pipeline")
    train, test = catalogs
    inform = dict(TINY_INFORM, max_epochs=5)
    pipe = pipeline_files(d, train, test, inform=inform, estimate={"chunk_size": 64}, gate={"on_fail": "warn"})
    proc = run_ceci(pipe)
    return d, proc


OUTPUTS = ["calibrated_pz.hdf5", "calibration_catalog.hdf5", "calibration_pz.hdf5", "calibrator", "logs",
           "model", "pz.hdf5", "report", "test_catalog.hdf5"]


def test_pipeline_runs_end_to_end(pipeline_run, catalogs):
    d, proc = pipeline_run
    assert proc.returncode == 0, f"ceci failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = d / "out"
    assert sorted(p.name for p in out.iterdir() if p.name != ".calipers") == OUTPUTS
    test_half = read_catalog(str(out / "test_catalog.hdf5"))
    cal_half = read_catalog(str(out / "calibration_catalog.hdf5"))
    assert len(test_half["id"]) + len(cal_half["id"]) == N_TEST
    ens = qp.read(str(out / "pz.hdf5"))
    assert ens.npdf == len(test_half["id"])
    np.testing.assert_array_equal(ens.ancil["id"], test_half["id"])
    for key in ("zmode", "zmean", "zmedian", "zlo68", "zhi68"):
        assert np.all(np.isfinite(ens.ancil[key])), key
    calibrated = qp.read(str(out / "calibrated_pz.hdf5"))
    assert calibrated.npdf == ens.npdf and np.all(np.isfinite(calibrated.objdata["yvals"]))
    np.testing.assert_array_equal(calibrated.ancil["id"], test_half["id"])
    # the ancil point estimates describe the calibrated p(z), not the input ones
    from calipers.validate.metrics import grid_point_estimates

    zgrid = np.asarray(calibrated.metadata["xvals"]).ravel()
    fresh = grid_point_estimates(calibrated.objdata["yvals"], zgrid, ["zmedian", "zlo68"])
    np.testing.assert_allclose(calibrated.ancil["zmedian"], fresh["zmedian"])
    np.testing.assert_allclose(calibrated.ancil["zlo68"], fresh["zlo68"])
    assert (out / "report" / "report.json").exists() and (out / "report" / "index.html").exists()
    model = load_model(str(out / "model"))
    assert model.config.n_members == TINY_INFORM["n_members"] and model.config.max_epochs == 5


def test_gate_stops_the_pipeline_on_a_poor_model(tmp_path, catalogs):
    train, test = catalogs
    pipe = pipeline_files(tmp_path, train, test, inform=dict(TINY_INFORM, max_epochs=5), estimate={"chunk_size": 64})
    proc = run_ceci(pipe)
    assert proc.returncode != 0
    assert "Error running pipeline stage ValidationGate" in proc.stderr
    out = tmp_path / "out"
    log = (out / "logs" / "ValidationGate.out").read_text()
    assert "GateFailed" in log and "cde_loss" in log and "-> FAILED" in log
    assert (out / "calibrated_pz.hdf5").exists()      # everything upstream of the gate finished
    assert not (out / "report").exists() and (out / "report.FAILED" / "index.html").exists()


def test_pipeline_stops_on_a_misspelt_key(tmp_path, catalogs):
    train, test = catalogs
    pipe = pipeline_files(tmp_path, train, test, inform={**TINY_INFORM, "n_member": 2}, estimate={})
    proc = run_ceci(pipe)
    assert proc.returncode != 0
    assert "ConfigError" in proc.stderr and "did you mean 'n_members'" in proc.stderr
    out = tmp_path / "out"
    assert not (out / "model").exists() and not (out / "pz.hdf5").exists()


def test_rail_evaluator_reads_our_output(pipeline_run, catalogs, tmp_path, monkeypatch):
    """RAIL's DistToPointEvaluator runs on the qp file and agrees with our own model."""
    d, proc = pipeline_run
    assert proc.returncode == 0
    tables_io = pytest.importorskip("tables_io")
    evaluators = pytest.importorskip("rail.evaluation.dist_to_point_evaluator")

    monkeypatch.chdir(tmp_path)  # RAIL writes its outputs to the working directory
    pz_path = str(d / "out" / "pz.hdf5")
    test_half = str(d / "out" / "test_catalog.hdf5")
    ens = qp.read(pz_path)
    truth = tables_io.read(test_half)
    stage = evaluators.DistToPointEvaluator.make_stage(
        name="eval_calipers", metrics=["cdeloss", "pit", "brier"], force_exact=True,
        hdf5_groupname=GROUP, reference_dictionary_key="redshift", _random_state=0,
    )
    result = stage.evaluate(ens, truth)
    summary = result["summary"].data
    assert set(summary) >= {"cdeloss", "brier"}
    for key, value in summary.items():
        assert np.all(np.isfinite(value)), key
    pit = result["single_distribution_summary"].data["pit"]
    assert pit.npdf == 1

    # the CDE loss RAIL computed from the file equals the one from our model's mixtures
    z_true = read_catalog(test_half)["redshift"]
    model = load_model(str(d / "out" / "model"))
    grid = np.linspace(0, 2.5, 301)  # qp's default CDE-loss grid
    p = mixture_pdf(*model.predict(*mags_errs(read_catalog(test_half))), grid)
    nearest = np.abs(grid[None, :] - z_true[:, None]).argmin(1)
    expected = np.mean(np.trapezoid(p**2, grid, axis=1)) - 2 * np.mean(p[np.arange(len(z_true)), nearest])
    assert float(np.ravel(summary["cdeloss"])[0]) == pytest.approx(expected, rel=1e-4)
    assert os.path.exists(tmp_path / "summary_eval_calipers.hdf5")


def test_photoz_to_cl_pipeline_end_to_end(tmp_path, catalogs):
    """catalog -> p(z) -> calibration -> gate -> bins -> n(z) -> n(z) gate -> C_ell (sacc), in one ceci run."""
    import sacc

    train, test = catalogs
    extra = {"TomographicBinning": {"n_bins": 2}, "NZEstimate": {"n_realizations": 6},
             "NZGate": {"on_fail": "warn"}, "TheoryCl": {"n_ell": 4}}
    pipe = pipeline_files(tmp_path, train, test, inform=dict(TINY_INFORM, max_epochs=5), estimate={"chunk_size": 64},
                          gate={"on_fail": "warn"}, name="photoz_to_cl", extra=extra)
    proc = run_ceci(pipe)
    assert proc.returncode == 0, f"ceci failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = tmp_path / "out"
    s = sacc.Sacc.load_fits(str(out / "cl_sacc.fits"))
    assert sorted(s.tracers) == ["bin0", "bin1"] and len(s.mean) == (3 + 2 + 4) * 4
    assert s.has_covariance()
    for f in ("nz_report/nz_bands.png", "cl_report/error_ratio.png", "cl_report/covariances.hdf5", "nz.hdf5"):
        assert (out / f).exists(), f


def test_content_addressed_resume(tmp_path, catalogs):
    """A second run skips everything; changing one config value reruns exactly that stage and its
    descendants; a modified output reruns its stage."""
    import time

    import yaml as _yaml

    from calipers.core.resume import plan_resume

    train, test = catalogs
    pipe = pipeline_files(tmp_path, train, test, inform=dict(TINY_INFORM, max_epochs=5), estimate={"chunk_size": 64},
                          gate={"on_fail": "warn"})
    run = ["calipers", "run", "--resume", str(pipe)]
    proc = subprocess.run(run, capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert all(p.run is False for p in plan_resume(str(pipe))), [(p.name, p.reason) for p in plan_resume(str(pipe))]
    out = tmp_path / "out"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in ("logs", ".calipers")}
    proc = subprocess.run(run, capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0 and "every stage is up to date" in proc.stdout
    # change one calibration option: PZCalibrate and what depends on it rerun, nothing else
    cfg_path = tmp_path / "config.yml"
    cfg = _yaml.safe_load(cfg_path.read_text())
    cfg["PZCalibrate"]["n_components"] = 3
    cfg_path.write_text(_yaml.safe_dump(cfg, sort_keys=False))
    plans = {p.name: p for p in plan_resume(str(pipe))}
    assert {n for n, p in plans.items() if p.run} == {"PZCalibrate", "PZApplyCalibration", "ValidationGate"}
    assert plans["PZCalibrate"].reason == "its config section changed"
    time.sleep(0.01)
    proc = subprocess.run(run, capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in ("logs", ".calipers")}
    changed = {k for k in before if after.get(k) != before[k]}
    assert changed == {"calibrator", "calibrated_pz.hdf5", "report"}, changed
    # tamper with an output: its stage (and downstream) rerun
    with open(out / "pz.hdf5", "ab") as fh:
        fh.write(b"\0")
    plans = {p.name: p for p in plan_resume(str(pipe))}
    assert plans["PZEstimate"].reason == "output pz was modified" and plans["PZInform"].run is False


def test_parsl_launcher_gives_the_same_outputs(pipeline_run, catalogs, tmp_path):
    """pipelines/photoz_parsl.yml (launcher: parsl) with the settings of ``pipeline_run`` (mini
    launcher) writes the same p(z), calibrated p(z) and gate metrics."""
    import importlib.util
    import json

    if importlib.util.find_spec("parsl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("parsl is needed for the parsl launcher test: CI must install it (.ci/run)")
        pytest.skip("parsl is not installed")
    from test_mpi import assert_same_h5

    d_mini, proc = pipeline_run
    assert proc.returncode == 0
    train, test = catalogs
    pipe = pipeline_files(tmp_path, train, test, inform=dict(TINY_INFORM, max_epochs=5), estimate={"chunk_size": 64},
                          gate={"on_fail": "warn"}, name="photoz_parsl", stages_name="photoz_target_split")
    spec = yaml.safe_load(pipe.read_text())
    assert spec["launcher"]["name"] == "parsl"
    spec["launcher"]["log"] = str(tmp_path / "out" / "logs" / "parsl.log")
    pipe.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = run_ceci(pipe)
    assert proc.returncode == 0, f"ceci (parsl) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out, ref = tmp_path / "out", d_mini / "out"
    for f in ("pz.hdf5", "calibration_pz.hdf5", "calibrated_pz.hdf5"):
        assert_same_h5(out / f, ref / f)
    metrics = [json.loads((o / "report" / "report.json").read_text())["metrics"] for o in (out, ref)]
    assert metrics[0] == metrics[1]


def test_killed_run_resumes_to_the_same_outputs(pipeline_run, catalogs, tmp_path):
    """SIGKILL the whole run while a stage is writing: no declared output is left half-written,
    and ``calipers run --resume`` cleans the partial files up and finishes with the outputs of an
    uninterrupted run (``pipeline_run``, same settings)."""
    import signal
    import time

    import h5py

    from conftest import leftovers
    from test_mpi import assert_same_h5

    d_ref, proc = pipeline_run
    assert proc.returncode == 0
    train, test = catalogs
    pipe = pipeline_files(tmp_path, train, test, inform=dict(TINY_INFORM, max_epochs=5), estimate={"chunk_size": 64},
                          gate={"on_fail": "warn"})
    out = tmp_path / "out"
    run = ["calipers", "run", "--resume", str(pipe)]
    child = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env(),
                             cwd=tmp_path, start_new_session=True)
    caught, deadline = [], time.time() + 300
    while child.poll() is None and time.time() < deadline:
        if (out / "model").exists() and (out / "test_catalog.hdf5").exists():  # kill inside an estimation stage's write
            caught = [p.name for p in out.glob("inprogress_*")]
            if caught:
                os.killpg(child.pid, signal.SIGKILL)
                break
        time.sleep(0.002)
    child.wait(timeout=60)
    assert caught, "the run ended before any stage was caught writing"
    assert not (out / "report").exists()  # it really stopped midway
    # what carries a final name is complete: it opens, and its hash is the one recorded at the end of its stage
    from calipers.core.resume import plan_resume

    done = {p.name for p in plan_resume(str(pipe)) if not p.run}
    finals = [f for f in out.glob("*.hdf5") if not f.name.startswith("inprogress_")]
    for f in finals:
        with h5py.File(f, "r"):
            pass
    assert {"PZInform", "CatalogSplit"} <= done, (caught, done)
    print("killed while writing", caught, "; complete stages:", sorted(done))
    proc = subprocess.run(run, capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "removing partial file" in proc.stdout and caught[0] in proc.stdout
    assert not leftovers(out)
    for f in ("calibration_pz.hdf5", "pz.hdf5", "calibrated_pz.hdf5", "test_catalog.hdf5"):
        assert_same_h5(out / f, d_ref / "out" / f)
    metrics = [json.loads((o / "report" / "report.json").read_text())["metrics"] for o in (out, d_ref / "out")]
    assert metrics[0] == metrics[1]


# ---------------------------------------------------------------------------- labelled sample != target
def test_labelled_target_pipeline_end_to_end(tmp_path, dc2):
    """pipelines/photoz.yml as shipped, with tiny settings: the labelled sample (DC2 rows with
    redshifts) is weighted, split three ways and used to train, calibrate and validate; the target
    is a catalog **without** a redshift column (no stage may read one from it) and gets calibrated
    p(z) with support flags, a sensitivity check and the report. The tiny model is poor, so the
    gates only warn."""
    n = len(dc2["id"])
    lab_rows = random_rows(n, 700, seed=3)
    tgt_rows = random_rows(n, 300, seed=4, exclude=lab_rows)
    labelled = write_catalog(tmp_path / "labelled.hdf5", subset(dc2, lab_rows))
    target = write_catalog(tmp_path / "target.hdf5", subset(dc2, tgt_rows, drop=("redshift",)))
    pipe = yaml.safe_load((REPO / "pipelines" / "photoz.yml").read_text())
    stages = yaml.safe_load((REPO / "stages" / "photoz.yml").read_text())
    stages["PZInform"].update(TINY_INFORM, max_epochs=5)
    stages["PZCalibrate"].update(QUICK_CALIBRATE)
    stages["ShiftTest"].update(max_rows=200, n_permutations=20)
    for name in ("ValidationGate", "SensitivityGate", "PhotozReport"):
        stages[name]["on_fail"] = "warn"
    stages["SensitivityGate"]["max_rows"] = 100
    path = write_pipeline(tmp_path, pipe, stages, inputs={"labelled_catalog": labelled, "target_catalog": target})
    proc = run_ceci(path)
    assert proc.returncode == 0, f"ceci failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = tmp_path / "out"
    parts = {k: read_catalog(str(out / f"{k}_catalog.hdf5")) for k in ("training", "calibration", "validation")}
    ids = np.concatenate([p["id"] for p in parts.values()])
    assert len(ids) == 700 and len(set(ids.tolist())) == 700          # a partition of the labelled sample
    assert all("shift_weight" in p for p in parts.values())
    assert 0.5 < len(parts["training"]["id"]) / 700 < 0.7
    target_pz = qp.read(str(out / "calibrated_pz.hdf5"))
    assert target_pz.npdf == 300
    np.testing.assert_array_equal(target_pz.ancil["id"], dc2["id"][tgt_rows])
    for key in ("ood", "support_score", "mutual_information", "entropy"):
        assert key in target_pz.ancil and np.all(np.isfinite(target_pz.ancil[key])), key
    calibrator = json.loads((out / "calibrator" / "calibrator.json").read_text())
    assert calibrator["importance_weights"]["column"] == "shift_weight"
    for report in ("report", "photoz_report", "sensitivity_report", "shift_report", "shift_weights_report"):
        assert (out / report / "index.html").exists(), report
    page = (out / "photoz_report" / "index.html").read_text()
    assert "Model card" in page
    summary = json.loads((out / "photoz_report" / "report.json").read_text())
    flagged = float(np.mean(target_pz.ancil["ood"] != 0))
    assert any(c["name"] == "target_ood_fraction" and abs(c["value"] - flagged) < 1e-12 for c in summary["checks"])
