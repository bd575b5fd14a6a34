"""pipelines/lens.yml end to end through ceci on a tiny configuration, its determinism, and the lens
stages' answers to bad inputs (clear errors, nothing written)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import inprogress, leftovers, run_stage, subprocess_env, write_pipeline

REPO = Path(__file__).resolve().parents[1]

TINY_SIZES = {"LensSimulateTrain": 1024, "LensSimulateCalibration": 512, "LensSimulateCalibrationNegatives": 512,
              "LensSimulateTest": 512, "LensSimulateNegatives": 1024, "LensSimulateSelection": 512}
TINY_TRAIN = {"n_members": 2, "max_epochs": 2, "patience": 1, "batch_size": 64, "widths": [8, 8, 16, 16, 16],
              "head_hidden": 16, "device": "cpu"}
# a one-epoch model on 1,000 images cannot meet the full run's thresholds: the test asserts that the
# chain runs, is deterministic and reports; the thresholds are relaxed (the check logic is tested
# in tests/stages/test_lens_stages.py)
RELAXED_GATE = {"min_auroc_lower": 0.0, "min_tpr": 0.0, "max_ece": 1.0, "max_nll_increase": 1.0, "min_purity_inside": 0.0,
                "max_half_width": 1.0, "n_boot": 100,
                "max_fpr_upper": {"elliptical": 1.0, "spiral": 1.0, "edge_on": 1.0, "artifact": 1.0, "ring": 1.0,
                                  "merger": 1.0}}


def tiny_pipeline(tmp: Path) -> Path:
    with open(REPO / "pipelines" / "lens.yml") as fh:
        pipe = yaml.safe_load(fh)
    with open(REPO / "stages" / "lens.yml") as fh:
        stages = yaml.safe_load(fh)
    for name, n in TINY_SIZES.items():
        stages[name]["n_images"] = n
        stages[name]["chunk_size"] = 512
    stages["LensTrain"].update(TINY_TRAIN)
    for name in ("LensScoreCalibration", "LensScoreCalibrationNegatives", "LensScoreTest", "LensScoreNegatives",
                 "LensScoreSelection"):
        stages[name] = dict(stages[name], mc_samples=4, batch_size=128, chunk_size=256, device="cpu")
    stages["ClassifierGate"].update(RELAXED_GATE)
    stages["LensSelectionFunction"]["min_count"] = 20
    stages["LensReport"]["n_gallery"] = 8
    return write_pipeline(tmp, pipe, stages)


@pytest.fixture(scope="module")
def lens_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lens_pipeline")
    pipe = tiny_pipeline(d)
    proc = subprocess.run(["ceci", str(pipe)], capture_output=True, text=True, env=subprocess_env(), cwd=d,
                          timeout=900)
    return d, proc


def test_pipeline_runs_and_reports(lens_run):
    d, proc = lens_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = d / "out"
    report = out / "lens_report"
    page = (report / "index.html").read_text()
    for figure in ("roc", "reliability", "purity", "completeness", "fpr_by_class", "gallery_false_positives",
                   "gallery_missed_lenses"):
        assert (report / f"{figure}.png").exists(), figure
        assert f"{figure}.png" in page
    assert any(p.name.startswith("heatmap_") for p in report.iterdir())
    sf = json.loads((out / "selection_function" / "selection_function.json").read_text())
    assert set(sf["strata"]) == {"psf_fwhm_r", "n_exposures", "theta_e", "source_mag_r", "arc_snr"}
    for rows in sf["strata"].values():
        for r in rows:  # a stratum is a number with its interval, or flagged
            assert (r["status"] == "ok") == (r["completeness"] is not None)
            if r["status"] == "ok":
                assert r["n"] >= 20 and r["lo"] <= r["completeness"] <= r["hi"]
    gate = json.loads((out / "gate_report" / "report.json").read_text())
    assert gate["passed"] and {c["name"] for c in gate["checks"]} >= {"auroc_lower", "ece", "purity_bins_inside",
                                                                       "fpr_upper_ring"}
    assert (out / "lens_model" / "member_0.onnx").exists()
    with h5py.File(out / "calibrated_test_predictions.hdf5") as fh:
        assert fh["member_logits"].shape == (2, 512)
        assert {"logit_uncalibrated", "logit_deploy", "prob_deploy", "logit_single_view"} <= set(fh)
        p = fh["prob"][:]
        assert np.all((p > 0) & (p < 1))


def test_training_is_deterministic_under_a_seed(lens_run, tmp_path):
    d, proc = lens_run
    assert proc.returncode == 0
    out = d / "out"
    cfg = yaml.safe_load((d / "config.yml").read_text())
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"LensTrain": cfg["LensTrain"]}))
    run_stage("LensTrain", str(config), images=str(out / "training_images.hdf5"), model=str(tmp_path / "again"))
    a = torch.load(out / "lens_model" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "again" / "weights.pt", weights_only=True)
    assert set(a) == set(b)
    for member in a:
        for key in a[member]:
            assert torch.equal(a[member][key], b[member][key]), (member, key)


def _tiny_images(tmp_path, n=64, nan_row=None, lens_fraction=0.5, n_pix=None):
    from calipers.core.image_sets import write_image_set
    from calipers.lens.simulate import LensSimConfig, simulate_cutouts

    cut = simulate_cutouts(n, LensSimConfig(lens_fraction=lens_fraction, block_size=64), seed=9)
    if n_pix is not None:
        cut.data = np.ascontiguousarray(cut.data[..., :n_pix, :n_pix])
        cut.ivar = np.ascontiguousarray(cut.ivar[..., :n_pix, :n_pix])
    path = tmp_path / f"images_{nan_row}_{n_pix}.hdf5"
    write_image_set(str(path), cut)
    if nan_row is not None:  # a file damaged after it was written (the writer refuses NaN pixels)
        with h5py.File(path, "r+") as fh:
            fh["data"][nan_row, 1, 5, 7] = np.nan
    return path


def test_nan_pixels_are_named_and_nothing_is_written(lens_run, tmp_path):
    d, _ = lens_run
    images = _tiny_images(tmp_path, nan_row=37)
    out = tmp_path / "pred.hdf5"
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"LensScore": {"mc_samples": 2, "chunk_size": 256, "batch_size": 64, "device": "cpu"}}))
    with pytest.raises(ValueError, match=r"row 37"):
        run_stage("LensScore", str(cfg), model=str(d / "out" / "lens_model"), images=str(images), predictions=str(out))
    assert not out.exists() and not inprogress(out).exists()
    assert leftovers(tmp_path) == []


def test_wrong_image_size_for_the_model(lens_run, tmp_path):
    from calipers.lens.model import ImageShapeError

    d, _ = lens_run
    images = _tiny_images(tmp_path, n_pix=48)
    out = tmp_path / "pred.hdf5"
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"LensScore": {"device": "cpu"}}))
    with pytest.raises(ImageShapeError, match="48x48.*64x64"):
        run_stage("LensScore", str(cfg), model=str(d / "out" / "lens_model"), images=str(images), predictions=str(out))
    assert not out.exists() and not inprogress(out).exists()


def test_missing_stratum_column_is_named(lens_run, tmp_path):
    from calipers.core.errors import FileFormatError

    d, _ = lens_run
    out = d / "out"
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"LensSelectionFunction": {"strata": {"seeing_fwhm": [0.5, 1.0, 1.5]},
                                                             "pairs": []}}))
    target = tmp_path / "sf"
    with pytest.raises(FileFormatError, match="seeing_fwhm"):
        run_stage("LensSelectionFunction", str(cfg), lens_predictions=str(out / "calibrated_selection_lens_predictions.hdf5"),
                  negative_predictions=str(out / "calibrated_negative_predictions.hdf5"), selection_function=str(target))
    assert not target.exists() and not inprogress(target).exists()


def test_fits_cutouts_stage_round_trip_and_missing_band(tmp_path):
    from astropy.io import fits

    from calipers.core.image_sets import read_image_set, write_fits_cutouts
    from calipers.lens.simulate import LensSimConfig, simulate_cutouts

    cut = simulate_cutouts(12, LensSimConfig(block_size=64), seed=4)
    index = write_fits_cutouts(str(tmp_path / "fits"), cut)
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"LensCutouts": {"bands": ["g", "r", "i"]}}))
    out = tmp_path / "images.hdf5"
    run_stage("LensCutouts", str(cfg), cutout_index=index, images=str(out))
    back = read_image_set(str(out))
    np.testing.assert_array_equal(back.data, cut.data)
    np.testing.assert_array_equal(back.ivar, cut.ivar)
    np.testing.assert_array_equal(back.meta["label"], cut.meta["label"])
    # remove the i band from one file: an error naming the file and the band, nothing written
    victim = sorted((tmp_path / "fits").glob("*.fits"))[5]
    with fits.open(victim) as hdul:
        kept = fits.HDUList([h for h in hdul if h.name not in ("I",)])
        kept.writeto(victim, overwrite=True)
    out2 = tmp_path / "images2.hdf5"
    with pytest.raises(ValueError, match=rf"{victim.name}.*\b[iI]\b"):
        run_stage("LensCutouts", str(cfg), cutout_index=index, images=str(out2))
    assert not out2.exists() and not inprogress(out2).exists()
