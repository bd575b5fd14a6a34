"""The strong-lens cutout simulator: determinism in blocks, the class mix, metadata, and the
physics against exact cases (lenstronomy's noise model and lens deflections, an SIS Einstein ring,
PSF widths, the 5-sigma depth formula)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from calipers.lens import simulate as S
from calipers.lens.simulate import (BANDS, CLASS_NAMES, META_COLUMNS, LensSimConfig, simulate_block,
                                    simulate_cutouts)


@pytest.fixture(scope="module")
def natural():
    """2048 images of the default configuration (about 7 s)."""
    return simulate_cutouts(2048, LensSimConfig(), seed=11)


def _lenstronomy_band(band: str, n_exposures: int):
    from lenstronomy.SimulationAPI.ObservationConfig.DES import DES
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    kw = DES(band=band).kwargs_single_band()
    kw["num_exposures"] = int(n_exposures)
    return SingleBand(**kw)


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("field,value,words", [
    ("lens_fraction", 1.5, "lens_fraction"),
    ("negative_mix", {"elliptical": 0.5, "spiral": 0.2}, "sum to"),
    ("negative_mix", {"elliptical": 0.5, "quasar": 0.5}, "quasar"),
    ("fwhm_r_range", (1.4, 0.6), "fwhm_r_range"),
    ("fwhm_r_range", (0.0, 1.0), "fwhm_r_range"),
    ("n_exposures_range", (0, 3), "n_exposures_range"),
    ("n_exposures_range", (1.5, 3), "integers"),
    ("theta_e_range", (1.0,), "pair"),
    ("min_arc_snr", -1.0, "min_arc_snr"),
    ("block_size", 0, "block_size"),
    ("n_pix", 64.0, "n_pix"),
    ("psf_model", "airy", "psf_model"),
    ("moffat_beta", 1.0, "moffat_beta"),
    ("neighbour_fraction", float("nan"), "neighbour_fraction"),
])
def test_config_rejects_bad_values_with_the_field_named(field, value, words):
    with pytest.raises(ValueError, match=words):
        LensSimConfig(**{field: value})


def test_config_json_round_trip():
    cfg = LensSimConfig(lens_fraction=0.5, negative_mix={"ring": 0.5, "merger": 0.5}, fwhm_r_range=[0.7, 1.1],
                        n_exposures_range=[2, 4], min_arc_snr=10)
    back = LensSimConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.fwhm_r_range == (0.7, 1.1) and back.n_exposures_range == (2, 4)
    with pytest.raises(ValueError, match="unknown option"):
        LensSimConfig.from_dict({"lens_fraction": 0.2, "colour": "red"})
    p = cfg.class_probabilities
    assert p[0] == 0.5 and p[CLASS_NAMES.index("ring")] == 0.25 and p[CLASS_NAMES.index("spiral")] == 0


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_images_and_blocks_do_not_depend_on_the_split():
    cfg = LensSimConfig(block_size=8)
    a = simulate_cutouts(24, cfg, seed=5)
    b = simulate_cutouts(24, cfg, seed=5)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.ivar, b.ivar)
    part = simulate_cutouts(7, cfg, seed=5, start=6)  # rows 6..12 span blocks 0 and 1
    np.testing.assert_array_equal(part.data, a.data[6:13])
    np.testing.assert_array_equal(part.ivar, a.ivar[6:13])
    for k in a.meta:
        np.testing.assert_array_equal(part.meta[k], a.meta[k][6:13])
    block = simulate_block(2, cfg, seed=5)
    np.testing.assert_array_equal(block.data, a.data[16:24])
    np.testing.assert_array_equal(a.meta["object_id"], np.arange(24))
    other = simulate_cutouts(8, cfg, seed=6)
    assert not np.array_equal(other.data, a.data[:8])


def test_empty_request_and_bad_arguments():
    cfg = LensSimConfig(block_size=4)
    empty = simulate_cutouts(0, cfg, seed=1)
    assert empty.data.shape == (0, 3, 64, 64) and set(empty.meta) == set(META_COLUMNS)
    with pytest.raises(ValueError, match="start"):
        simulate_cutouts(2, cfg, seed=1, start=-1)
    with pytest.raises(ValueError, match="seed"):
        simulate_cutouts(2, cfg, seed=-3)
    with pytest.raises(ValueError, match="^n "):
        simulate_cutouts(-2, cfg, seed=1)


# ----------------------------------------------------------------------------- mix and metadata
def test_class_fractions_within_binomial_tolerance(natural):
    cfg = LensSimConfig()
    n = len(natural)
    counts = np.bincount(natural.meta["object_class"], minlength=len(CLASS_NAMES))
    for name, c, p in zip(CLASS_NAMES, counts, cfg.class_probabilities):
        assert abs(c - n * p) < 4 * math.sqrt(n * p * (1 - p)), f"{name}: {c} of {n}, expected {n * p:.0f}"
    nb = natural.meta["has_neighbour"].sum()
    assert abs(nb - 0.3 * n) < 4 * math.sqrt(n * 0.3 * 0.7)
    np.testing.assert_array_equal(natural.meta["label"], (natural.meta["object_class"] == 0).astype(np.int8))
    ne = natural.meta["n_exposures"]
    assert ne.min() == 1 and ne.max() == 10
    assert stats.chisquare(np.bincount(ne, minlength=11)[1:]).pvalue > 1e-3


def test_meta_columns_dtypes_and_values(natural):
    m = natural.meta
    assert {k: m[k].dtype for k in m} == {k: np.dtype(v) for k, v in META_COLUMNS.items()}
    assert natural.data.dtype == np.float32 and natural.ivar.dtype == np.float32
    assert np.isfinite(natural.data).all() and (natural.ivar > 0).all()
    assert natural.bands == BANDS and natural.pixel_scale == 0.263
    assert natural.zero_points == {b: _lenstronomy_band(b, 1)._magnitude_zero_point for b in BANDS}
    np.testing.assert_allclose(m["psf_fwhm_g"] / m["psf_fwhm_r"], (477 / 623) ** -0.2)
    np.testing.assert_allclose(m["psf_fwhm_i"] / m["psf_fwhm_r"], (763 / 623) ** -0.2)
    assert m["psf_fwhm_r"].min() >= 0.6 and m["psf_fwhm_r"].max() <= 1.4
    lens = m["label"] == 1
    for col in ("theta_e", "source_mag_r", "magnification", "arc_snr", "q_deflector", "shear_gamma"):
        assert np.isnan(m[col][~lens]).all(), col
        assert np.isfinite(m[col][lens]).all(), col
    assert (m["theta_e"][lens] >= 0.8).all() and (m["theta_e"][lens] <= 3.0).all()
    assert (m["source_mag_r"][lens] >= 22).all() and (m["source_mag_r"][lens] <= 26).all()
    assert (m["shear_gamma"][lens] <= 0.08).all() and (m["q_deflector"][lens] >= 0.5).all()
    # the total magnification of a source within theta_E / 2 of an isothermal lens exceeds 1
    assert (m["magnification"][lens] > 1).all() and (m["arc_snr"][lens] > 0).all()
    art = m["object_class"] == CLASS_NAMES.index("artifact")
    assert (m["artifact_kind"][art] > 0).all() and (m["artifact_kind"][~art] == 0).all()
    assert np.isfinite(m["deflector_mag_r"][~art]).all()


def test_deflectors_and_ellipticals_share_one_prior(natural):
    """No shortcut through the deflector: lens deflectors and non-lens ellipticals have the same
    magnitude distribution."""
    m = natural.meta
    lens = m["deflector_mag_r"][m["object_class"] == 0]
    ell = m["deflector_mag_r"][m["object_class"] == CLASS_NAMES.index("elliptical")]
    assert stats.ks_2samp(lens, ell).pvalue > 1e-3
    assert lens.min() >= 17.5 and lens.max() <= 21 and ell.min() >= 17.5 and ell.max() <= 21


def test_min_arc_snr_is_met_and_an_unreachable_cut_raises():
    # max_redraws = 2: with this seed two lenses get a new deflector
    kw = dict(lens_fraction=1.0, block_size=16, neighbour_fraction=0.0, max_redraws=2)
    c = simulate_cutouts(16, LensSimConfig(min_arc_snr=40.0, **kw), seed=2, noiseless=True)
    free = simulate_cutouts(16, LensSimConfig(**kw), seed=2)
    assert (c.meta["arc_snr"] >= 40).all()
    assert (free.meta["arc_snr"] < 40).any()  # the cut did something
    # conditions are never redrawn
    np.testing.assert_array_equal(c.meta["psf_fwhm_r"], free.meta["psf_fwhm_r"])
    np.testing.assert_array_equal(c.meta["n_exposures"], free.meta["n_exposures"])
    # the images hold the deflector and source of the meta (redrawn ones included): the r flux in the
    # cutout is the deflector's plus the magnified source's, less the deflector wings outside it
    r = S.band_observation("r")
    expected = r.magnitude_to_cps(c.meta["deflector_mag_r"]) + \
        r.magnitude_to_cps(c.meta["source_mag_r"]) * c.meta["magnification"]
    ratio = c.data[:, 1].sum(axis=(1, 2)) / expected
    assert (ratio > 0.8).all() and (ratio < 1.02).all()
    with pytest.raises(ValueError, match="min_arc_snr"):
        simulate_cutouts(4, LensSimConfig(lens_fraction=1.0, block_size=4, min_arc_snr=1e7, max_redraws=1,
                                          max_new_lenses=1), seed=2)


# ----------------------------------------------------------------------------- noise
def test_noise_variance_is_lenstronomy_singleband_and_ivar_is_its_inverse():
    """ivar = 1 / (background_noise^2 + flux_noise(model)^2) of lenstronomy's SingleBand for the
    image's exposure count, and the noise drawn has that variance (chi^2 test)."""
    cfg = LensSimConfig(block_size=24)
    noisy = simulate_cutouts(24, cfg, seed=4)
    model = simulate_cutouts(24, cfg, seed=4, noiseless=True)
    np.testing.assert_array_equal(noisy.ivar, model.ivar)
    for i in range(0, 24, 5):
        for j, b in enumerate(BANDS):
            sb = _lenstronomy_band(b, noisy.meta["n_exposures"][i])
            m = model.data[i, j].astype(np.float64)
            expected = sb.background_noise ** 2 + sb.flux_noise(np.maximum(m, 0)) ** 2
            np.testing.assert_allclose(1.0 / noisy.ivar[i, j], expected, rtol=2e-6)
    z = ((noisy.data.astype(np.float64) - model.data) * np.sqrt(noisy.ivar))
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs((z ** 2).mean() - 1) < 5 * math.sqrt(2 / n)
    # where the source's own Poisson noise dominates, too
    sky_var = np.stack([S.background_variance(noisy.meta["n_exposures"], b, 0.263) for b in BANDS], axis=1)
    bright = 1 / noisy.ivar > 2 * sky_var[:, :, None, None]  # source variance above the sky's
    nb = int(bright.sum())
    assert nb > 300
    assert abs((z[bright] ** 2).mean() - 1) < 5 * math.sqrt(2 / nb)


def test_depth_r_is_the_5_sigma_point_source_limit():
    """depth_r against zp - 2.5 log10(5 sigma_bkg sqrt(4 pi sigma_psf^2) / pixel) for a Gaussian
    PSF (sigma_bkg from lenstronomy), and a point source at that magnitude has S/N 5 in an optimal
    PSF fit to the rendered, pixelised image."""
    cfg = LensSimConfig(psf_model="gaussian", block_size=8)
    c = simulate_cutouts(8, cfg, seed=3)
    for i in range(8):
        sb = _lenstronomy_band("r", c.meta["n_exposures"][i])
        sigma_psf = c.meta["psf_fwhm_r"][i] / (2 * math.sqrt(2 * math.log(2)))
        flux5 = 5 * sb.background_noise * math.sqrt(4 * math.pi * sigma_psf ** 2) / 0.263
        assert c.meta["depth_r"][i] == pytest.approx(sb._magnitude_zero_point - 2.5 * math.log10(flux5), abs=1e-9)
    # optimal S/N of a point source of magnitude depth_r on the pixel grid: F sqrt(sum p^2) / sigma
    for model in ("gaussian", "moffat"):
        cfg = LensSimConfig(psf_model=model)
        grid = S._grid_for(cfg)
        fwhm_r, n_exp = 1.0, 4
        point = np.zeros((1, 3, grid.n_sub, grid.n_sub), np.float32)
        point[0, 1, grid.offset + 64, grid.offset + 64] = 1.0
        psf = S._observe(point, np.full((1, 3), fwhm_r), grid, model, 3.5)[0, 1].astype(np.float64)
        assert psf.sum() == pytest.approx(1.0, abs=1e-4)
        depth = S.depth_r(np.array([fwhm_r]), np.array([n_exp]), cfg)[0]
        flux = S.band_observation("r").magnitude_to_cps(depth)
        snr = flux * math.sqrt((psf ** 2).sum() / S.background_variance(n_exp, "r", 0.263))
        assert snr == pytest.approx(5.0, rel=0.03), model  # pixelisation broadens the PSF slightly


def test_moffat_noise_equivalent_area_and_transfer_function_are_exact():
    beta, fwhm = 3.5, 1.1
    alpha = S.moffat_alpha(fwhm, beta)
    profile = lambda r: (beta - 1) / (math.pi * alpha ** 2) * (1 + (r / alpha) ** 2) ** -beta  # noqa: E731
    assert profile(fwhm / 2) == pytest.approx(profile(0) / 2)
    nea = 1 / integrate.quad(lambda r: 2 * math.pi * r * profile(r) ** 2, 0, np.inf)[0]
    assert S.psf_noise_equivalent_area(fwhm, "moffat", beta) == pytest.approx(nea, rel=1e-8)
    for k in (0.0, 0.2, 0.7, 1.5):
        hankel = integrate.quad(lambda r: 2 * math.pi * r * profile(r) * special.j0(2 * math.pi * k * r), 0, 60,
                                limit=400)[0]
        assert S.psf_transfer(np.array([k]), fwhm, "moffat", beta)[0] == pytest.approx(hankel, abs=2e-6)


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
@pytest.mark.parametrize("fwhm", [0.6, 1.4])
def test_rendered_point_source_has_the_requested_fwhm(model, fwhm):
    """A point source through the simulator's PSF convolution, on a fine grid: its half-maximum
    width along a row is the requested FWHM."""
    grid = S._grid(200, 1, 0.02, 1.5)
    point = np.zeros((1, 3, grid.n_sub, grid.n_sub), np.float32)
    point[0, :, grid.offset + 100, grid.offset + 100] = 1.0
    img = S._observe(point, np.full((1, 3), fwhm), grid, model, 3.5)[0, 0].astype(np.float64)
    row = img[100]
    assert row.argmax() == 100
    half = row[100] / 2
    x = np.arange(200) * 0.02
    left = np.interp(half, row[:101], x[:101])
    right = np.interp(-half, -row[100:], x[100:])
    assert right - left == pytest.approx(fwhm, rel=0.01)
    # flux in the 4" x 4" cutout: exact for a Gaussian (product of erfs, the point is 0.01" off the
    # centre), between the fractions within the inscribed and circumscribed circles for a Moffat
    if model == "gaussian":
        s = fwhm / (2 * math.sqrt(2 * math.log(2))) * math.sqrt(2)
        frac = (0.5 * (math.erf(1.99 / s) + math.erf(2.01 / s))) ** 2
        assert img.sum() == pytest.approx(frac, abs=2e-4)
    else:
        alpha = S.moffat_alpha(fwhm, 3.5)
        inside = [1 - (1 + (r / alpha) ** 2) ** -2.5 for r in (1.99, 2.01 * math.sqrt(2))]
        assert inside[0] - 2e-4 < img.sum() < inside[1] + 2e-4


# ----------------------------------------------------------------------------- lensing
def test_sie_and_shear_deflection_match_lenstronomy():
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.Util.param_util import phi_q2_ellipticity

    rng = np.random.default_rng(0)
    lm = LensModel(["SIE", "SHEAR"])
    x, y = rng.uniform(-5, 5, (2, 400))
    for _ in range(10):
        te, q, phi, cx, cy = rng.uniform(0.5, 3), rng.uniform(0.3, 1.0), rng.uniform(0, np.pi), *rng.normal(0, 0.3, 2)
        g1, g2 = rng.uniform(-0.08, 0.08, 2)
        e1, e2 = phi_q2_ellipticity(phi, q)
        kw = [{"theta_E": te, "e1": e1, "e2": e2, "center_x": cx, "center_y": cy},
              {"gamma1": g1, "gamma2": g2, "ra_0": cx, "dec_0": cy}]
        bx, by = lm.ray_shooting(x, y, kw)
        ax, ay = S.sie_shear_deflection(x, y, te, q, phi, cx, cy, g1, g2)
        np.testing.assert_allclose(x - ax, bx, atol=1e-8)
        np.testing.assert_allclose(y - ay, by, atol=1e-8)
    # a round SIE is lenstronomy's SIS
    bx, by = LensModel(["SIS"]).ray_shooting(x, y, [{"theta_E": 1.3, "center_x": 0.1, "center_y": 0}])
    ax, ay = S.sie_shear_deflection(x, y, 1.3, 1.0, 0.0, 0.1, 0.0)
    np.testing.assert_allclose(x - ax, bx, atol=1e-7)
    np.testing.assert_allclose(y - ay, by, atol=1e-7)


def _sis_lensed_gaussian(theta_e: float, sigma: float, beta_x: float):
    grid = S._grid(200, 1, 0.04, 0.5)
    one = lambda v: np.array([float(v)])  # noqa: E731
    mass = {"x": one(0), "y": one(0), "q_mass": one(1), "phi_mass": one(0), "gamma": one(0), "gamma1": one(0),
            "gamma2": one(0)}
    smooth = {"x": one(beta_x), "y": one(0), "n": one(0.5), "r_eff": one(sigma * math.sqrt(2 * math.log(2))),
              "q": one(1), "phi": one(0), "mag_r": one(22), "g_r": one(0.2), "r_i": one(0.1)}
    src = {"theta_e": one(theta_e), "smooth": smooth, "n_clumps": np.array([0]), "clump_frac": one(0),
           "clump_x": np.zeros((1, 4)), "clump_y": np.zeros((1, 4)), "clump_sigma": np.full((1, 4), 0.1),
           "clump_g_r": np.zeros((1, 4)), "clump_r_i": np.zeros((1, 4))}
    img, mu = S._render_lensed_sources(mass, src, np.array([0]), grid)
    return img[0, 1] / grid.h ** 2, float(mu[0]), S.band_observation("r").magnitude_to_cps(22.0)


@pytest.mark.parametrize("theta_e,sigma", [(1.5, 0.1), (1.0, 0.2)])
def test_sis_einstein_ring_flux_of_a_centred_gaussian_source(theta_e, sigma):
    """A Gaussian source (Sersic n = 1/2) centred behind an SIS: the lensed surface brightness is
    I0 exp(-(|theta| - theta_E)^2 / 2 sigma^2), so the magnification is
    exp(-x^2/2) + x sqrt(pi/2) (1 + erf(x / sqrt 2)), x = theta_E / sigma; and surface brightness is
    conserved (the ring's peak is the source's central surface brightness)."""
    sb, mu, flux = _sis_lensed_gaussian(theta_e, sigma, 0.0)
    x = theta_e / sigma
    exact = math.exp(-x * x / 2) + x * math.sqrt(math.pi / 2) * (1 + math.erf(x / math.sqrt(2)))
    assert mu == pytest.approx(exact, rel=2e-3)
    assert mu > 1
    i0 = flux / (2 * math.pi * sigma ** 2)
    assert sb.max() == pytest.approx(i0, rel=0.03)


def test_sis_single_image_magnification_far_from_the_lens():
    sb, mu, _ = _sis_lensed_gaussian(1.0, 0.05, 2.0)
    assert mu == pytest.approx(1 + 1.0 / 2.0, rel=2e-3)  # |theta| / (|theta| - theta_E) at theta = 3


# ----------------------------------------------------------------------------- artifacts
def test_streaks_are_in_one_band_only():
    cfg = LensSimConfig(lens_fraction=0.0, negative_mix={"artifact": 1.0}, neighbour_fraction=0.0, block_size=48)
    c = simulate_cutouts(48, cfg, seed=8, noiseless=True)
    m = c.meta
    streak = m["artifact_kind"] == S.ARTIFACT_STREAK
    assert streak.sum() >= 10 and (m["artifact_kind"] > 0).all()
    assert set(np.unique(m["artifact_bands"][streak])) <= {1, 2, 4}
    blank = np.isnan(m["deflector_mag_r"])
    checked = 0
    for i in np.flatnonzero(blank):
        mask = [(m["artifact_bands"][i] >> j) & 1 for j in range(3)]
        for j in range(3):
            if mask[j]:
                assert c.data[i, j].max() > 0.01
            else:
                assert not c.data[i, j].any(), f"image {i}: light in band {BANDS[j]} outside the artifact's bands"
        checked += int(streak[i])
    assert checked >= 3
