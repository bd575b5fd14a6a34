"""PZInform / PZEstimate through ceci's stage API and the ``python -m calipers`` command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import qp
import torch

import calipers
from calipers.core.models import load_model
from calipers.core.errors import CalipersError, CatalogError, ConfigError, ModelMismatchError
from calipers.photoz import DeepEnsemble, mixture_pdf
from calipers.stages import PZEstimate, PZInform
from conftest import (
    BANDS,
    TINY_INFORM,
    TRAIN_100,
    VALID_10,
    inprogress,
    leftovers,
    mags_errs,
    random_rows,
    run_as_ranks,
    run_stage,
    subprocess_env,
    subset,
    write_catalog,
    write_config,
)

POINT_ESTIMATES = ["zmode", "zmean", "zmedian", "zlo68", "zhi68"]


def assert_no_output(path):
    """Neither the final output nor ceci's in-progress file/directory exists."""
    assert not os.path.exists(path), f"{path} was left behind"
    assert not os.path.exists(inprogress(path)), f"{inprogress(path)} was left behind"
    assert leftovers(os.path.dirname(path)) == []


def read_group(path, group) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: v[:] for k, v in f[group].items()}


# ---------------------------------------------------------------------------- (a) config keys
def test_misspelt_config_key_is_an_error(tmp_path):
    cfg = write_config(tmp_path / "config.yml", inform={**TINY_INFORM, "n_member": 2})
    model = tmp_path / "model"
    with pytest.raises(ConfigError) as err:
        run_stage("PZInform", cfg, training_catalog=TRAIN_100, model=str(model))
    msg = str(err.value)
    assert "'n_member'" in msg
    assert "did you mean 'n_members'" in msg
    assert_no_output(model)


def test_misspelt_config_key_on_the_command_line(tmp_path):
    """The same error through ``python -m calipers`` (the command ceci runs)."""
    cfg = write_config(tmp_path / "config.yml", inform={**TINY_INFORM, "n_member": 2})
    model = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-m", "calipers", "PZInform", f"--training_catalog={TRAIN_100}",
         f"--config={cfg}", f"--model={model}"],
        capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=120,
    )
    assert proc.returncode != 0
    assert "ConfigError" in proc.stderr
    assert "n_member" in proc.stderr and "did you mean 'n_members'" in proc.stderr
    assert_no_output(model)


def test_misspelt_key_in_estimate_section(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "config.yml", estimate={"chunksize": 5})
    pz = tmp_path / "pz.hdf5"
    with pytest.raises(ConfigError, match="'chunksize'.*did you mean 'chunk_size'"):
        run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=VALID_10, pz=str(pz))
    assert_no_output(pz)


def test_unknown_argument_through_make_stage(tmp_path):
    with pytest.raises(ConfigError, match="'n_member' \\(in arguments\\).*n_members"):
        PZInform.make_stage(training_catalog=TRAIN_100, model=str(tmp_path / "model"), n_member=2)


def test_bad_output_format(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "config.yml", estimate={"output_format": "hist"})
    pz = tmp_path / "pz.hdf5"
    with pytest.raises(ConfigError, match="output_format.*'hist'"):
        run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=VALID_10, pz=str(pz))
    assert_no_output(pz)


# ---------------------------------------------------------------------------- (b) missing columns
def test_inform_catalog_missing_a_band_column(tmp_path, train100):
    cat = write_catalog(tmp_path / "no_y.hdf5", {k: v for k, v in train100.items() if k != "mag_y_lsst"})
    cfg = write_config(tmp_path / "config.yml", inform=TINY_INFORM)
    model = tmp_path / "model"
    with pytest.raises(CatalogError) as err:
        run_stage("PZInform", cfg, training_catalog=cat, model=str(model))
    msg = str(err.value)
    assert cat in msg and "mag_y_lsst" in msg and "'photometry'" in msg
    assert_no_output(model)


def test_estimate_catalog_missing_a_band_column(tmp_path, valid10, tiny_model_dir):
    cat = write_catalog(tmp_path / "no_y.hdf5", {k: v for k, v in valid10.items() if k != "mag_y_lsst"})
    cfg = write_config(tmp_path / "config.yml", estimate={})
    pz = tmp_path / "pz.hdf5"
    with pytest.raises(CalipersError) as err:
        run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=cat, pz=str(pz))
    msg = str(err.value)
    assert cat in msg and "mag_y_lsst" in msg
    assert_no_output(pz)


def test_inform_non_finite_redshift(tmp_path, train100):
    cols = dict(train100)
    cols["redshift"] = cols["redshift"].copy()
    cols["redshift"][[5, 9]] = np.nan
    cat = write_catalog(tmp_path / "nan_z.hdf5", cols)
    cfg = write_config(tmp_path / "config.yml", inform=TINY_INFORM)
    model = tmp_path / "model"
    with pytest.raises(ValueError, match="'redshift'.*2 row.*row 5"):
        run_stage("PZInform", cfg, training_catalog=cat, model=str(model))
    assert_no_output(model)


# ---------------------------------------------------------------------------- (c) band mismatch
def test_model_trained_on_other_bands(tmp_path, griz_model_dir):
    cfg = write_config(tmp_path / "config.yml", estimate={"bands": BANDS})
    pz = tmp_path / "pz.hdf5"
    with pytest.raises(ModelMismatchError) as err:
        run_stage("PZEstimate", cfg, model=griz_model_dir, catalog=VALID_10, pz=str(pz))
    msg = str(err.value)
    assert "['g', 'r', 'i', 'z']" in msg and str(BANDS) in msg
    assert_no_output(pz)


def test_model_bands_missing_from_catalog(tmp_path, valid10, tiny_model_dir):
    """A ugrizy model applied to a griz catalog, bands taken from the model."""
    cat = write_catalog(tmp_path / "griz.hdf5",
                        {k: v for k, v in valid10.items() if not k.endswith(("_u_lsst", "_y_lsst"))})
    cfg = write_config(tmp_path / "config.yml", estimate={})
    pz = tmp_path / "pz.hdf5"
    with pytest.raises(ModelMismatchError, match="mag_u_lsst"):
        run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=cat, pz=str(pz))
    assert_no_output(pz)


def test_griz_model_takes_its_bands_from_the_model(tmp_path, griz_model_dir):
    cfg = write_config(tmp_path / "config.yml", estimate={})  # bands: [] -> from the model
    pz = tmp_path / "pz.hdf5"
    run_stage("PZEstimate", cfg, model=griz_model_dir, catalog=VALID_10, pz=str(pz))
    assert qp.read(str(pz)).npdf == 10


def test_catalog_without_id_column(tmp_path, valid10, tiny_model_dir):
    cat = write_catalog(tmp_path / "no_id.hdf5", {k: v for k, v in valid10.items() if k != "id"})
    cfg = write_config(tmp_path / "config.yml", estimate={})
    pz = tmp_path / "pz.hdf5"
    run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=cat, pz=str(pz))
    ens = qp.read(str(pz))
    assert ens.npdf == 10 and "id" not in ens.ancil and "zmode" in ens.ancil


def test_estimate_missing_catalog_file_is_not_a_model_mismatch(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "config.yml", estimate={})
    pz = tmp_path / "pz.hdf5"
    with pytest.raises(FileNotFoundError):
        run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=str(tmp_path / "typo.hdf5"), pz=str(pz))
    assert_no_output(pz)


def test_estimate_wrong_group_is_a_catalog_error(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "config.yml", estimate={}, global_={"hdf5_groupname": "photometri"})
    pz = tmp_path / "pz.hdf5"
    with pytest.raises(CatalogError, match="no group 'photometri'"):
        run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=VALID_10, pz=str(pz))
    assert_no_output(pz)


def test_misspelt_global_key_is_an_error(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "config.yml", estimate={}, global_={"chunk_sise": 3})
    pz = tmp_path / "pz.hdf5"
    with pytest.raises(ConfigError, match="chunk_sise"):
        run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=VALID_10, pz=str(pz))


def test_empty_stage_section_means_defaults(tmp_path, tiny_model_dir):
    cfg = tmp_path / "config.yml"
    cfg.write_text("global:\n  hdf5_groupname: photometry\nPZEstimate:\n  # chunk_size: 10\n")
    pz = tmp_path / "pz.hdf5"
    run_stage("PZEstimate", str(cfg), model=tiny_model_dir, catalog=VALID_10, pz=str(pz))
    assert qp.read(str(pz)).npdf == 10


# ---------------------------------------------------------------------------- outputs
def test_inform_writes_a_loadable_model_with_provenance(tiny_model_dir, valid10):
    assert sorted(os.listdir(tiny_model_dir)) == ["metadata.json", "provenance.json", "weights.pt"]
    ens = load_model(tiny_model_dir)
    assert ens.bands == BANDS
    assert ens.config.n_members == TINY_INFORM["n_members"]
    assert ens.config.hidden == TINY_INFORM["hidden"]
    assert all(h["epochs_run"] <= TINY_INFORM["max_epochs"] for h in ens.history)
    with open(os.path.join(tiny_model_dir, "provenance.json")) as fh:
        prov = json.load(fh)
    assert prov["calipers_version"] == calipers.__version__
    assert prov["stage"] == "PZInform"
    assert json.loads(prov["config"])["n_members"] == TINY_INFORM["n_members"]
    assert "training_catalog" in json.loads(prov["input_hashes"])
    assert prov["n_train"] == "100"
    assert set(json.loads(prov["nondetections"])) == set(BANDS)
    w, mu, s = ens.predict(*mags_errs(valid10))
    assert np.all(np.isfinite(mu))


def test_inform_is_reproducible(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "config.yml", inform=dict(TINY_INFORM, bands=BANDS))
    model = tmp_path / "model"
    run_stage("PZInform", cfg, training_catalog=TRAIN_100, model=str(model))
    a = torch.load(os.path.join(tiny_model_dir, "weights.pt"), weights_only=True)
    b = torch.load(model / "weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    for member in a:
        for name in a[member]:
            assert torch.equal(a[member][name], b[member][name]), (member, name)


@pytest.fixture(scope="module")
def estimate_output(tmp_path_factory, tiny_model_dir) -> str:
    d = tmp_path_factory.mktemp("estimate")
    cfg = write_config(d / "config.yml", estimate={"chunk_size": 4})
    pz = d / "pz.hdf5"
    run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=VALID_10, pz=str(pz))
    assert not inprogress(pz).exists()
    return str(pz)


def test_estimate_output_is_a_qp_ensemble(estimate_output, valid10, tiny_model_dir):
    ens = qp.read(estimate_output)
    assert ens.gen_class.name == "mixmod"
    assert ens.npdf == len(valid10["id"]) == 10
    for key in POINT_ESTIMATES:
        assert key in ens.ancil
        assert np.asarray(ens.ancil[key]).shape == (10,)
        assert np.all(np.isfinite(ens.ancil[key]))
    np.testing.assert_array_equal(ens.ancil["id"], valid10["id"])
    assert np.all(ens.ancil["zlo68"] <= ens.ancil["zmedian"])
    assert np.all(ens.ancil["zmedian"] <= ens.ancil["zhi68"])
    # the stored mixture is the model's prediction for these rows, in the catalog's order
    model = load_model(tiny_model_dir)
    grid = np.linspace(0, 3, 61)
    expected = mixture_pdf(*model.predict(*mags_errs(valid10)), grid)
    # (chunks of 4 rows vs 10 at once: float32 products may round differently, ~1e-7 in a mean,
    # which moves the density of the sharpest components by ~1e-5)
    np.testing.assert_allclose(ens.pdf(grid), expected, rtol=1e-4, atol=1e-6)
    # and it integrates to 1
    wide = np.linspace(-10, 10, 20001)
    np.testing.assert_allclose(np.trapezoid(ens.pdf(wide), wide, axis=1), 1.0, atol=1e-4)


def test_estimate_output_provenance(estimate_output, tiny_model_dir):
    with h5py.File(estimate_output, "r") as f:
        assert "provenance" in f
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f["provenance"].attrs.items()}
    assert attrs["calipers_version"] == calipers.__version__
    assert attrs["stage"] == "PZEstimate"
    assert json.loads(attrs["config"])["chunk_size"] == 4
    assert set(json.loads(attrs["input_hashes"])) == {"model", "catalog"}


@pytest.fixture(scope="module")
def catalog_250(tmp_path_factory, dc2) -> str:
    """250 random rows of the DC2 training catalog, with a few non-detections."""
    cols = subset(dc2, random_rows(len(dc2["id"]), 250, seed=11))
    cols["mag_u_lsst"] = cols["mag_u_lsst"].copy()
    cols["mag_u_lsst"][::17] = 99.0
    return write_catalog(tmp_path_factory.mktemp("cat250") / "cat.hdf5", cols)


@pytest.mark.parametrize("chunk", [4, 64, 100])
def test_chunked_output_equals_single_chunk(tmp_path, tiny_model_dir, catalog_250, chunk):
    """Chunking changes nothing beyond float32 rounding: torch's CPU matrix products may round
    a row differently (~1e-7 relative) depending on how many rows go in with it. (An MPI run uses
    the serial run's chunks, so it is bit-identical to it: tests/test_mpi.py.)"""
    outputs = {}
    for size in (chunk, 100_000):
        cfg = write_config(tmp_path / f"config{size}.yml", estimate={"chunk_size": size})
        outputs[size] = str(tmp_path / f"pz{size}.hdf5")
        run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=catalog_250, pz=outputs[size])
    for group in ("meta", "data", "ancil"):
        a, b = read_group(outputs[chunk], group), read_group(outputs[100_000], group)
        assert a.keys() == b.keys()
        for k in a:
            if a[k].dtype.kind not in "f":
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{group}/{k}")
            else:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=f"{group}/{k}")
    assert qp.read(outputs[chunk]).npdf == 250
    assert np.all(np.isfinite(read_group(outputs[chunk], "ancil")["zmode"]))


def test_interp_output(tmp_path, tiny_model_dir, estimate_output):
    cfg = write_config(tmp_path / "config.yml",  # same chunks as estimate_output
                       estimate={"output_format": "interp", "zmin": 0.0, "zmax": 3.0, "nzbins": 151, "chunk_size": 4})
    pz = tmp_path / "pz.hdf5"
    run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=VALID_10, pz=str(pz))
    ens = qp.read(str(pz))
    assert ens.gen_class.name == "interp"
    assert ens.npdf == 10
    grid = np.linspace(0.0, 3.0, 151)
    np.testing.assert_allclose(np.asarray(ens.metadata["xvals"]).ravel(), grid)
    yvals = np.asarray(ens.objdata["yvals"])
    assert yvals.shape == (10, 151) and np.all(yvals >= 0)
    np.testing.assert_allclose(np.trapezoid(yvals, grid, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.trapezoid(ens.pdf(grid), grid, axis=1), 1.0, atol=1e-5)
    # the same p(z) as the exact mixture output, renormalised on the grid
    mix = qp.read(estimate_output).pdf(grid)
    mix /= np.trapezoid(mix, grid, axis=1)[:, None]
    np.testing.assert_allclose(yvals, mix, rtol=1e-4, atol=1e-6)
    # point estimates do not depend on the output format
    for key in POINT_ESTIMATES:
        np.testing.assert_array_equal(ens.ancil[key], qp.read(estimate_output).ancil[key])


def test_cli_describe_and_stages(estimate_output, capsys):
    from calipers.cli import main

    assert main(["describe", estimate_output]) == 0
    out = capsys.readouterr().out
    assert "10 distributions" in out and "mixmod" in out and calipers.__version__ in out
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    assert "PZInform" in out and "PZEstimate" in out


# ---------------------------------------------------------------------------- failures mid-run
def test_estimate_failure_mid_run_leaves_no_output(tmp_path, tiny_model_dir, monkeypatch):
    calls = {"n": 0}
    real_predict = DeepEnsemble.predict

    def failing_predict(self, mags, errs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure in the second chunk")
        return real_predict(self, mags, errs)

    monkeypatch.setattr(DeepEnsemble, "predict", failing_predict)
    cfg = write_config(tmp_path / "config.yml", estimate={"chunk_size": 3})
    pz = tmp_path / "pz.hdf5"
    with pytest.raises(RuntimeError, match="second chunk"):
        run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=VALID_10, pz=str(pz))
    assert calls["n"] == 2  # the in-progress file had been written to
    assert_no_output(pz)


def test_inform_failure_mid_save_leaves_no_output(tmp_path, monkeypatch):
    def failing_save(directory, ensemble, **_):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "metadata.json"), "w") as fh:
            fh.write("{")
        raise OSError("simulated disk full")

    import calipers.stages.photoz

    monkeypatch.setattr(calipers.stages.photoz, "save_model", failing_save)
    cfg = write_config(tmp_path / "config.yml", inform=TINY_INFORM)
    model = tmp_path / "model"
    with pytest.raises(OSError, match="disk full"):
        run_stage("PZInform", cfg, training_catalog=TRAIN_100, model=str(model))
    assert_no_output(model)


def test_stage_declarations():
    """Every option has a help message; the I/O tags are the pipeline's."""
    assert [t for t, _ in PZInform.inputs] == ["training_catalog"]
    assert [t for t, _ in PZInform.outputs] == ["model"]
    assert [t for t, _ in PZEstimate.inputs] == ["model", "catalog"]
    assert [t for t, _ in PZEstimate.outputs] == ["pz"]
    for cls in (PZInform, PZEstimate):
        for key, param in cls.config_options.items():
            assert param.msg, f"{cls.name}.{key} has no help message"
    assert PZEstimate.parallel and PZInform.parallel  # PZInform shares members over ranks


# ---------------------------------------------------------------------------- MPI (simulated)
def test_estimate_split_over_ranks_equals_serial(tmp_path, tiny_model_dir, estimate_output):
    """Two ranks (threads with a shared barrier) write part files that rank 0 merges."""
    cfg = write_config(tmp_path / "config.yml", estimate={"chunk_size": 4})  # as estimate_output
    pz = tmp_path / "pz.hdf5"
    run_as_ranks(PZEstimate, {"model": tiny_model_dir, "catalog": VALID_10, "pz": str(pz), "config": cfg}, size=2)
    assert sorted(f for f in os.listdir(tmp_path) if f != ".calipers") == ["config.yml", "pz.hdf5"]  # no part or in-progress files (.calipers: the run record)
    for group in ("data", "ancil"):
        a, b = read_group(str(pz), group), read_group(estimate_output, group)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{group}/{k}")
    with h5py.File(pz, "r") as f:
        assert f["provenance"].attrs["calipers_version"] == calipers.__version__
    assert qp.read(str(pz)).npdf == 10


# ---------------------------------------------------------------------------- support flags, model card, weights
def test_model_stores_support_region_and_card(tiny_model_dir, train100):
    from calipers.core.models import load_model_and_support

    ens, support, card = load_model_and_support(tiny_model_dir)
    assert support is not None and support.n_neighbors == 10 and support.level == 0.99
    assert support._labelled.shape == (len(train100["redshift"]), 2 * len(BANDS) - 1)
    data = card["training_data"]
    assert data["rows"] == len(train100["redshift"])
    assert data["redshift"]["min"] == pytest.approx(float(np.min(train100["redshift"])))
    assert data["redshift"]["max"] == pytest.approx(float(np.max(train100["redshift"])))
    assert len(data["sha256"]) == 64
    assert set(data["magnitudes_detected"]) == set(BANDS)
    assert card["support_region"]["threshold"] == support.threshold
    assert [m["member"] for m in card["model"]["members"]] == [0, 1]
    assert card["software"]["torch"] == torch.__version__


def test_estimate_flags_galaxies_outside_the_training_support(tmp_path, tiny_model_dir, valid10):
    """A copy of the validation galaxies with colours no galaxy has (bands alternately 3 mag
    fainter and brighter) is outside the support of the 100 training galaxies; the originals are
    mostly inside."""
    cols = dict(valid10)
    n = len(cols["redshift"])
    for i, b in enumerate(BANDS):
        shift = 3.0 * (-1) ** i
        faint = np.where(np.abs(cols[f"mag_{b}_lsst"]) < 90, cols[f"mag_{b}_lsst"] + shift, cols[f"mag_{b}_lsst"])
        cols[f"mag_{b}_lsst"] = np.concatenate([cols[f"mag_{b}_lsst"], faint])
        cols[f"mag_err_{b}_lsst"] = np.concatenate([cols[f"mag_err_{b}_lsst"]] * 2)
    cols["redshift"] = np.concatenate([cols["redshift"]] * 2)
    cols.pop("id", None)
    cat = write_catalog(tmp_path / "cat.hdf5", cols)
    cfg = write_config(tmp_path / "config.yml", estimate={"epistemic": True, "point_estimates": []})
    run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=str(cat), pz=str(tmp_path / "pz.hdf5"))
    ens = qp.read(str(tmp_path / "pz.hdf5"))
    ood, score = ens.ancil["ood"], ens.ancil["support_score"]
    assert ood.dtype == np.int8
    assert ood[n:].all() and ood[:n].mean() < 0.5
    assert np.all(score[n:] > score[:n].max())
    mi, h = ens.ancil["mutual_information"], ens.ancil["entropy"]
    assert np.all(mi >= 0) and np.all(np.isfinite(h)) and np.all(mi <= np.log(2) + 1e-12)  # 2 members
    cfg = write_config(tmp_path / "config2.yml", estimate={"support_flags": False, "point_estimates": []})
    run_stage("PZEstimate", cfg, model=tiny_model_dir, catalog=str(cat), pz=str(tmp_path / "pz2.hdf5"))
    assert "ood" not in qp.read(str(tmp_path / "pz2.hdf5")).ancil


def test_inform_with_weight_column(tmp_path, train100):
    cols = dict(train100)
    z = cols["redshift"]
    cols["w"] = np.exp(2 * (z - z.mean()))
    cat = write_catalog(tmp_path / "train.hdf5", cols)
    for label, extra in (("plain", {}), ("weighted", {"weight_column": "w"})):
        cfg = write_config(tmp_path / f"{label}.yml", inform=dict(TINY_INFORM, **extra))
        run_stage("PZInform", cfg, training_catalog=str(cat), model=str(tmp_path / label))
    plain, weighted = (torch.load(tmp_path / d / "weights.pt", weights_only=True) for d in ("plain", "weighted"))
    assert any(not torch.equal(plain["member_0"][k], weighted["member_0"][k]) for k in plain["member_0"])
    from calipers.core.models import load_model_and_support

    card = load_model_and_support(str(tmp_path / "weighted"))[2]
    w = cols["w"]
    assert card["training_data"]["importance_weights"]["ess"] == pytest.approx(w.sum() ** 2 / (w * w).sum())
    cols["w"] = np.where(np.arange(len(z)) == 17, -1.0, cols["w"])
    bad = write_catalog(tmp_path / "bad.hdf5", cols)
    cfg = write_config(tmp_path / "bad.yml", inform=dict(TINY_INFORM, weight_column="w"))
    with pytest.raises(ValueError, match=r"column 'w'.*first at row 17"):
        run_stage("PZInform", cfg, training_catalog=str(bad), model=str(tmp_path / "bad_model"))
    assert_no_output(tmp_path / "bad_model")
