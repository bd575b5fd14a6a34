"""The shear stages on a tiny configuration (17-pixel stamps, a few hundred galaxies, one epoch):
simulate, train, estimate with responses, calibrate, bias, gate; determinism under a seed; and the bad
inputs the issue names (stamps of even size, NaN pixels, a missing PSF): clear errors and no output."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import yaml

from calipers.core.array_sets import ArraySetWriter, read_array_set
from calipers.core.errors import FileFormatError
from calipers.core.shear_files import STAMPS
from conftest import inprogress, run_stage

pytest.importorskip("galsim")
pytest.importorskip("e2cnn")

SIM = {"stamp_size": 17, "hlr_range": [0.35, 0.5], "block_size": 64}


def config(directory, extra=None) -> str:
    cfg = {"global": {"simulator": SIM},
           "SimTrain": {"name": "SimTrain", "seed": 1, "n_galaxies": 300, "chunk_size": 128},
           "SimVal": {"name": "SimVal", "seed": 2, "n_galaxies": 100, "chunk_size": 128},
           "SimRing": {"name": "SimRing", "seed": 3, "n_galaxies": 40, "chunk_size": 16,
                       "ring_shears": [[0.02, 0.02], [-0.02, -0.02], [0.02, -0.02], [-0.02, 0.02]]},
           "ShearTrain": {"seed": 4, "channels": [2, 4], "max_epochs": 1, "device": "cpu", "n_rotation_check": 4},
           "ShearEstimate": {"seed": 5, "device": "cpu", "chunk_size": 64},
           "ShearCalibrate": {"size_edges": [0.35, 0.5]},
           "ShearBias": {"size_edges": [0.35, 0.42, 0.5], "n_boot": 20},
           "ShearGate": {"on_fail": "warn"}} | (extra or {})
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("shear")
    cfg = config(d)
    out = {k: str(d / f"{k}.hdf5") for k in ("train", "val", "ring", "est", "est2", "cal")}
    for name, key in (("SimTrain", "train"), ("SimVal", "val"), ("SimRing", "ring")):
        run_stage("ShearSimulate", cfg, name=name, stamps=out[key])
    out["model"] = str(d / "model")
    run_stage("ShearTrain", cfg, stamps=out["train"], held_out_stamps=out["val"], model=out["model"])
    run_stage("ShearEstimate", cfg, model=out["model"], stamps=out["ring"], estimates=out["est"])
    run_stage("ShearEstimate", cfg, model=out["model"], stamps=out["ring"], estimates=out["est2"])
    out["calibrator"], out["bias"], out["gate"] = str(d / "calibrator"), str(d / "bias"), str(d / "gate")
    run_stage("ShearCalibrate", cfg, estimates=out["est"], calibrated=out["cal"], calibrator=out["calibrator"])
    run_stage("ShearBias", cfg, calibrated=out["cal"], bias=out["bias"])
    run_stage("ShearGate", cfg, calibrated=out["cal"], bias=out["bias"], report=out["gate"])
    out["report"] = str(d / "report")
    run_stage("ShearReport", cfg, model=out["model"], calibrated=out["cal"], bias=out["bias"], gate=out["gate"],
              shear_report=out["report"])
    return out | {"config": cfg}


def test_stages_write_estimates_responses_and_reports(run):
    arrays, meta = read_array_set(run["est"], None, None, meta=None)
    assert arrays["mu"].shape == (160, 2) and arrays["covariance"].shape == (160, 2, 2)
    assert np.all(np.linalg.eigvalsh(arrays["covariance"]) > 0)
    assert np.allclose(arrays["sigma"] ** 2, np.stack([arrays["covariance"][:, 0, 0], arrays["covariance"][:, 1, 1]], 1))
    assert np.all(np.hypot(*arrays["mu"].T) < 1)
    assert np.array_equal(meta["pair_id"], np.repeat(np.arange(40), 4))
    cal, cmeta = read_array_set(run["cal"], None, None, meta=None)
    assert "shear" in cal and set(np.unique(cmeta["calibration_bin"])) <= {0, 1, 2}
    calib = json.load(open(f"{run['calibrator']}/calibrator.json"))
    assert sum(calib["count"].values()) == 160
    bias = json.load(open(f"{run['bias']}/report.json"))
    assert {"raw_m1", "calibrated_m2_err"} <= set(bias["metrics"])
    assert [r["split"] for r in bias["bias"]["calibrated"]][:1] == ["all"]
    gate = json.load(open(f"{run['gate']}/report.json"))
    assert {c["name"] for c in gate["checks"]} >= {"coverage_68", "coverage_95", "fraction_abs_eps_ge_1",
                                                   "calibrated_m1", "calibrated_c2"}
    card = json.load(open(f"{run['model']}/metadata.json"))["model_card"]
    assert card["equivariance"]["exact_90_max_error"] < 1e-5
    report = json.load(open(f"{run['report']}/report.json"))
    assert report["metrics"]["equivariance_exact_90_max_error"] < 1e-5
    assert set(report["figures"]) == {"m_vs_snr.png", "m_vs_size.png", "mahalanobis.png"}


def test_estimates_are_deterministic_under_a_seed(run):
    a, _ = read_array_set(run["est"], None, None, meta=None)
    b, _ = read_array_set(run["est2"], None, None, meta=None)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def _copy(src, dst):
    dst.write_bytes(open(src, "rb").read())
    return dst


def test_nan_pixel_is_named_and_nothing_written(run, tmp_path):
    bad = _copy(run["ring"], tmp_path / "bad.hdf5")
    with h5py.File(bad, "a") as f:
        f["image"][5, 3, 4] = np.nan
    out = tmp_path / "est.hdf5"
    with pytest.raises(FileFormatError, match=r"bad.hdf5: non-finite pixel in column 'image', row 5, pixel \(y=3, x=4\)"):
        run_stage("ShearEstimate", run["config"], model=run["model"], stamps=str(bad), estimates=str(out))
    assert not out.exists() and not inprogress(out).exists()


def test_missing_psf_is_refused_and_nothing_written(run, tmp_path):
    bad = _copy(run["ring"], tmp_path / "nopsf.hdf5")
    with h5py.File(bad, "a") as f:
        del f["fixed/psf_images"]
    out = tmp_path / "est.hdf5"
    with pytest.raises(FileFormatError, match="nopsf.hdf5: no PSF"):
        run_stage("ShearEstimate", run["config"], model=run["model"], stamps=str(bad), estimates=str(out))
    assert not out.exists() and not inprogress(out).exists()


def test_even_stamps_are_refused_and_nothing_written(run, tmp_path):
    even = tmp_path / "even.hdf5"
    with ArraySetWriter(str(even), STAMPS, {"image": ((16, 16), np.float32)},
                        fixed={"psf_images": np.ones((1, 16, 16)) / 256}, attrs={"pixel_scale": 0.2}) as w:
        w.append({"image": np.zeros((3, 16, 16), np.float32)},
                 {"galaxy_id": np.arange(3), "psf_index": np.zeros(3, int), "noise_sigma": np.ones(3),
                  "noise_key": np.arange(3)})
    out = tmp_path / "est.hdf5"
    with pytest.raises(FileFormatError, match="even.hdf5: stamps are 16x16; .* odd size"):
        run_stage("ShearEstimate", run["config"], model=run["model"], stamps=str(even), estimates=str(out))
    assert not out.exists() and not inprogress(out).exists()
