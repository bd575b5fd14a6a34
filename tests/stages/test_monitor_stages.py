"""Drift-monitor stages run batch after batch from their own state files: alerts, outputs, restarts."""
import json

import h5py
import numpy as np
import pytest
import qp
import yaml

from calipers.core.errors import DriftAlert, FileFormatError
from calipers.core.monitor_files import write_fresh_state
from calipers.monitor.calibration import pit_batch_statistics
from calipers.monitor.martingale import ConformalTestMartingale
from calipers.monitor.sequential import Cusum
from conftest import run_stage, write_catalog

GROUP = "photometry"


def write_pz_batch(d, name, n, seed, shrink=1.0):
    """Gaussian p(z) and truths drawn from them; ``shrink`` < 1 makes the p(z) too narrow."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.4, 2.0, n)
    sigma = 0.05 * (1 + mu)
    z = mu + sigma * rng.normal(size=n)
    pz = str(d / f"{name}_pz.hdf5")
    qp.Ensemble(qp.stats.norm, data={"loc": mu[:, None], "scale": shrink * sigma[:, None]}).write_to(pz)
    truth = write_catalog(d / f"{name}_truth.hdf5", {"redshift": z})
    return pz, truth


def write_config(d, **opts):
    path = d / "config.yml"
    path.write_text(yaml.safe_dump({"CalibrationDriftMonitor": {"arl": 50.0, "nzbins": 601, **opts},
                                    "CovariateDriftMonitor": {"features": ["a", "b", "c"], "n_permutations": 100}}))
    return str(path)


def run_calibration_stream(d, shrinks, on_alert="warn"):
    d.mkdir(exist_ok=True)
    ref_pz, ref_truth = write_pz_batch(d, "reference", 3000, seed=1)
    config = write_config(d, on_alert=on_alert)
    state = write_fresh_state(str(d / "state_start.json"))
    raised = []
    for b, shrink in enumerate(shrinks):
        pz, truth = write_pz_batch(d, f"batch{b}", 1000, seed=100 + b, shrink=shrink)
        io = dict(reference_pz=ref_pz, reference_truth=ref_truth, pz=pz, truth=truth, previous_state=state,
                  state=str(d / f"state{b}.json"), monitor_table=str(d / f"table{b}.hdf5"),
                  alert=str(d / f"alert{b}.json"), report=str(d / f"report{b}"))
        try:
            run_stage("CalibrationDriftMonitor", config, **io)
        except DriftAlert as err:
            raised.append((b, err))
        state = io["state"]
    return raised


def test_calibration_monitor_alerts_on_a_width_shrink_and_resumes_like_one_run(tmp_path):
    shrinks = [1.0, 1.0, 1.0, 0.75, 0.75]
    raised = run_calibration_stream(tmp_path / "a", shrinks, on_alert="error")
    # the first too-narrow batch stops the pipeline; its outputs are written all the same
    assert [b for b, _ in raised] == [3, 4] and "cusum_dispersion" in str(raised[0][1])
    d = tmp_path / "a"
    alert = json.loads((d / "alert3.json").read_text())
    fired = {a["statistic"] for a in alert["alerts"]}
    assert {"cusum_dispersion", "ph_dispersion"} <= fired and all(a["batch"] == 3 for a in alert["alerts"])
    assert not json.loads((d / "alert2.json").read_text())["alerts"]
    with h5py.File(d / "table4.hdf5") as f:
        t = {k: v[:] for k, v in f["monitor"].items()}
    assert np.array_equal(t["batch"], np.arange(5)) and t["cusum_dispersion_alarm"].tolist() == [0, 0, 0, 1, 1]
    assert np.all(t["z_dispersion"][3:] > 5) and np.all(np.abs(t["z_dispersion"][:3]) < 3)
    assert (d / "report4" / "statistics_vs_batch.png").exists()
    # the same stream computed in one process, without state files: the same statistics
    cus = Cusum(k=0.5, arl=50.0)
    ctm = ConformalTestMartingale(threshold=200.0, seed=0)  # the width martingale, at twice the threshold
    from calipers.gridpdf import cdf_at

    def pit(name):
        ens = qp.read(str(d / f"{name}_pz.hdf5"))
        zg = np.linspace(0, 3, 601)
        pdfs = ens.pdf(zg)
        pdfs = pdfs / np.trapezoid(pdfs, zg, axis=1)[:, None]
        with h5py.File(d / f"{name}_truth.hdf5") as f:
            return cdf_at(pdfs, zg, f[GROUP]["redshift"][:])

    ctm.add_reference(np.abs(pit("reference") - 0.5))
    for b in range(5):
        u = pit(f"batch{b}")
        out = cus.update([pit_batch_statistics(u)["z_dispersion"]])[0]
        m = ctm.update(np.abs(u - 0.5), b)
        assert out["statistic"] == pytest.approx(t["cusum_dispersion"][b], rel=1e-9)
        assert m["log10_martingale"] == pytest.approx(t["log10_martingale_width"][b], rel=1e-9, abs=1e-12)
    # a second run gives the same table: deterministic
    run_calibration_stream(tmp_path / "b", shrinks)
    with h5py.File(tmp_path / "b" / "table4.hdf5") as f:
        assert all(np.array_equal(f["monitor"][k][:], t[k], equal_nan=True) for k in t)


def test_a_state_of_other_settings_or_another_monitor_is_refused(tmp_path):
    run_calibration_stream(tmp_path, [1.0])
    ref_pz, ref_truth = tmp_path / "reference_pz.hdf5", tmp_path / "reference_truth.hdf5"
    io = dict(reference_pz=str(ref_pz), reference_truth=str(ref_truth), pz=str(tmp_path / "batch0_pz.hdf5"),
              truth=str(tmp_path / "batch0_truth.hdf5"), previous_state=str(tmp_path / "state0.json"),
              state=str(tmp_path / "s.json"), monitor_table=str(tmp_path / "t.hdf5"), alert=str(tmp_path / "a.json"),
              report=str(tmp_path / "r"))
    other = str(tmp_path / "other.yml")
    with open(other, "w") as fh:
        yaml.safe_dump({"CalibrationDriftMonitor": {"arl": 20.0, "nzbins": 601}}, fh)
    with pytest.raises(FileFormatError, match=r"state0.json.*arl: 50.0 in the state, 20.0 now"):
        run_stage("CalibrationDriftMonitor", other, **io)
    (tmp_path / "junk.json").write_text("{\"format\": \"something else\"}")
    with pytest.raises(FileFormatError, match="junk.json: not a calipers monitor state"):
        run_stage("CalibrationDriftMonitor", other, **(io | {"previous_state": str(tmp_path / "junk.json")}))
    assert not (tmp_path / "s.json").exists()


def test_covariate_monitor_flags_a_shifted_feature(tmp_path):
    rng = np.random.default_rng(3)
    ref = write_catalog(tmp_path / "ref.hdf5", {k: rng.normal(size=3000) for k in "abc"})
    null = write_catalog(tmp_path / "b0.hdf5", {k: rng.normal(size=800) for k in "abc"})
    cols = {k: rng.normal(size=800) for k in "abc"}
    cols["b"] = cols["b"] + 0.4
    cols["c"][5] = 99.0  # a non-detection: left out
    shifted = write_catalog(tmp_path / "b1.hdf5", cols)
    config = write_config(tmp_path)
    state = write_fresh_state(str(tmp_path / "s.json"))
    for b, batch in enumerate((null, shifted)):
        run_stage("CovariateDriftMonitor", config, reference=ref, batch=batch, previous_state=state,
                  state=str(tmp_path / f"s{b}.json"), monitor_table=str(tmp_path / f"t{b}.hdf5"),
                  alert=str(tmp_path / f"a{b}.json"), report=str(tmp_path / f"r{b}"))
        state = str(tmp_path / f"s{b}.json")
    assert not json.loads((tmp_path / "a0.json").read_text())["alerts"]
    fired = json.loads((tmp_path / "a1.json").read_text())["alerts"]
    assert {a["detector"] for a in fired} == {"mmd", "ks", "page_hinkley"} and "(b)" in fired[1]["statistic"]
    assert [a["statistic"] for a in fired if a["detector"] == "page_hinkley"] == ["ph_b"]
    with h5py.File(tmp_path / "t1.hdf5") as f:
        assert f["monitor"]["n_left_out"][:].tolist() == [0, 1] and f["monitor"]["ks_b"][1] > 0.1


def _stream(tmp_path, stage, files, extra_config=None):
    """Run ``stage`` over the batches in ``files`` (a list of input dicts) from a fresh state; return
    the last monitoring table."""
    config = tmp_path / "mon.yml"
    config.write_text(yaml.safe_dump({stage: {"arl": 50.0, **(extra_config or {})}}))
    state = write_fresh_state(str(tmp_path / "fresh.json"))
    for b, io in enumerate(files):
        run_stage(stage, str(config), previous_state=state, state=str(tmp_path / f"s{b}.json"),
                  monitor_table=str(tmp_path / f"t{b}.hdf5"), alert=str(tmp_path / f"a{b}.json"),
                  report=str(tmp_path / f"r{b}"), **io)
        state = str(tmp_path / f"s{b}.json")
    with h5py.File(tmp_path / f"t{len(files) - 1}.hdf5") as f:
        return {k: v[:] for k, v in f["monitor"].items()}


def test_gaussian_vector_monitor_sees_over_confident_sigmas(tmp_path):
    from calipers.core.array_sets import ArraySetWriter
    from calipers.core.transit_files import GAUSSIAN_VECTORS

    def write(name, n, seed, shrink=1.0):
        rng = np.random.default_rng(seed)
        mu = rng.normal(size=(n, 2))
        sigma = rng.uniform(0.05, 0.2, (n, 2))
        y = mu + sigma * rng.normal(size=(n, 2))
        pred, truth = str(tmp_path / f"{name}_pred.hdf5"), str(tmp_path / f"{name}_truth.hdf5")
        with ArraySetWriter(pred, GAUSSIAN_VECTORS, {"mu": ((2,), np.float64), "sigma": ((2,), np.float64)}) as out:
            out.append({"mu": mu, "sigma": shrink * sigma}, {"id": np.arange(n)})
        with ArraySetWriter(truth, "test.truth", {"g": ((2,), np.float64)}) as out:
            out.append({"g": y}, {"id": np.arange(n)})
        return pred, truth

    ref_pred, ref_truth = write("ref", 3000, 1)
    files = []
    for b, shrink in enumerate((1.0, 1.0, 0.8)):
        pred, truth = write(f"b{b}", 600, 10 + b, shrink)
        files.append(dict(reference_predictions=ref_pred, reference_truth=ref_truth, predictions=pred, truth=truth))
    t = _stream(tmp_path, "GaussianDriftMonitor", files, {"truth_array": "g", "truth_id_column": "id"})
    assert t["n"].tolist() == [1200, 1200, 1200]  # two outputs per object
    assert t["cusum_dispersion_alarm"].tolist() == [0, 0, 1] and t["z_dispersion"][2] > 5
    assert t["prediction_alarm"][2] == 1 and t["ks_width"][2] > 0.1


def test_class_probability_monitor_sees_over_confident_probabilities(tmp_path):
    from calipers.core.class_predictions import ClassPredictions, write_class_predictions

    def write(name, n, seed, sharpen=1.0):
        rng = np.random.default_rng(seed)
        logit = rng.normal(0, 2, n)
        label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        shown = sharpen * logit
        members = shown[None, :] + 0.1 * rng.normal(size=(3, n))
        path = str(tmp_path / f"{name}.hdf5")
        write_class_predictions(path, ClassPredictions(shown, 1 / (1 + np.exp(-shown)), members, meta={"label": label}))
        return path

    ref = write("ref", 4000, 1)
    files = [dict(reference_predictions=ref, predictions=write(f"b{b}", 2000, 10 + b, s))
             for b, s in enumerate((1.0, 1.0, 2.5))]
    t = _stream(tmp_path, "ClassDriftMonitor", files)
    assert t["cusum_dispersion_alarm"].tolist() == [0, 0, 1] and t["martingale_alarm"][2] == 1
    assert np.all(np.abs(t["z_dispersion"][:2]) < 3)


def test_covariate_monitor_refuses_too_few_features(tmp_path):
    from calipers.core.errors import ConfigError

    ref = write_catalog(tmp_path / "ref.hdf5", {"a": np.zeros(10), "b": np.ones(10)})
    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump({"CovariateDriftMonitor": {"features": ["a"], "colours": True}}))
    io = dict(reference=ref, batch=ref, previous_state=write_fresh_state(str(tmp_path / "s.json")),
              state=str(tmp_path / "s1.json"), monitor_table=str(tmp_path / "t.hdf5"), alert=str(tmp_path / "a.json"),
              report=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="at least 2 column"):
        run_stage("CovariateDriftMonitor", str(config), **io)
    assert not (tmp_path / "s1.json").exists()
