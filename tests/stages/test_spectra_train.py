"""SpectraTrain and SpectraEstimate on a tiny simulator (512 pixels around the Ca II triplet): every
regressor trains and writes a readable qp mixture whose moments are the ensemble's; training is
deterministic (and independent of MPI ranks); the CNN learns log g; model files refuse tampering and
load with weights_only; a set on another pixel grid, or a CNN training set without noise-free spectra
or simulator, is refused with the file named and nothing written; and the leakage guard: an ivar
computed from the noise-free flux hands a regression the answer, and the stage's training noise
takes its ivar from the noisy flux."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from calipers.core.errors import ConfigError, FileFormatError, ModelFileError, ModelMismatchError
from calipers.core.spectra_models import BOOSTER_NAME, read_spectra_model
from calipers.core.spectrum_sets import (Spectra, SpectrumSetError, read_spectrum_set, spectrum_set_info,
                                         write_spectrum_set)
from calipers.spectra.model import mixture_moments, ridge_fit, spectrum_features
from calipers.spectra.simulate import SpectraSimConfig, SpectrumModel, simulate_spectra
from conftest import inprogress, leftovers, run_as_ranks, run_stage

qp = pytest.importorskip("qp")

SIM = {"n_pix": 512, "wavelength_min": 8450.0, "wavelength_max": 8700.0, "n_forest_lines": 20, "n_sky_lines": 5,
       "oversample": 4, "block_size": 64, "chunk_size": 64}
CNN = {"seed": 1, "device": "cpu", "n_members": 2, "max_epochs": 2, "patience": 10, "batch_size": 32,
       "learning_rate": 5e-3, "snr_range": [30.0, 100.0], "channels": [4, 8, 8], "kernel_size": 5, "stem_stride": 4,
       "hidden": 16, "dropout": 0.0}
HAS_LIGHTGBM = True
try:
    import lightgbm  # noqa: F401
except ImportError:  # an optional dependency (calipers[spectra])
    HAS_LIGHTGBM = False
REGRESSORS = ["cnn", "cnn_residual", "ridge"] + (["lightgbm"] if HAS_LIGHTGBM else [])
N_TRAIN, N_TEST = 300, 60


def config(directory, extra: dict | None = None) -> str:
    cfg = {"global": {"simulator": SIM},
           "SimTrain": {"name": "SimTrain", "seed": 1, "n_stars": N_TRAIN, "snr": [30.0, 100.0],
                        "snr_distribution": "log_uniform", "chunk_size": 128},
           "SimTest": {"name": "SimTest", "seed": 2, "n_stars": N_TEST, "snr": [50.0], "chunk_size": 128},
           # the CNN that must learn: 15 epochs (about a second); the others train 2 epochs
           "Train_cnn": {"name": "Train_cnn", "regressor": "cnn"} | CNN | {"max_epochs": 15},
           "Train_cnn_residual": {"name": "Train_cnn_residual", "regressor": "cnn_residual"} | CNN,
           "Train_ridge": {"name": "Train_ridge", "regressor": "ridge", "ridge_alpha": 0.01},
           "Train_lightgbm": {"name": "Train_lightgbm", "regressor": "lightgbm", "gbm_rebin": 8,
                              "gbm_n_estimators": 30, "gbm_num_leaves": 7},
           "SpectraEstimate": {"chunk_size": 25, "device": "cpu"}} | (extra or {})
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def train(cfg: str, regressor: str, spectra: str, model: str) -> str:
    run_stage("SpectraTrain", cfg, name=f"Train_{regressor}", spectra=spectra, model=model)
    return model


def estimate(cfg: str, model: str, spectra: str, out: str) -> str:
    run_stage("SpectraEstimate", cfg, model=model, spectra=spectra, logg_pdf=out)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 300-star training set (S/N 30-100, noise-free spectra kept), a 60-star test set at S/N 50, every
    regressor trained on the first and applied to the second."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("spectra_train")
    cfg = config(d)
    out = {"dir": d, "config": cfg, "train": str(d / "train.hdf5"), "test": str(d / "test.hdf5")}
    run_stage("SpectraSimulate", cfg, name="SimTrain", spectra=out["train"])
    run_stage("SpectraSimulate", cfg, name="SimTest", spectra=out["test"])
    for r in REGRESSORS:
        out[f"model_{r}"] = train(cfg, r, out["train"], str(d / f"model_{r}"))
        out[f"pdf_{r}"] = estimate(cfg, out[f"model_{r}"], out["test"], str(d / f"logg_{r}.hdf5"))
    return out


def weights_pt(model_dir) -> dict:
    return torch.load(f"{model_dir}/weights.pt", weights_only=True)


# ============================================================================ outputs
@pytest.mark.parametrize("regressor", REGRESSORS)
def test_estimate_is_a_qp_mixture_with_the_ensemble_moments_and_the_truth(trained, regressor):
    ens = qp.read(trained[f"pdf_{regressor}"])
    test = read_spectrum_set(trained["test"])
    m = 2 if regressor.startswith("cnn") else 1
    assert ens.npdf == N_TEST
    weights, means, stds = (np.asarray(ens.objdata[k]) for k in ("weights", "means", "stds"))
    assert weights.shape == means.shape == stds.shape == (N_TEST, m)
    np.testing.assert_array_equal(weights, 1.0 / m)
    assert np.all(np.isfinite(means)) and np.all(np.isfinite(stds)) and np.all(stds > 0)
    a = ens.ancil
    assert {"star_id", "snr", "logg_mean", "logg_std", "teff", "logg", "m_h"} <= set(a)
    np.testing.assert_array_equal(a["star_id"], test.meta["star_id"])
    np.testing.assert_array_equal(a["snr"], 50.0)
    for k in ("teff", "logg", "m_h"):
        np.testing.assert_array_equal(a[k], test.meta[k])
    # the ancil moments are the mixture's (mixture_moments of the stored components) ...
    mean, std = mixture_moments(means.T, stds.T)
    np.testing.assert_allclose(a["logg_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(a["logg_std"], std, rtol=1e-12)
    np.testing.assert_allclose(a["logg_mean"], (weights * means).sum(1), rtol=1e-12)
    # ... qp's own mean of the mixture agrees, and so does the model applied to the whole set at once
    grid = np.linspace(-10.0, 15.0, 50_001)
    density = ens.pdf(grid)  # qp's reading of the file: the mixture's density
    qp_mean = np.trapezoid(grid * density, grid, axis=1) / np.trapezoid(density, grid, axis=1)
    np.testing.assert_allclose(qp_mean, a["logg_mean"], atol=1e-4)
    model = read_spectra_model(trained[f"model_{regressor}"])
    assert model.n_members == m and model.n_pix == 512
    want_means, want_sigmas = model.predict(test.flux, test.ivar)
    np.testing.assert_allclose(means, want_means.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stds, want_sigmas.T, rtol=1e-5, atol=1e-6)
    # the model card
    card = model.meta["model_card"]
    assert card["regressor"] == regressor and card["n_training_spectra"] == N_TRAIN
    assert card["training_set"] == trained["train"] and card["n_members"] == m
    assert all(member["seconds"] > 0 for member in card["members"])
    if m == 2:
        assert [member["seed"] for member in card["members"]] == [1000, 1001]
        assert all(len(member["val_nll"]) == len(member["train_loss"]) >= 1 for member in card["members"])
        assert model.meta["params"]["net"]["residual_on_linear"] == (regressor == "cnn_residual")


def test_the_cnn_learns_log_g(trained):
    for regressor in ("cnn", "ridge"):
        a = qp.read(trained[f"pdf_{regressor}"]).ancil
        rmse = np.sqrt(np.mean((a["logg_mean"] - a["logg"]) ** 2))
        assert rmse < 0.6 * a["logg"].std(), (regressor, rmse, a["logg"].std())


def test_training_and_estimation_are_deterministic_and_rank_independent(trained, tmp_path):
    cfg, spectra = trained["config"], trained["train"]
    again = train(cfg, "cnn_residual", spectra, str(tmp_path / "again"))
    first, second = weights_pt(trained["model_cnn_residual"]), weights_pt(again)
    for a, b in zip(first["members"], second["members"]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pdf = estimate(cfg, again, trained["test"], str(tmp_path / "again.hdf5"))
    e1, e2 = qp.read(trained["pdf_cnn_residual"]), qp.read(pdf)
    for k in ("weights", "means", "stds"):
        np.testing.assert_array_equal(e1.objdata[k], e2.objdata[k])
    # members spread over 2 MPI ranks (member k on rank k mod 2): the same model, the same p(log g)
    from calipers.stages.spectra import SpectraEstimate, SpectraTrain

    ranks = str(tmp_path / "ranks")
    run_as_ranks(SpectraTrain, {"config": cfg, "name": "Train_cnn_residual", "spectra": spectra, "model": ranks})
    for a, b in zip(first["members"], weights_pt(ranks)["members"]):
        assert all(torch.equal(a[k], b[k]) for k in a)
    ranks_pdf = str(tmp_path / "ranks.hdf5")
    run_as_ranks(SpectraEstimate, {"config": cfg, "model": ranks, "spectra": trained["test"], "logg_pdf": ranks_pdf})
    e3 = qp.read(ranks_pdf)
    for k in ("weights", "means", "stds"):
        np.testing.assert_array_equal(e1.objdata[k], e3.objdata[k])
    np.testing.assert_array_equal(e1.ancil["star_id"], e3.ancil["star_id"])
    # another seed, another model
    other_cfg = config(tmp_path, {"Train_cnn_residual": {"name": "Train_cnn_residual", "regressor": "cnn_residual"}
                                  | CNN | {"seed": 2}})
    other = weights_pt(train(other_cfg, "cnn_residual", spectra, str(tmp_path / "other")))
    assert not torch.equal(other["members"][0]["head.weight"], first["members"][0]["head.weight"])
    assert not leftovers(tmp_path)


# ============================================================================ model files
@pytest.mark.parametrize("regressor", REGRESSORS)
def test_model_files_load_with_weights_only_and_refuse_tampering(trained, tmp_path, regressor):
    src = trained[f"model_{regressor}"]
    states = weights_pt(src)  # plain tensors and containers: weights_only loads it
    np.testing.assert_array_equal(states["wavelength"].numpy(), read_spectrum_set(trained["test"], rows=slice(0, 0),
                                                                                    columns=[]).wavelength)
    meta = json.loads(open(f"{src}/metadata.json").read())
    assert meta["format"] == "calipers.spectra_model" and meta["n_pix"] == 512 and "checksums" in meta

    def tampered(name: str, edit) -> str:
        d = tmp_path / f"{regressor}_{name}"
        shutil.copytree(src, d)
        path = d / name
        path.write_bytes(edit(path.read_bytes()))
        return str(d)

    flip = tampered("weights.pt", lambda b: b[:-200] + bytes([b[-200] ^ 1]) + b[-199:])
    with pytest.raises(ModelFileError, match="weights.pt.*modified"):
        read_spectra_model(flip)
    edited = tampered("metadata.json", lambda b: b.replace(b'"n_pix": 512', b'"n_pix": 511'))
    with pytest.raises(ModelFileError, match="metadata.json.*modified"):
        read_spectra_model(edited)
    out = tmp_path / f"{regressor}.hdf5"
    with pytest.raises(ModelFileError):
        estimate(trained["config"], flip, trained["test"], str(out))
    assert not out.exists() and not inprogress(out).exists()
    if regressor == "lightgbm":
        booster = tampered(BOOSTER_NAME, lambda b: b.replace(b"learning_rate", b"learning_ratf", 1))
        with pytest.raises(ModelFileError, match=f"{BOOSTER_NAME}.*modified"):
            read_spectra_model(booster)


def test_a_set_on_another_pixel_grid_is_refused_naming_the_file(trained, tmp_path):
    for name, sim in (("fewer_pixels", SIM | {"n_pix": 256}), ("shifted", SIM | {"wavelength_min": 8452.0})):
        cfg = SpectraSimConfig(**sim)
        s = simulate_spectra(cfg, 4, seed=5, snr=20.0)
        path = str(tmp_path / f"{name}.hdf5")
        write_spectrum_set(path, Spectra(s.wavelength, s.flux, s.ivar, {"logg": s.labels[:, 1]}))
        out = tmp_path / f"{name}_logg.hdf5"
        words = "256 pixels.*trained on 512 pixels" if name == "fewer_pixels" else "pixel grids differ"
        with pytest.raises(ModelMismatchError, match=f"{path}.*{words}"):
            estimate(trained["config"], trained["model_cnn"], path, str(out))
        assert not out.exists() and not inprogress(out).exists()
        with pytest.raises(ModelMismatchError, match=words):
            read_spectra_model(trained["model_ridge"]).check_spectra(s.wavelength, path)
    assert not leftovers(tmp_path)


def test_cnn_training_needs_the_noise_free_spectra_and_the_simulator(trained, tmp_path):
    s = read_spectrum_set(trained["train"], rows=slice(0, 40), with_model_flux=True)
    info = spectrum_set_info(trained["train"])
    no_clean = str(tmp_path / "no_model_flux.hdf5")
    write_spectrum_set(no_clean, Spectra(s.wavelength, s.flux, s.ivar, s.meta),
                       attrs={"simulator": info["simulator"]})
    no_sim = str(tmp_path / "no_simulator.hdf5")
    write_spectrum_set(no_sim, s)
    for path, error, words in ((no_clean, SpectrumSetError, "no 'model_flux'"),
                               (no_sim, FileFormatError, "no simulator configuration")):
        out = tmp_path / "model"
        with pytest.raises(error, match=f"{path}.*{words}"):
            train(trained["config"], "cnn", path, str(out))
        assert not out.exists() and not inprogress(out).exists()
    # the baselines fit the stored noisy spectra: they need neither
    ridge = train(trained["config"], "ridge", no_clean, str(tmp_path / "ridge"))
    assert read_spectra_model(ridge).meta["model_card"]["training_flux"].startswith("flux")
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("options,words", [
    ({"regressor": "svm"}, "regressor must be one of"),
    ({"n_members": 0}, "n_members"),
    ({"snr_range": [30.0]}, "snr_range must be"),
    ({"kernel_size": 4}, "kernel_size must be odd"),
    ({"regressor": "ridge", "aux_labels": ["m_h"]}, "aux_labels must be"),
    ({"aux_labels": ["logg"]}, "aux_labels must be"),
    ({"aux_labels": ["m_h", "m_h"]}, "aux_labels must be"),
])
def test_bad_training_options(trained, tmp_path, options, words):
    cfg = config(tmp_path, {"Train_cnn": {"name": "Train_cnn", "regressor": "cnn"} | CNN | options})
    out = tmp_path / "model"
    with pytest.raises(ConfigError, match=words):
        run_stage("SpectraTrain", cfg, name="Train_cnn", spectra=trained["train"], model=str(out))
    assert not out.exists() and not inprogress(out).exists()


def test_multi_task_cnn_also_estimates_m_h_and_the_estimate_writes_it(trained, tmp_path):
    """aux_labels [teff, m_h]: the CNN predicts them too, SpectraEstimate writes teff_pred and m_h_pred
    (the model's own estimates, equal to the library's), the log g output keeps its form."""
    cfg = config(tmp_path, {"Train_cnn": {"name": "Train_cnn", "regressor": "cnn"} | CNN
                            | {"max_epochs": 15, "aux_labels": ["teff", "m_h"]}})
    model_dir = train(cfg, "cnn", trained["train"], str(tmp_path / "model"))
    model = read_spectra_model(model_dir)
    assert model.aux_labels == ["teff", "m_h"] and model.meta["params"]["net"]["n_aux"] == 2
    out = estimate(cfg, model_dir, trained["test"], str(tmp_path / "logg.hdf5"))
    a = qp.read(out).ancil
    test = read_spectrum_set(trained["test"])
    means, sigmas, aux = model.predict(test.flux, test.ivar, aux=True)
    assert aux.shape == (N_TEST, 2)
    np.testing.assert_allclose(a["teff_pred"], aux[:, 0], rtol=1e-5)
    np.testing.assert_allclose(a["m_h_pred"], aux[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["logg_mean"], mixture_moments(means, sigmas)[0], rtol=1e-5)
    # learnt, at S/N 50 from 300 stars in 15 epochs: Teff well, [M/H] (weak lines in 250 A) better than
    # its mean (rmse 0.82 std when written)
    for k, most in (("teff", 0.6), ("m_h", 0.95)):
        rmse = np.sqrt(np.mean((a[f"{k}_pred"] - a[k]) ** 2))
        assert rmse < most * a[k].std(), (k, rmse, a[k].std())
    # a set without one of the auxiliary labels is refused, naming the column
    cfg = config(tmp_path, {"Train_cnn": {"name": "Train_cnn", "regressor": "cnn"} | CNN
                            | {"aux_labels": ["alpha_fe"]}})
    with pytest.raises(SpectrumSetError, match="'alpha_fe'"):
        train(cfg, "cnn", trained["train"], str(tmp_path / "model2"))
    assert not (tmp_path / "model2").exists()


# ============================================================================ leakage guard
def test_leakage_guard_ivar_from_the_noise_free_flux_hands_over_the_answer(trained):
    """A ridge regression of log g on the sigma channel alone (its shape, rebinned to 64 features
    for 200 training spectra): computed from the noise-free flux's expected ivar it reaches a ~10x
    lower training loss (and held-out error) than computed from the noisy flux, as a pipeline's is:
    that channel carries the true spectrum."""
    from calipers.stages.spectra import simulator_noise_fn

    s = read_spectrum_set(trained["train"], columns=["logg"], with_model_flux=True)
    model = SpectrumModel(SpectraSimConfig.from_dict(spectrum_set_info(trained["train"])["simulator"]))
    clean, logg = s.model_flux.astype(np.float64), s.meta["logg"]
    rng = np.random.default_rng(0)
    snr = np.exp(rng.uniform(np.log(5.0), np.log(20.0), logg.size))
    flux, ivar = simulator_noise_fn(model)(clean, snr, rng)

    def sigma_shape(inverse_variance):
        x = spectrum_features(flux, inverse_variance)[:, 1].reshape(logg.size, 64, 8).mean(2)
        return x / x.mean(1, keepdims=True)

    fit, held = slice(0, 200), slice(200, None)
    rmse = {}
    for name, x in (("noisy", sigma_shape(ivar)), ("noise_free", sigma_shape(model.expected_ivar(clean, snr)))):
        w, b = ridge_fit(x[fit], logg[fit], 1e-6)
        rmse[name] = [float(np.sqrt(np.mean((x[rows] @ w + b - logg[rows]) ** 2))) for rows in (fit, held)]
    assert rmse["noise_free"][0] < 0.25 * rmse["noisy"][0], rmse  # training loss
    assert rmse["noise_free"][1] < 0.25 * rmse["noisy"][1], rmse  # and held out
    assert rmse["noisy"][1] > 0.6 * logg.std()  # the honest sigma channel alone says little about log g


def test_leakage_guard_the_training_noise_takes_its_ivar_from_the_noisy_flux(trained, monkeypatch):
    """The stage's noise function is the simulator's add_noise (a fresh seed from the generator, rows in
    chunks giving exactly one call's draw); its ivar is c / (noisy + sky): it differs from the expected
    ivar of the noise-free flux and anti-correlates with the noise draw. SpectraTrain uses it."""
    import calipers.stages.spectra as spectra_stages

    s = read_spectrum_set(trained["train"], rows=slice(0, 150), columns=[], with_model_flux=True)
    model = SpectrumModel(SpectraSimConfig.from_dict(spectrum_set_info(trained["train"])["simulator"]))
    clean = s.model_flux.astype(np.float64)
    snr = np.exp(np.random.default_rng(1).uniform(np.log(5.0), np.log(20.0), len(clean)))
    monkeypatch.setattr(spectra_stages, "NOISE_CHUNK", 64)  # 3 chunks of 64 rows
    rng = np.random.default_rng(7)
    seed = int(np.random.default_rng(7).integers(0, 2 ** 62))
    flux, ivar = spectra_stages.simulator_noise_fn(model)(clean, snr, rng)
    ref_flux, ref_ivar = model.add_noise(clean, snr, seed, 0)
    np.testing.assert_array_equal(flux, ref_flux)
    np.testing.assert_array_equal(ivar, ref_ivar)
    z = (flux - clean) / np.sqrt(model.noise_variance(clean, snr))
    assert abs(z.std() - 1.0) < 0.02 and abs(z.mean()) < 0.02  # the simulator's noise at each row's S/N
    expected = model.expected_ivar(clean, snr)
    assert np.median(np.abs(ivar / expected - 1.0)) > 0.01  # not the noise-free ivar
    assert np.corrcoef((ivar / expected - 1.0).ravel(), (flux - clean).ravel())[0, 1] < -0.5
    unfloored = flux + model.sky > 2 * model.config.ivar_floor * model.sky
    exposure = np.where(unfloored, ivar * (flux + model.sky), np.nan)  # c of each row: constant along it
    assert np.nanmax(np.nanstd(exposure, axis=1) / np.nanmean(exposure, axis=1)) < 1e-5

    # SpectraTrain redraws its training noise with exactly this function
    calls = []
    original = spectra_stages.simulator_noise_fn

    def spy(m):
        fn = original(m)

        def recorded(c, r, g):
            f, i = fn(c, r, g)
            exposure = i.astype(np.float64) * (f + m.sky)
            calls.append(float(np.mean(np.abs(exposure / np.median(exposure, axis=1, keepdims=True) - 1) < 1e-5)))
            return f, i
        return recorded

    monkeypatch.setattr(spectra_stages, "simulator_noise_fn", spy)
    out = trained["dir"] / "spy_model"
    run_stage("SpectraTrain", trained["config"], name="Train_cnn_residual", spectra=trained["train"], model=str(out))
    # the validation draw, the ridge's draw and one draw per epoch, for each of the 2 members
    assert len(calls) == 2 * (2 + CNN["max_epochs"])
    assert min(calls) > 0.99, calls  # ivar = c / (noisy + sky) with one c per spectrum: from the noisy flux
    shutil.rmtree(out)


# ============================================================================ shipped configuration
def test_shipped_training_configuration_is_valid(trained, tmp_path):
    """stages/spectra.yml: every SpectraTrain and SpectraEstimate section reads (strict keys and types)."""
    from pathlib import Path

    from calipers.stages.spectra import SpectraEstimate, SpectraTrain

    shipped = Path(__file__).resolve().parents[2] / "stages" / "spectra.yml"
    sections = yaml.safe_load(shipped.read_text())
    regressors = {}
    for name in ("SpectraTrainCNN", "SpectraTrainResidual", "SpectraTrainRidge", "SpectraTrainLightGBM"):
        stage = SpectraTrain({"config": str(shipped), "name": name, "spectra": trained["train"],
                              "model": str(tmp_path / name)})
        stage.validate()
        regressors[name] = stage.config["regressor"]
    assert regressors == {"SpectraTrainCNN": "cnn", "SpectraTrainResidual": "cnn_residual",
                          "SpectraTrainRidge": "ridge", "SpectraTrainLightGBM": "lightgbm"}
    assert sections["SpectraTrainCNN"]["n_members"] == 5
    for name in ("SpectraEstimateCNN", "SpectraEstimateResidual", "SpectraEstimateRidge", "SpectraEstimateLightGBM"):
        stage = SpectraEstimate({"config": str(shipped), "name": name, "model": trained["model_cnn"],
                                 "spectra": trained["test"], "logg_pdf": str(tmp_path / f"{name}.hdf5")})
        stage.validate()
