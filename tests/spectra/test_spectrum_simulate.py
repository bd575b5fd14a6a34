"""The PFS red-arm spectrum model: configuration and label checks, the Voigt function against scipy's
Faddeeva function, the gravity physics (pressure broadening, ionisation balance), TiO and Paschen
behaviour with temperature, determinism in seeded blocks, and the noise model (median S/N, ivar from
the noisy flux)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from calipers.spectra.simulate import (SpectraSimConfig, SpectrumModel, SpectrumSet, draw_labels, simulate_spectra,
                                       voigt_hjerting, voigt_hjerting_wing, wavelength_grid)


@pytest.fixture(scope="module")
def model():
    return SpectrumModel()


@pytest.fixture(scope="module")
def atoms():
    """The named metal lines alone (no forest, hydrogen or TiO), for clean equivalent widths."""
    return SpectrumModel(SpectraSimConfig(components=("atoms",)))


def _ew(model: SpectrumModel, theta, lo: float, hi: float) -> np.ndarray:
    """Equivalent width (A) of the residual spectrum between lo and hi."""
    r = model.residual(torch.tensor(theta, dtype=torch.float64)).numpy()
    w = model.wavelength
    sel = (w > lo) & (w < hi)
    return ((1.0 - r[:, sel]) * np.gradient(w)[sel]).sum(1)


# ----------------------------------------------------------------------------- configuration and labels
@pytest.mark.parametrize("field,value,words", [
    ("teff_range", (6000.0, 3750.0), "teff_range"),
    ("teff_range", (2000.0, 6000.0), "3000-8000 K"),
    ("logg_range", (1.0, 7.0), "logg_range"),
    ("n_pix", 4, "n_pix"),
    ("resolving_power", -5.0, "resolving_power"),
    ("components", ("atoms", "molecules"), "components"),
    ("components", (), "components"),
    ("ivar_floor", 0.0, "ivar_floor"),
    ("block_size", 0, "block_size"),
])
def test_config_rejects_bad_values(field, value, words):
    with pytest.raises(ValueError, match=words):
        SpectraSimConfig(**{field: value})


def test_config_round_trip():
    cfg = SpectraSimConfig(n_forest_lines=10, components=("tio", "atoms"))
    assert cfg.components == ("atoms", "tio")
    assert SpectraSimConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown option"):
        SpectraSimConfig.from_dict({"n_pixels": 3})


def test_wavelength_grid_is_log_uniform():
    w = wavelength_grid(SpectraSimConfig())
    assert w.shape == (4096,)
    assert w[0] == pytest.approx(7100.0) and w[-1] == pytest.approx(8850.0)
    ratio = w[1:] / w[:-1]
    assert np.allclose(ratio, ratio[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("theta,words", [
    ([[4500.0, 2.0]], "shape"),
    ([4500.0, 2.0, 0.0], "shape"),
    ([[7000.0, 2.0, 0.0]], "teff"),
    ([[4500.0, 5.5, 0.0]], "logg"),
    ([[4500.0, 2.0, -1.0]], "m_h"),
    ([[4500.0, float("nan"), 0.0]], "not finite"),
])
def test_bad_labels_raise(model, theta, words):
    with pytest.raises(ValueError, match=words):
        model.flux(torch.tensor(theta, dtype=torch.float64))


def test_allow_outside(model):
    out = model.flux(torch.tensor([[6010.0, 5.02, 0.76]], dtype=torch.float64), allow_outside=True)
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------- Voigt function
def test_voigt_matches_faddeeva():
    v = np.linspace(-35.0, 35.0, 1401)[:, None]
    a = np.logspace(-4, 1.5, 23)[None, :]
    exact = special.wofz(v + 1j * a).real
    got = voigt_hjerting(torch.tensor(a), torch.tensor(v)).numpy()
    assert np.max(np.abs(got - exact)) < 1e-9
    assert voigt_hjerting(torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)) \
        == pytest.approx(1.0, abs=1e-9)
    v_far = np.linspace(15.0, 3000.0, 2000)[:, None]
    exact = special.wofz(v_far + 1j * a).real
    wing = voigt_hjerting_wing(torch.tensor(a), torch.tensor(v_far)).numpy()
    assert np.max(np.abs(wing / exact - 1.0)) < 1e-4


# ----------------------------------------------------------------------------- physics
def test_flux_shape_continuum_and_normalisation(model):
    theta = torch.tensor([[3750.0, 4.5, 0.0], [6000.0, 1.0, 0.5]], dtype=torch.float32)
    flux = model.flux(theta)
    assert flux.shape == (2, 4096) and flux.dtype == torch.float32
    cont = model.continuum(theta)
    assert torch.allclose(cont.mean(1), torch.ones(2))
    assert float(cont[0, -1] / cont[0, 0]) > float(cont[1, -1] / cont[1, 0])  # cooler: redder
    resid = model.residual(theta)
    assert float(resid.min()) > 0.2 and float(resid.max()) <= 1.0 + 1e-6


def test_pressure_scaling_with_gravity(model):
    """Hydrostatics with H- opacity: P_gas ~ g^(1/2) when metals give the electrons (cool) and ~ g^(2/3)
    when hydrogen does (hot, low g); P_e rises with metallicity at fixed g in cool stars."""
    ph = model.photosphere(torch.tensor([[4500.0, 2.0, 0.0], [4500.0, 3.0, 0.0], [6000.0, 1.0, 0.0],
                                         [6000.0, 1.5, 0.0], [4500.0, 2.0, 0.5]], dtype=torch.float64))
    pg = ph["pressure_gas"].numpy()
    slope_cool = math.log10(pg[1] / pg[0])
    slope_hot = math.log10(pg[3] / pg[2]) / 0.5
    assert 0.45 < slope_cool < 0.6
    assert slope_hot > slope_cool and slope_hot < 0.7
    assert ph["pressure_electron"][4] > ph["pressure_electron"][0]
    # solar photosphere at tau = 2/3: P_gas ~ 1e5 dyn cm^-2, P_e ~ 10
    sun = model.photosphere(torch.tensor([[5777.0, 4.44, 0.0]]), allow_outside=True)
    assert 2e4 < float(sun["pressure_gas"]) < 3e5 and 2 < float(sun["pressure_electron"]) < 50


def test_na_and_mg_equivalent_widths_grow_with_gravity(atoms):
    """The required test: pressure (van der Waals) broadening makes the Na I 8183/8194 doublet and
    Mg I 8806 grow with log g at Teff 4500 K, [M/H] 0."""
    theta = [[4500.0, g, 0.0] for g in (1.0, 2.0, 3.0, 4.0, 5.0)]
    na = _ew(atoms, theta, 8175.0, 8202.0)
    mg = _ew(atoms, theta, 8800.0, 8813.0)
    assert np.all(np.diff(na) > 0) and na[-1] > 2.0 * na[0]
    assert np.all(np.diff(mg) > 0) and mg[-1] > 2.0 * mg[0]
    assert 0.2 < na[0] < 1.5 and 1.0 < na[-1] < 5.0  # Angstrom: giants ~0.5, K dwarfs ~2-4


def test_ionisation_balance_and_calcium_triplet(atoms):
    """Lines of the dominant ion scale as 1 / P_e: Fe II weakens with gravity while Fe I strengthens;
    the Ca II triplet responds to gravity."""
    theta = [[5000.0, g, 0.0] for g in (1.0, 3.0, 5.0)]
    fe2 = _ew(atoms, theta, 7709.0, 7714.0)
    fe1 = _ew(atoms, theta, 7745.0, 7751.0)
    assert fe2[0] > 1.5 * fe2[-1] and np.all(np.diff(fe2) < 0)
    assert np.all(np.diff(fe1) > 0)
    cat = _ew(atoms, [[6000.0, 2.0, 0.0], [6000.0, 5.0, 0.0]], 8530.0, 8555.0)
    assert cat[1] > 1.3 * cat[0]
    cat_cool = _ew(atoms, [[4500.0, 2.0, 0.0], [4500.0, 5.0, 0.0]], 8530.0, 8555.0)
    assert abs(cat_cool[1] / cat_cool[0] - 1.0) > 0.1


def test_tio_bands_cool_stars_only():
    tio = SpectrumModel(SpectraSimConfig(components=("tio",)))
    w = tio.wavelength
    theta = torch.tensor([[3750.0, 4.5, 0.0], [4000.0, 4.5, 0.0], [6000.0, 4.5, 0.0], [3750.0, 1.5, 0.0]],
                         dtype=torch.float64)
    r = tio.residual(theta).numpy()
    band = 1.0 - r[:, (w > 7130) & (w < 7160)].mean(1)  # red of the 7126 A head
    eps = 1.0 - r[:, (w > 8442) & (w < 8470)].mean(1)
    assert band[0] > 0.3 and band[0] > 1.5 * band[1] and band[1] > 0.1
    assert band[2] < 1e-4 and eps[2] < 1e-4
    assert eps[0] > 0.1
    assert band[0] > band[3]  # grows with pressure


def test_paschen_lines_strengthen_toward_6000k():
    hyd = SpectrumModel(SpectraSimConfig(components=("hydrogen",)))
    theta = [[t, 2.5, 0.0] for t in (4500.0, 5000.0, 5500.0, 6000.0)]
    pa14 = _ew(hyd, theta, 8580.0, 8615.0)
    pa12 = _ew(hyd, theta, 8735.0, 8765.0)
    assert np.all(np.diff(pa14) > 0) and np.all(np.diff(pa12) > 0)
    assert pa14[0] < 0.02 and pa14[-1] > 0.5


def test_differentiable_reverse_mode(model):
    theta = torch.tensor([[4800.0, 2.7, 0.1]], dtype=torch.float64, requires_grad=True)
    model.flux(theta).sum().backward()
    assert torch.isfinite(theta.grad).all() and float(theta.grad[0, 1].abs()) > 0


def test_line_table(model):
    table = model.line_table()
    names = list(table["label"])
    for label in ("Ca II 8542", "Na I 8183", "Mg I 8807", "H I Pa12"):
        assert label in names
    assert (table["window"] == "forest").sum() == model.config.n_forest_lines
    again = SpectrumModel().line_table()
    assert np.array_equal(table["wavelength"], again["wavelength"]) and np.array_equal(table["log_gf"],
                                                                                       again["log_gf"])


# ----------------------------------------------------------------------------- determinism
def test_deterministic_in_blocks():
    cfg = SpectraSimConfig(block_size=8, chunk_size=5)
    model = SpectrumModel(cfg)
    whole = simulate_spectra(cfg, 20, seed=3, snr=5.0, start=4, model=model, keep_model_flux=True)
    parts = [simulate_spectra(cfg, n, seed=3, snr=5.0, start=s, model=model, keep_model_flux=True)
             for s, n in ((4, 7), (11, 1), (12, 12))]
    for name in ("labels", "flux", "ivar", "model_flux"):
        joined = np.concatenate([getattr(p, name) for p in parts])
        assert np.array_equal(getattr(whole, name), joined), name
    other = simulate_spectra(cfg, 20, seed=4, snr=5.0, start=4, model=model)
    assert not np.allclose(other.labels, whole.labels)
    assert np.array_equal(draw_labels(cfg, 5, seed=3, start=6), whole.labels[2:7])
    ranges = cfg.label_ranges
    assert np.all(whole.labels >= ranges[:, 0]) and np.all(whole.labels <= ranges[:, 1])


# ----------------------------------------------------------------------------- noise
@pytest.fixture(scope="module")
def noisy(model):
    labels = draw_labels(model.config, 24, seed=5)
    clean = model.flux(torch.tensor(labels, dtype=torch.float32)).numpy().astype(np.float64)
    return clean


@pytest.mark.parametrize("snr", [3.0, 10.0])
def test_median_snr(model, noisy, snr):
    clean = noisy
    ivar_expected = model.expected_ivar(clean, snr)
    assert np.allclose(np.median(clean * np.sqrt(ivar_expected), axis=1), snr, rtol=1e-9)
    flux, ivar = model.add_noise(clean, snr, seed=1)
    z = (flux - clean) * np.sqrt(ivar_expected)
    assert abs(z.std() - 1.0) < 0.01 and abs(z.mean()) < 0.01
    measured = np.median(clean * np.sqrt(ivar), axis=1)
    assert np.allclose(measured, snr, rtol=0.05)


def test_ivar_comes_from_the_noisy_flux(model, noisy):
    """ivar = c / (noisy + sky): it differs from the expected ivar, its variance tracks the noise draw,
    and it is no function of the noise-free flux alone."""
    clean = noisy
    snr = 5.0
    flux, ivar = model.add_noise(clean, snr, seed=2)
    expected = model.expected_ivar(clean, snr)
    var_expected = 1.0 / expected
    exposure = (clean + model.sky[None]) / var_expected
    assert np.allclose(1.0 / ivar, (flux.astype(np.float64) + model.sky[None]) / exposure, rtol=1e-5)
    assert not np.allclose(ivar, expected, rtol=0.02)
    noise = (flux - clean).ravel()
    delta_var = (1.0 / ivar - var_expected).ravel()
    assert np.corrcoef(noise, delta_var)[0, 1] > 0.99
    # the same noise seed gives the same normals at every S/N (common random numbers)
    flux10, _ = model.add_noise(clean, 10.0, seed=2)
    z5 = (flux - clean) * np.sqrt(expected)
    z10 = (flux10 - clean) * np.sqrt(model.expected_ivar(clean, 10.0))
    assert np.allclose(z5, z10, atol=1e-4)


def test_sky_is_heteroscedastic(model, noisy):
    sky = model.sky
    assert sky.shape == (4096,) and np.all(sky >= model.config.sky_continuum)
    assert sky.max() > 10 * model.config.sky_continuum  # OH-like lines
    var = model.noise_variance(noisy, 5.0)
    on_line = sky > 5 * model.config.sky_continuum
    assert np.median(var[:, on_line]) > 3 * np.median(var[:, ~on_line])


@pytest.mark.parametrize("kwargs,words", [
    ({"snr": 0.0}, "snr"),
    ({"snr": float("inf")}, "snr"),
])
def test_bad_noise_arguments(model, noisy, kwargs, words):
    with pytest.raises(ValueError, match=words):
        model.add_noise(noisy, seed=0, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        model.add_noise(noisy[:, :100], 5.0, seed=0)


def test_spectrum_set_checks_shapes():
    w = np.linspace(1, 2, 5)
    with pytest.raises(ValueError, match="ivar"):
        SpectrumSet(w, np.zeros((2, 5)), np.zeros((2, 4)), np.zeros((2, 3)), 5.0)
    s = SpectrumSet(w, np.zeros((2, 5)), np.ones((2, 5)), np.zeros((2, 3)), 5.0)
    assert len(s.take([1])) == 1


def test_add_noise_takes_one_snr_per_row():
    from calipers.spectra.simulate import SpectraSimConfig, SpectrumModel, simulate_spectra

    cfg = SpectraSimConfig(n_pix=512, wavelength_min=8400.0, wavelength_max=8700.0, n_forest_lines=20)
    model = SpectrumModel(cfg)
    clean = simulate_spectra(cfg, 4, seed=1, snr=10.0, model=model, keep_model_flux=True).model_flux
    per_row = model.add_noise(clean, np.array([5.0, 5.0, 20.0, 20.0]), seed=3)
    at5, at20 = model.add_noise(clean, 5.0, seed=3), model.add_noise(clean, 20.0, seed=3)
    for k in range(2):  # the same rows as the scalar calls (common random numbers per row)
        np.testing.assert_array_equal(per_row[k][:2], at5[k][:2])
        np.testing.assert_array_equal(per_row[k][2:], at20[k][2:])
    with pytest.raises(ValueError, match="first at row 1"):
        model.add_noise(clean, np.array([5.0, -1.0, 5.0, 5.0]), seed=3)
    with pytest.raises(ValueError, match="one value per spectrum"):
        model.noise_variance(clean, np.array([5.0, 5.0]))
