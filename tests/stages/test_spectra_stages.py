"""SpectraSimulate and FisherBound on a tiny simulator (256 pixels around the Ca II triplet, 20 forest
lines): layout, determinism in blocks (chunks, start offsets, MPI ranks), agreement with the library,
the physics of the bound (sigma_CRLB exactly proportional to 1 / (S/N); Bayesian sigma below the prior's;
free continuum never tighter), and bad inputs refused with the file named and nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from calipers.core.errors import ConfigError, FileFormatError
from calipers.core.spectrum_sets import (SpectrumSetError, read_fisher_bounds, read_spectrum_set, spectrum_set_info,
                                         write_spectrum_set)
from calipers.spectra.simulate import SpectraSimConfig, SpectrumModel, simulate_spectra
from conftest import inprogress, leftovers, run_as_ranks, run_stage

TINY_SIM = {"n_pix": 256, "wavelength_min": 8450.0, "wavelength_max": 8700.0, "n_forest_lines": 20,
            "n_sky_lines": 5, "oversample": 4, "block_size": 16, "chunk_size": 8}
SNRS = [5.0, 10.0, 20.0]
N_STARS = 20


def config(tmp_path, name: str = "config.yml", simulate: dict | None = None, fisher: dict | None = None) -> str:
    cfg = {"global": {"simulator": TINY_SIM},
           "SpectraSimulate": {"seed": 3, "n_stars": N_STARS, "snr": SNRS, "chunk_size": 32} | (simulate or {}),
           "FisherBound": {"chunk_size": 8} | (fisher or {})}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def simulate(tmp_path, name: str, **options) -> str:
    out = str(tmp_path / f"{name}.hdf5")
    run_stage("SpectraSimulate", config(tmp_path, f"{name}.yml", simulate=options), spectra=out)
    return out


def assert_same_sets(a: str, b: str) -> None:
    sa, sb = read_spectrum_set(a, with_model_flux=True), read_spectrum_set(b, with_model_flux=True)
    for k in ("wavelength", "flux", "ivar", "model_flux"):
        np.testing.assert_array_equal(getattr(sa, k), getattr(sb, k), err_msg=k)
    assert set(sa.meta) == set(sb.meta)
    for k in sa.meta:
        np.testing.assert_array_equal(sa.meta[k], sb.meta[k], err_msg=k)


@pytest.fixture(scope="module")
def ceiling(tmp_path_factory):
    """A 20-star set at S/N 5, 10, 20 and its Fisher bounds."""
    d = tmp_path_factory.mktemp("spectra")
    cfg = config(d)
    spectra = str(d / "test.hdf5")
    run_stage("SpectraSimulate", cfg, spectra=spectra)
    run_stage("FisherBound", cfg, spectra=spectra, fisher_bounds=str(d / "fisher.hdf5"),
              ceiling_report=str(d / "report"))
    return d, spectra


# ============================================================================ SpectraSimulate
def test_simulated_set_layout_and_agreement_with_the_simulator(ceiling, tmp_path):
    d, spectra = ceiling
    s = read_spectrum_set(spectra, with_model_flux=True)
    k = len(SNRS)
    assert len(s) == N_STARS * k and s.flux.shape[1] == 256
    # star-major rows: a star's rows are adjacent, one per S/N in the order given
    np.testing.assert_array_equal(s.meta["star_id"], np.repeat(np.arange(N_STARS), k))
    np.testing.assert_array_equal(s.meta["snr"], np.tile(SNRS, N_STARS))
    info = spectrum_set_info(spectra)
    cfg = SpectraSimConfig.from_dict(info["simulator"])
    assert cfg == SpectraSimConfig(**TINY_SIM)
    sim = info["attrs"]["simulation"]
    assert sim["seed"] == 3 and sim["snr"] == SNRS and sim["rows_per_star"] == 3 and "star-major" in sim["row_order"]
    # labels and noise-free spectra are the library's, once per star
    ref = simulate_spectra(cfg, N_STARS, seed=3, snr=5.0, keep_model_flux=True)
    np.testing.assert_array_equal(s.labels()[::k], ref.labels)
    for j in range(k):
        np.testing.assert_array_equal(s.model_flux[j::k], ref.model_flux)
    # the noise scales with the S/N, and every S/N has its own draw
    model = SpectrumModel(cfg)
    z = [(s.flux[j::k] - s.model_flux[j::k]) / np.sqrt(model.noise_variance(ref.model_flux, v))
         for j, v in enumerate(SNRS)]
    for zj in z:
        assert abs(zj.std() - 1) < 0.05
    assert abs(np.corrcoef(z[0].ravel(), z[1].ravel())[0, 1]) < 0.05
    # common random numbers: one S/N reproduces simulate_spectra bit for bit
    common = simulate(tmp_path, "common", snr=[7.0], independent_noise=False, n_stars=5, keep_model_flux=False)
    c = read_spectrum_set(common)
    ref7 = simulate_spectra(cfg, 5, seed=3, snr=7.0)
    np.testing.assert_array_equal(c.flux, ref7.flux)
    np.testing.assert_array_equal(c.ivar, ref7.ivar)
    assert not spectrum_set_info(common)["has_model_flux"]


def test_simulation_is_deterministic_in_chunks_offsets_and_ranks(ceiling, tmp_path):
    _, spectra = ceiling
    again = simulate(tmp_path, "again")  # same seed: identical data
    assert_same_sets(spectra, again)
    chunked = simulate(tmp_path, "chunked", chunk_size=7)  # 3 chunks, not aligned to the 16-star blocks
    assert_same_sets(spectra, chunked)
    tail = simulate(tmp_path, "tail", start=9, n_stars=N_STARS - 9)
    full, part = read_spectrum_set(spectra, with_model_flux=True), read_spectrum_set(tail, with_model_flux=True)
    np.testing.assert_array_equal(part.flux, full.flux[9 * 3:])
    np.testing.assert_array_equal(part.meta["star_id"], full.meta["star_id"][9 * 3:])
    from calipers.stages.spectra import SpectraSimulate

    ranks = str(tmp_path / "ranks.hdf5")
    run_as_ranks(SpectraSimulate, {"config": config(tmp_path, "ranks.yml", simulate={"chunk_size": 8}),
                                   "spectra": ranks}, size=2)
    assert_same_sets(spectra, ranks)
    assert not leftovers(tmp_path)
    other = read_spectrum_set(simulate(tmp_path, "seed4", seed=4, n_stars=2))
    assert not np.array_equal(other.flux, full.flux[:6])


def test_log_uniform_snr_one_row_per_star(tmp_path):
    a = read_spectrum_set(simulate(tmp_path, "a", snr=[3.0, 20.0], snr_distribution="log_uniform", chunk_size=32),
                          with_model_flux=True)
    b = read_spectrum_set(simulate(tmp_path, "b", snr=[3.0, 20.0], snr_distribution="log_uniform", chunk_size=6))
    assert len(a) == N_STARS
    np.testing.assert_array_equal(a.meta["star_id"], np.arange(N_STARS))
    assert np.all((a.meta["snr"] >= 3.0) & (a.meta["snr"] <= 20.0)) and np.unique(a.meta["snr"]).size == N_STARS
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.meta["snr"], b.meta["snr"])
    # each star's noise is the simulator's at its own S/N
    cfg = SpectraSimConfig(**TINY_SIM)
    model = SpectrumModel(cfg)
    i = 13
    ref = model.add_noise(a.model_flux[i:i + 1], float(a.meta["snr"][i]), 3, i)
    np.testing.assert_array_equal(a.flux[i:i + 1], ref[0])


@pytest.mark.parametrize("options,words", [
    ({"snr": [3.0, 5.0, 20.0], "snr_distribution": "log_uniform"}, "log_uniform needs snr"),
    ({"snr": [5.0, -1.0]}, "finite number > 0"),
    ({"snr": [5.0, 5.0]}, "repeats"),
    ({"snr_distribution": "uniform"}, "snr_distribution must be one of"),
    ({"simulator": {"n_pixels": 10}}, "option 'simulator'.*unknown option"),
    ({"simulator": {"logg_range": [1.0, 9.0]}}, "logg_range"),
])
def test_bad_simulation_options(tmp_path, options, words):
    out = tmp_path / "s.hdf5"
    with pytest.raises(ConfigError, match=words):
        run_stage("SpectraSimulate", config(tmp_path, simulate=options), spectra=str(out))
    assert not out.exists() and not inprogress(out).exists()


# ============================================================================ FisherBound
def test_fisher_bound_physics_and_agreement_with_the_library(ceiling):
    from calipers.spectra.fisher import ceiling_table

    d, spectra = ceiling
    cols, attrs = read_fisher_bounds(str(d / "fisher.hdf5"))
    s = read_spectrum_set(spectra)
    np.testing.assert_array_equal(cols["star_id"], s.meta["star_id"])
    np.testing.assert_array_equal(cols["snr"], s.meta["snr"])
    assert attrs["prior"] == "gaussian" and attrs["headline"] == "continuum"
    k = len(SNRS)
    for suffix in ("", "_continuum"):
        crlb = cols[f"sigma_crlb{suffix}"].reshape(N_STARS, k)
        # the Fisher matrix grows as (S/N)^2: sigma_CRLB x S/N is the same at every S/N
        np.testing.assert_allclose(crlb * np.asarray(SNRS), np.repeat(crlb[:, :1] * SNRS[0], k, axis=1), rtol=1e-8)
        bayes = cols[f"sigma_bayes{suffix}"].reshape(N_STARS, k)
        assert np.all(bayes <= attrs["prior_sigma_logg"]) and np.all(bayes <= crlb)
        assert np.all(np.diff(bayes, axis=1) < 0)  # more S/N, smaller posterior sigma
    assert attrs["prior_sigma_logg"] == pytest.approx(4.0 / np.sqrt(12.0))
    assert np.all(cols["sigma_crlb_continuum"] >= cols["sigma_crlb"] * (1 - 1e-9))
    assert np.all(cols["sigma_bayes_continuum"] >= cols["sigma_bayes"] * (1 - 1e-9))
    # the report's table is the library's ceiling table for the same stars
    report = json.loads((d / "report" / "report.json").read_text())
    model = SpectrumModel(SpectraSimConfig(**TINY_SIM))
    theta = torch.as_tensor(s.labels()[::k], dtype=torch.float64)
    for ours, lib in zip(report["ceiling"], ceiling_table(model, theta, SNRS)):
        assert ours["snr"] == lib["snr"] and ours["n"] == ours["n_stars"] == N_STARS
        for key, value in lib.items():
            assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert len(report["ceiling_by_m_h"]) == 3
    assert sum(r["n"] for t in report["ceiling_by_m_h"].values() for r in t) == len(s)
    for fig in report["figures"]:
        assert (d / "report" / fig).stat().st_size > 1000
    assert (d / "report" / "index.html").exists()


def test_fisher_bound_in_chunks_and_mpi_ranks_matches_serial(ceiling, tmp_path):
    """Two real MPI ranks (processes: torch's forward-mode AD cannot run in two threads at once) and
    3-star chunks: the same bounds as the serial run's 8-star chunks. Skipped without mpirun/mpi4py
    (a failure under CI=true, as in tests/test_mpi.py)."""
    import importlib.util
    import os
    import shutil
    import subprocess

    from conftest import subprocess_env

    d, spectra = ceiling
    cfg = config(tmp_path, fisher={"chunk_size": 3, "prior": "cosine", "continuum": False})
    io = {"spectra": spectra, "fisher_bounds": str(tmp_path / "fisher.hdf5"), "ceiling_report": str(tmp_path / "r")}
    if shutil.which("mpirun") and importlib.util.find_spec("mpi4py") is not None:
        env = subprocess_env() | {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                                  "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMP_NUM_THREADS": "1"}
        cmd = ["mpirun", "-n", "2", "python", "-m", "calipers", "FisherBound", "--mpi", f"--config={cfg}",
               *(f"--{k}={v}" for k, v in io.items())]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    elif os.environ.get("CI") == "true":
        pytest.fail("OpenMPI (mpirun) and mpi4py are needed for the MPI tests: CI must install them")
    else:
        run_stage("FisherBound", cfg, **io)
    ours, attrs = read_fisher_bounds(str(tmp_path / "fisher.hdf5"))
    serial, _ = read_fisher_bounds(str(d / "fisher.hdf5"))
    for key in ("star_id", "snr", "sigma_crlb", "sigma_crlb_continuum"):  # the prior does not enter the CRLB
        np.testing.assert_allclose(ours[key], serial[key], rtol=1e-10, err_msg=key)
    assert attrs["prior"] == "cosine" and attrs["headline"] == "fixed_continuum"
    assert attrs["prior_sigma_logg"] == pytest.approx(4.0 / (2 * np.pi))
    assert np.all(ours["sigma_bayes"] <= attrs["prior_sigma_logg"])
    assert np.all(ours["sigma_bayes"] < serial["sigma_bayes"])  # the cos^2 prior is the more informative one
    assert not leftovers(tmp_path)


def _copy_set(src: str, dst: str, model_flux: bool, attrs: dict | None, change=None) -> str:
    s = read_spectrum_set(src, with_model_flux=True)
    if not model_flux:
        s.model_flux = None
    if change:
        change(s)
    return write_spectrum_set(dst, s, attrs=attrs)


@pytest.mark.parametrize("case,words", [
    ("no_model_flux_no_simulator", "has no model_flux and no simulator configuration"),
    ("model_flux_no_simulator", "stores model_flux but no simulator configuration"),
    ("wrong_simulator", r"row \d+, pixel \d+: the stored model_flux .* not the configuration that made it"),
    ("no_snr", r"meta column\(s\) \['snr'\] missing"),
    ("logg_outside", r"row 4: logg = 6.0 is outside the simulator's range"),
    ("star_labels_differ", r"rows 3 and 4 have the same star_id \(1\) but different labels"),
])
def test_fisher_bound_refuses_bad_sets_and_writes_nothing(ceiling, tmp_path, case, words):
    _, spectra = ceiling
    sim = spectrum_set_info(spectra)["simulator"]
    bad = str(tmp_path / f"{case}.hdf5")
    if case == "no_model_flux_no_simulator":
        _copy_set(spectra, bad, False, None)
    elif case == "model_flux_no_simulator":
        _copy_set(spectra, bad, True, None)
    elif case == "wrong_simulator":
        _copy_set(spectra, bad, True, {"simulator": sim | {"line_list_seed": 5}})
    elif case == "no_snr":
        _copy_set(spectra, bad, False, {"simulator": sim}, lambda s: s.meta.pop("snr"))
    elif case == "logg_outside":
        _copy_set(spectra, bad, False, {"simulator": sim}, lambda s: s.meta["logg"].__setitem__(4, 6.0))
    else:
        _copy_set(spectra, bad, False, {"simulator": sim}, lambda s: s.meta["teff"].__setitem__(4, 5000.5))
    outputs = {"fisher_bounds": tmp_path / "fisher.hdf5", "ceiling_report": tmp_path / "report"}
    with pytest.raises((FileFormatError, SpectrumSetError), match=words) as err:
        run_stage("FisherBound", config(tmp_path), spectra=bad, **{k: str(v) for k, v in outputs.items()})
    assert bad in str(err.value)
    for path in outputs.values():
        assert not path.exists() and not inprogress(path).exists()
    assert not leftovers(tmp_path)


def test_shipped_stage_configuration_is_valid(tmp_path):
    """stages/spectra.yml: every section reads (strict keys and types) and its simulator is valid."""
    from pathlib import Path

    from calipers.stages.spectra import FisherBound, SpectraSimulate

    shipped = Path(__file__).resolve().parents[2] / "stages" / "spectra.yml"
    sections = yaml.safe_load(shipped.read_text())
    SpectraSimConfig.from_dict(sections["global"]["simulator"])
    for name, cls in (("SpectraSimulateTrain", SpectraSimulate), ("SpectraSimulateTest", SpectraSimulate),
                      ("FisherBound", FisherBound)):
        outputs = {tag: str(tmp_path / tag) for tag, _ in cls.outputs}
        inputs = {tag: str(tmp_path / tag) for tag, _ in cls.inputs}
        stage = cls({"config": str(shipped), "name": name} | inputs | outputs)
        stage.validate()
    assert stage.config["prior"] == "gaussian"
