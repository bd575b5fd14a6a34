"""The transit simulator: the transmission spectrum against its closed form, the light curves'
noise levels, limb darkening's direction, determinism in blocks, and bad configurations."""
from __future__ import annotations

import math

import numpy as np
import pytest

from calipers.transit.simulate import (K_B, M_U, MOLECULES, R_SUN, TransitSimConfig, airs_ch0_bins,
                                       band_cross_sections, draw_planets, simulate_transits, transit_shapes,
                                       transmission_spectrum)

pytest.importorskip("batman")

SMALL = TransitSimConfig(n_bins=20, n_times=60, block_size=16)


def planet(**over):
    """One planet, every opacity off unless switched on (log abundances and haze at -30)."""
    p = {"rp_rs": 0.1, "temperature": 1000.0, "gravity": 10.0, "mu": 2.3, "log_cloud_pressure": 3.0,
         "log_haze": -30.0, "stellar_radius": 1.0} | {f"log_{m}": -30.0 for m in MOLECULES}
    return {k: np.array([v]) for k, v in (p | over).items()}


def test_a_cloud_deck_gives_a_flat_spectrum_at_its_closed_form_depth():
    p = planet(log_cloud_pressure=-2.0)  # 0.01 bar under a 10-bar reference: z_c = H ln(1000)
    lam = np.linspace(2.0, 3.8, 7)
    depth = transmission_spectrum(p, lam, reference_pressure=10.0)
    h = K_B * 1000.0 / (2.3 * M_U * 10.0)
    r_s = R_SUN
    expected = ((0.1 * r_s + h * math.log(1000.0)) / r_s) ** 2
    np.testing.assert_allclose(depth, expected, rtol=1e-12)


def test_one_molecule_sets_the_altitude_difference_to_h_ln_of_the_cross_section_ratio():
    p = planet(log_H2O=-3.0, log_cloud_pressure=3.0)  # clear (the deck at 1000 bar)
    lam = np.array([2.2, 2.7])
    depth = transmission_spectrum(p, lam)
    radius = np.sqrt(depth[0]) * R_SUN  # R_p + z
    sigma = band_cross_sections(lam)["H2O"]
    h = K_B * 1000.0 / (2.3 * M_U * 10.0)
    assert radius[1] - radius[0] == pytest.approx(h * math.log(sigma[1] / sigma[0]), rel=1e-9)
    # and the scale height doubles with the temperature at fixed g and mu: so does that difference
    hot = np.sqrt(transmission_spectrum(planet(log_H2O=-3.0, temperature=2000.0), lam)[0]) * R_SUN
    assert hot[1] - hot[0] == pytest.approx(2 * (radius[1] - radius[0]), rel=1e-9)


def test_white_noise_level_and_deeper_centre_with_stronger_limb_darkening():
    cfg = TransitSimConfig(n_bins=10, n_times=200, block_size=64, jitter_amplitude=0.0, drift_scale=0.0)
    s = simulate_transits(cfg, 64, seed=4)
    p = s.planets
    clean = transit_shapes(s.time, p, np.sqrt(s.depth), s.ld, p["period"])
    resid = s.flux - clean
    expected = p["s0"][:, None] * np.sqrt(s.wavelength / 2.0)[None, :]
    ratio = resid.std(axis=2) / expected
    assert np.mean(ratio) == pytest.approx(1.0, abs=0.02)  # 64 x 10 bins x 200 points
    # limb darkening: the same radius ratio with stronger darkening is deeper at mid-transit
    t = s.time[:1]
    weak = transit_shapes(t, {k: v[:1] for k, v in p.items()}, np.full((1, 1), 0.1), np.array([[[0.1, 0.0]]]),
                          p["period"][:1])
    strong = transit_shapes(t, {k: v[:1] for k, v in p.items()}, np.full((1, 1), 0.1), np.array([[[0.6, 0.2]]]),
                            p["period"][:1])
    mid = t.shape[1] // 2
    assert strong[0, 0, mid] < weak[0, 0, mid] < 1.0


def test_blocks_make_any_range_the_same_planets_and_the_layout_is_airs_ch0():
    full = simulate_transits(SMALL, 40, seed=7)
    part = simulate_transits(SMALL, 13, seed=7, start=21)
    np.testing.assert_array_equal(part.flux, full.flux[21:34])
    np.testing.assert_array_equal(part.depth, full.depth[21:34])
    assert not np.array_equal(simulate_transits(SMALL, 5, seed=8).flux, full.flux[:5])
    centres, edges = airs_ch0_bins(TransitSimConfig())
    assert centres.size == 283 and edges[0] == 1.95 and edges[-1] == 3.90
    assert full.flux.dtype == np.float32 and full.flux.shape == (40, 20, 60)
    p = draw_planets(TransitSimConfig(), 10_000, np.random.default_rng(0))
    assert 3e-4 <= p["s0"].min() and p["s0"].max() <= 3e-3
    assert np.median(p["s0"]) == pytest.approx(math.sqrt(3e-4 * 3e-3), rel=0.05)  # log-uniform


@pytest.mark.parametrize("options,words", [
    ({"impact_range": (0.0, 0.9)}, "full"),
    ({"jitter_rho": 1.0}, "jitter_rho"),
    ({"s0_range": (3e-3, 3e-4)}, "low <= high"),
    ({"kernel": 3}, "unexpected"),
])
def test_bad_configurations(options, words):
    with pytest.raises((ValueError, TypeError), match=words):
        TransitSimConfig(**options)
