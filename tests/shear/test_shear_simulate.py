import numpy as np
import pytest

from calipers.shear.simulate import ShearSimConfig, compose_shear, psf_image, render, simulate_ring, simulate_shear

SMALL = ShearSimConfig(stamp_size=21, block_size=8)


def moments_chi(image: np.ndarray) -> complex:
    """Unweighted-moment distortion chi = (Q11 - Q22 + 2i Q12) / (Q11 + Q22) of ``image[y, x]``."""
    n_y, n_x = image.shape
    y, x = np.mgrid[:n_y, :n_x]
    f = image.sum()
    xc, yc = (image * x).sum() / f, (image * y).sum() / f
    dx, dy = x - xc, y - yc
    q11, q22, q12 = (image * dx * dx).sum() / f, (image * dy * dy).sum() / f, (image * dx * dy).sum() / f
    return complex(q11 - q22, 2 * q12) / (q11 + q22)


def test_compose_shear_is_galsims_shear_then_shear():
    import galsim

    e, g = galsim.Shear(g1=0.3, g2=-0.2), galsim.Shear(g1=0.05, g2=0.08)
    eps1, eps2 = compose_shear(0.3, -0.2, 0.05, 0.08)
    both = g + e  # GalSim: e applied first, then g
    assert eps1 == pytest.approx(both.g1, abs=1e-12) and eps2 == pytest.approx(both.g2, abs=1e-12)
    # no shear, or no intrinsic shape: the other one
    assert compose_shear(0.3, 0.1, 0.0, 0.0) == pytest.approx((0.3, 0.1))
    assert compose_shear(0.0, 0.0, 0.04, -0.02) == pytest.approx((0.04, -0.02))


def test_rendered_shape_follows_the_sheared_ellipticity():
    # a Gaussian galaxy drawn without PSF or pixel: the image's chi is the distortion of eps
    import galsim

    e1, e2, g1, g2 = 0.2, 0.1, 0.05, -0.03
    gal = galsim.Gaussian(sigma=0.35).shear(g1=e1, g2=e2).shear(g1=g1, g2=g2)
    img = gal.drawImage(nx=61, ny=61, scale=0.1, method="no_pixel").array
    eps = complex(*compose_shear(e1, e2, g1, g2))
    chi = 2 * eps / (1 + abs(eps) ** 2)
    assert moments_chi(img) == pytest.approx(chi, abs=1e-5)


def test_quarter_turn_of_a_render_is_a_pixel_rotation():
    # a counter-clockwise quarter turn on the sky is np.rot90(+1) of GalSim's [y, x] array
    a = render(SMALL, 1.5, 0.5, 0.3, 0.1, 0.02, 0.0, 0.7)
    b = render(SMALL, 1.5, 0.5, 0.3, 0.1, 0.02, 0.0, 0.7, rotate_deg=90)
    assert np.abs(b - np.rot90(a, 1)).max() < 1e-6 * a.max()


def test_training_stream_is_seeded_in_blocks_and_has_the_drawn_snr():
    full = simulate_shear(SMALL, 20, seed=3)
    part = simulate_shear(SMALL, 7, seed=3, start=9)
    assert np.array_equal(full.images[9:16], part.images)
    for k in ("g1", "eps2", "snr", "noise_sigma", "galaxy_id"):
        assert np.array_equal(full.params[k][9:16], part.params[k])
    assert not np.array_equal(simulate_shear(SMALL, 20, seed=4).images, full.images)
    p = full.params
    assert np.all(np.abs(p["g1"]) <= SMALL.g_max) and np.all(np.hypot(p["e1"], p["e2"]) < SMALL.e_max)
    assert np.all((p["snr"] >= 10) & (p["snr"] <= 100))
    # S/N = sqrt(sum I^2) / sigma of the noise-free stamp before lensing: sigma does not know the shear
    i = 5
    clean = render(SMALL, p["sersic_n"][i], p["hlr"][i], p["e1"][i], p["e2"][i], p["g1"][i], p["g2"][i],
                   p["psf_fwhm"][i])
    unlensed = render(SMALL, p["sersic_n"][i], p["hlr"][i], p["e1"][i], p["e2"][i], 0.0, 0.0, p["psf_fwhm"][i])
    assert np.sqrt(np.sum(unlensed ** 2)) / p["noise_sigma"][i] == pytest.approx(p["snr"][i], rel=1e-9)
    assert np.sqrt(np.sum(clean ** 2)) / p["noise_sigma"][i] != pytest.approx(p["snr"][i], rel=1e-6)
    resid = full.images[i] - clean
    assert np.std(resid) == pytest.approx(p["noise_sigma"][i], rel=0.15)
    assert full.psf_images.shape == (1, 21, 21) and np.sum(full.psf_images[0]) == pytest.approx(1.0, rel=1e-5)


def test_ring_units_rotate_the_shape_and_share_noise_between_plus_and_minus_shear():
    ring = simulate_ring(SMALL, 5, shears=[[0.02, 0.02], [-0.02, 0.02]], seed=1)
    p = ring.params
    assert ring.n == 20
    assert np.array_equal(p["pair_id"], np.repeat(np.arange(5), 4))
    e = p["e1"] + 1j * p["e2"]
    assert np.allclose(e[2::4], -e[0::4]) and np.allclose(e[1::4], e[0::4])
    assert np.allclose(p["g1"][0::4], [0.02, -0.02, 0.02, -0.02, 0.02]) and np.allclose(p["g1"][1::4], -p["g1"][0::4])
    # (e, +g) and (e, -g) share a noise field: their difference is the noise-free difference
    i = 0
    clean = [render(SMALL, p["sersic_n"][j], p["hlr"][j], p["e1"][j], p["e2"][j], p["g1"][j], p["g2"][j],
                    p["psf_fwhm"][j]) for j in (i, i + 1)]
    noise = [ring.images[j] - clean[k] for k, j in enumerate((i, i + 1))]
    assert np.allclose(noise[0], noise[1], atol=1e-6)
    # one sigma per unit, that of its galaxy before lensing at the drawn S/N
    assert np.all(p["noise_sigma"].reshape(-1, 4) == p["noise_sigma"][0::4, None])
    unlensed = render(SMALL, p["sersic_n"][i], p["hlr"][i], p["e1"][i], p["e2"][i], 0.0, 0.0, p["psf_fwhm"][i])
    assert np.sqrt(np.sum(unlensed ** 2)) / p["noise_sigma"][i] == pytest.approx(p["snr"][i], rel=1e-9)
    other = ring.images[i + 2] - render(SMALL, p["sersic_n"][i + 2], p["hlr"][i + 2], p["e1"][i + 2],
                                        p["e2"][i + 2], p["g1"][i + 2], p["g2"][i + 2], p["psf_fwhm"][i + 2])
    assert abs(np.corrcoef(other.ravel(), noise[0].ravel())[0, 1]) < 0.2
    # a range of units is the same as that part of the whole
    assert np.array_equal(simulate_ring(SMALL, 2, shears=[[0.02, 0.02], [-0.02, 0.02]], seed=1, start=3).images,
                          ring.images[12:20])


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="odd"):
        ShearSimConfig(stamp_size=32)
    with pytest.raises(ValueError, match="sersic_n_range"):
        ShearSimConfig(sersic_n_range=(0.1, 4.0))
    with pytest.raises(ValueError, match="unknown key"):
        ShearSimConfig.from_dict({"stamp": 33})
    with pytest.raises(ValueError, match="shear"):
        simulate_ring(SMALL, 2, shears=[[1.2, 0.0]], seed=0)


def test_psf_image_is_normalised_and_round():
    p = psf_image(SMALL, 0.7)
    assert p.sum() == pytest.approx(1.0)
    assert np.allclose(p, p.T, atol=1e-7) and np.allclose(p, p[::-1], atol=1e-7)
