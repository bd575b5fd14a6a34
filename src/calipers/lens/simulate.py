"""Simulated g, r, i survey cutouts of galaxy-galaxy strong lenses and of the things that look
like them, seeded and deterministic in blocks.

Image ``i`` of the infinite sequence of a seed is always the same: images come in blocks of
``block_size`` and block ``b`` is drawn from ``numpy.random.default_rng([seed, b])`` alone, so any
split of the sequence (chunks, MPI ranks) gives the same images. Everything is vectorised over a
block with numpy: about 330 images/s on one core (AMD EPYC, one thread) for the default 64x64x3
cutouts with 2x supersampling.

What an image is
----------------
``data``: the sky-subtracted image in electrons per second (lenstronomy's "cps"), per band and
pixel, after the PSF, with Gaussian noise. ``ivar``: 1 / the variance of that noise, per pixel
(sky + source Poisson + read noise; the model's expectation, not estimated from the noisy data).
Zero points (magnitude of 1 e-/s) are those of the DES configuration of lenstronomy
(``lenstronomy.SimulationAPI.ObservationConfig.DES``: g 26.58, r 26.78, i 26.75), and so are the
sky brightness (g 22.01, r 21.15, i 19.89 mag/arcsec^2), the exposure time per exposure (90 s),
the read noise (7 e- per exposure) and the pixel scale (0.263"/pixel by default). Magnitudes are
turned into e-/s by lenstronomy's ``SingleBand.magnitude2cps``, the sky into e-/s/arcsec^2 by
``SingleBand.sky_brightness``.

Observing conditions (per image, the same draw for every class, so conditions carry no
information on the class):

- PSF: Moffat (beta = 3.5, or Gaussian with ``psf_model="gaussian"``), r-band FWHM uniform in
  ``fwhm_r_range``; g and i FWHM = r FWHM x (lambda / 623 nm)^-0.2 (477 and 763 nm), the
  Kolmogorov seeing scaling. Round, no spatial variation, no optical aberrations.
- Exposure count N uniform integer in ``n_exposures_range``, the same in g, r, i; total time
  T = 90 s x N. ``depth_r`` is the 5-sigma point-source limiting r magnitude of that image:
  ``zp_r - 2.5 log10(5 sigma_bkg sqrt(NEA / pixel_area))`` with sigma_bkg the per-pixel background
  noise (sky + read noise, e-/s) and NEA the noise-equivalent area of the PSF
  (1 / integral of PSF^2: 4 pi sigma^2 for a Gaussian, pi alpha^2 (2 beta - 1) / (beta - 1)^2 for a
  Moffat), i.e. the S/N of an optimal PSF-fitting flux in the background limit.

Noise (lenstronomy's ``SingleBand`` model, computed here vectorised for the total time T):
variance per pixel in (e-/s)^2 = (sky_cps x pixel_area x T + max(model, 0) x T + N x read_noise^2)
/ T^2. It is drawn as a Gaussian with that variance (lenstronomy's Gaussian approximation to
Poisson). The model is in electrons, so the CCD gain (4 e-/ADU) does not enter. No sky-subtraction
error, no correlated noise, no masked pixels, no cosmic rays; the sky is the DES average.

Rendering: each light profile is point-sampled on a grid supersampled ``supersample`` times per
pixel axis (elliptical radii below a quarter sub-pixel are clipped, to tame the central cusp of
steep Sersic profiles), convolved with the PSF by FFT (the PSF's analytic Fourier transform: a
Gaussian, or for a Moffat 2^(2-beta) b^(beta-1) K_(beta-1)(b) / Gamma(beta-1) with
b = 2 pi k alpha) on a grid padded by about 1.5 g-band FWHM around the cutout, and binned to
pixels. Light profiles are normalised to their analytic total flux, so compact profiles
(R_e of about a sub-pixel) have pixel-sampling errors of up to ~10 % in total flux; lensed arcs are
sampled more finely in the source plane (by the magnification) and are better.

Classes and their priors (``object_class`` codes into :data:`CLASS_NAMES`)
-------------------------------------------------------------------------
Each image is a lens with probability ``lens_fraction``; otherwise a non-lens class drawn with the
fractions of ``negative_mix``. The central object is placed at a Gaussian offset (sigma 0.1") from
the cutout centre. Colours are g-r and r-i; an object's r magnitude and colours give its fluxes.

- ``elliptical`` (and every lens deflector: the SAME prior, so the deflector alone says nothing
  about the label): Sersic, n uniform 3-5, R_e log-uniform 0.5-2.5", axis ratio q uniform 0.5-1,
  random position angle, r = 17.5-21, g-r 1.3-1.7, r-i 0.4-0.6 (red, no colour gradient).
- ``lens``: an elliptical deflector (above) with a singular isothermal ellipsoid (lenstronomy's
  ``SIE`` convention: product-averaged Einstein radius) of the same axis ratio as the light and a
  position angle misaligned by a Gaussian 10 degrees, plus an external shear of strength uniform
  0-0.08 at a random angle (lenstronomy's ``SHEAR`` centred on the lens). theta_E is uniform in
  ``theta_e_range`` independently of the deflector's luminosity: the theta_E - luminosity
  (Faber-Jackson) correlation is ignored on purpose, so the deflector carries no information on
  the arcs. Source: a blue Sersic (n 0.5-1.5, R_e 0.1-0.4", q 0.4-1, g-r 0-0.5, r-i -0.1-0.3),
  centred uniformly within theta_E / 2 of the lens centre, total unlensed r magnitude uniform in
  ``source_mag_r_range``; half the sources carry 1-4 star-forming clumps (round Gaussians, sigma
  0.05-0.1", placed with a Gaussian scatter of R_e around the source centre, bluer: g-r -0.1-0.2,
  r-i -0.1-0.2) holding 10-40 % of the source's r flux. The lensed light is the source surface
  brightness at the ray-shot positions (surface brightness is conserved). No lens light
  subtraction issues, no substructure, no multiple sources, no source-redshift dependence; the
  deflector's light does not depend on theta_E.
- ``spiral``: an inclined exponential disk (R_e log-uniform 0.8-3", cos i uniform 0.3-1, i.e.
  axis ratio 0.3-1) with two logarithmic spiral arms as a modulation of the disk light
  (pitch 12-30 degrees, random phase and handedness, arm weight ((1 + cos phase) / 2)^2 whose
  azimuthal mean is normalised to 1, so the arms redistribute light at fixed radius), plus a
  Sersic bulge (n 1.5-4, R_e 0.15-0.35 x the disk's, at least 0.2", axis ratio that of the disk
  but at least 0.7, 5-35 % of the r light).
  Total r = 17.5-21.5. Colours: bulge red (g-r 1.0-1.5, r-i 0.35-0.55), smooth disk
  intermediate (g-r 0.5-0.9, r-i 0.2-0.4), arms blue (g-r 0.1-0.5, r-i 0-0.3; 30-60 % of the disk
  light). Razor-thin disk geometry, no bar, no dust.
- ``merger`` (pairs with tidal tails: a hard negative, tails look like arcs): a primary Sersic at
  the centre (r = 17.5-21.5) and a secondary 1-3" away, 0-1.5 mag fainter (each n 1-4,
  R_e log-uniform 0.3-1.2", q 0.5-1, g-r 0.6-1.5, r-i 0.25-0.55), and 1-2 tidal tails: circular
  arcs (radius 1.5-4", span 60-150 degrees, Gaussian cross-section sigma 0.15-0.4") that start at
  one of the galaxies and fade along their length (exponentially, with a cosine taper to zero at
  the tip), holding 5-25 % of the pair's r light, bluish to neutral (g-r 0.2-0.8, r-i 0.1-0.4).
- ``ring`` (ring galaxies: a hard negative, they look like Einstein rings): an early-type / S0
  core (Sersic n 2-4, R_e log-uniform 0.4-1.5", q 0.6-1, r = 17.5-21, g-r 1.2-1.7, r-i 0.35-0.6)
  and a star-forming ring: an ellipse of radius 1-3" (axis ratio 0.7-1, random position angle,
  centre up to 0.3" off the core), Gaussian cross-section sigma 0.1-0.3", azimuthal brightness
  1 + a cos(angle), a 0-0.6, r = 20.5-23.5, with 2-6 clumps on it (sigma 0.05-0.12", 20-50 % of
  the ring light), in the colours of lensed sources (g-r 0-0.5, r-i -0.1-0.3). Kept hard on
  purpose: ring radius, brightness and colour overlap the lensed arcs.
- ``edge_on`` (edge-on dusty disks): a thin exponential disk (R_e log-uniform 1-3", axis ratio
  0.1-0.25) plus a small bulge (0-30 % of the light, n 1-3, R_e 0.3-0.8", q 0.5-0.9), r = 17.5-21.5
  before dust, colours as spirals (disk g-r 0.5-0.9, bulge 1.0-1.5), crossed by a dust lane along
  the major axis: attenuation exp(-tau_band exp(-(y' - y0)^2 / 2 w^2)) with y' the minor-axis
  coordinate, w = 0.3-0.6 of the disk's projected minor half-light size, y0 within +-0.3 w,
  tau_r = 0.5-2 and tau_g : tau_r : tau_i = 1.38 : 1 : 0.76 (Milky-Way-like extinction at 477,
  623, 763 nm). ``deflector_mag_r`` is the magnitude before dust.
- ``artifact``: on a faint galaxy (half of them: Sersic n 0.5-4, R_e log-uniform 0.2-1", q 0.4-1,
  r = 20-23, g-r 0.2-1.6, r-i 0.1-0.6) or on blank sky (``deflector_mag_r`` NaN): 60 % satellite
  streaks, a straight line across the cutout in ONE band only (random band, position within the
  cutout, angle; Gaussian cross-section sigma 0.2-0.6" before the PSF, peak 19.5-23
  mag/arcsec^2); 40 % ghosts, a large diffuse annulus (radius 3-8", width sigma 0.8-2", centre
  within 4" of the cutout, peak 22.5-25 mag/arcsec^2, a plateau of 0-40 % of the peak inside)
  present in each band with probability 1/2 (at least one band).
- Neighbours: in ``neighbour_fraction`` of ALL images (lenses included) a small galaxy 2-4.5"
  from the centre (Sersic n 0.5-4, R_e log-uniform 0.2-0.8", q 0.4-1, r = 20-24, g-r 0.2-1.6,
  r-i 0.1-0.6).

Arc S/N and the ``min_arc_snr`` cut
-----------------------------------
``arc_snr`` is the matched-filter S/N of the lensed source light summed over the three bands:
sqrt(sum over bands and pixels of s^2 x ivar), with s the noiseless PSF-convolved lensed source
light (e-/s) and ivar that of the final image (which includes the source's own Poisson noise).
It is the S/N with which a perfectly known arc template could be detected. With
``min_arc_snr > 0`` a lens whose arc S/N falls below it is redrawn (theta_E and the source, same
deflector, mass shape and conditions) up to ``max_redraws`` times; then a new deflector (light,
mass shape and shear) is drawn and the count restarts, at most ``max_new_lenses`` times, after
which :class:`ValueError` is raised (the cut cannot be met in those conditions). Observing
conditions are never redrawn: the cut changes which sources and Einstein radii lenses have in
each condition, not how conditions are distributed among lenses and non-lenses.

The meta columns
----------------
``object_id`` (int64, global image index), ``label`` (int8, 1 = lens), ``object_class`` (int8),
``psf_fwhm_g/r/i`` (arcsec), ``n_exposures`` (int16), ``depth_r`` (mag), ``theta_e`` (arcsec),
``source_mag_r`` (unlensed), ``magnification`` (r-band lensed / unlensed source flux, computed on
the supersampled grid before the PSF), ``arc_snr``, ``deflector_mag_r`` (the central galaxy's r
magnitude: the deflector, elliptical, spiral, merger primary, ring core, edge-on disk before
dust, artifact host; NaN on blank sky), ``has_neighbour`` (int8), ``q_deflector`` (the SIE axis
ratio), ``shear_gamma``; plus ``artifact_kind`` (int8: 0 none, 1 streak, 2 ghost) and
``artifact_bands`` (int8 bit mask: g = 1, r = 2, i = 4). Float columns are float64, NaN where
not applicable (lens quantities for non-lenses).

The lens deflection is lenstronomy's SIE + SHEAR, but evaluated here vectorised over a block of
lenses (:func:`sie_shear_deflection`): lenstronomy's ``LensModel(['SIE', 'SHEAR']).ray_shooting``
takes one lens at a time (array keyword arguments do not broadcast through its NIE) and needs
about 13 ms per lens on a 144^2 grid, which alone would cap the simulator near 300 images/s at
a 25 % lens fraction; the same formulas vectorised take about 1 ms per lens. The tests check
them against lenstronomy's ``ray_shooting`` to 1e-8 arcsec.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft
from scipy.special import erf, gammaincinv, gammaln, kv

from calipers.checks import checked_number as _number

log = logging.getLogger(__name__)

BANDS = ("g", "r", "i")
CLASS_NAMES = ("lens", "elliptical", "spiral", "merger", "ring", "edge_on", "artifact")
NEGATIVE_CLASSES = CLASS_NAMES[1:]
DEFAULT_NEGATIVE_MIX = {"elliptical": 0.40, "spiral": 0.20, "merger": 0.15, "ring": 0.10, "edge_on": 0.10,
                        "artifact": 0.05}
WAVELENGTHS_NM = {"g": 477.0, "r": 623.0, "i": 763.0}
# FWHM in a band relative to r (Kolmogorov seeing, FWHM ~ lambda^-0.2)
FWHM_SCALE = tuple((WAVELENGTHS_NM[b] / WAVELENGTHS_NM["r"]) ** -0.2 for b in BANDS)
ARTIFACT_NONE, ARTIFACT_STREAK, ARTIFACT_GHOST = 0, 1, 2
META_COLUMNS = {
    "object_id": np.int64, "label": np.int8, "object_class": np.int8,
    "psf_fwhm_g": np.float64, "psf_fwhm_r": np.float64, "psf_fwhm_i": np.float64,
    "n_exposures": np.int16, "depth_r": np.float64, "theta_e": np.float64, "source_mag_r": np.float64,
    "magnification": np.float64, "arc_snr": np.float64, "deflector_mag_r": np.float64,
    "has_neighbour": np.int8, "q_deflector": np.float64, "shear_gamma": np.float64,
    "artifact_kind": np.int8, "artifact_bands": np.int8,
}
_DUST_RATIO = (1.38, 1.0, 0.76)  # tau_g : tau_r : tau_i
_CENTRE_SCATTER = 0.1  # arcsec, Gaussian offset of the central object from the cutout centre
_CHUNK = 32  # images rendered at a time (bounds the memory of the supersampled grids)


# =============================================================================== configuration
def _pair(name: str, value: Any, kind: type) -> tuple:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"LensSimConfig.{name} must be a pair (low, high), got {value!r}") from None
    out = []
    for v in (lo, hi):
        if isinstance(v, (bool, np.bool_)):
            raise ValueError(f"LensSimConfig.{name} must hold numbers, got {value!r}")
        if kind is int:
            if not isinstance(v, (int, np.integer)) and not (isinstance(v, float) and v.is_integer()):
                raise ValueError(f"LensSimConfig.{name} must hold integers, got {value!r}")
            out.append(int(v))
        else:
            if not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(float(v)):
                raise ValueError(f"LensSimConfig.{name} must hold finite numbers, got {value!r}")
            out.append(float(v))
    if out[0] > out[1]:
        raise ValueError(f"LensSimConfig.{name} = {value!r}: low must not exceed high")
    return tuple(out)


@dataclass
class LensSimConfig:
    """Settings of the cutout simulator (see the module docstring for what each prior means).

    Parameters
    ----------
    n_pix : cutout size in pixels (square).
    pixel_scale : arcsec per pixel (DES: 0.263).
    supersample : sub-pixels per pixel axis on which light is sampled before the PSF.
    lens_fraction : probability that an image is a lens.
    negative_mix : fractions of the non-lens classes (names from :data:`CLASS_NAMES`; missing
        names get 0; the fractions must sum to 1).
    neighbour_fraction : probability that an image (of any class) has a neighbouring galaxy.
    fwhm_r_range : r-band PSF FWHM range (arcsec), uniform.
    n_exposures_range : exposure count range (inclusive), uniform integers.
    theta_e_range : Einstein radius range (arcsec), uniform.
    source_mag_r_range : unlensed source r magnitude range, uniform.
    min_arc_snr : lenses are redrawn until their arc S/N reaches this (0: no cut).
    max_redraws : redraws of theta_E and the source per deflector before a new deflector.
    max_new_lenses : new deflectors per image before giving up with a ValueError.
    psf_model : ``"moffat"`` or ``"gaussian"``.
    moffat_beta : Moffat index (> 1).
    block_size : images per seeded block (changing it changes the images).
    """

    n_pix: int = 64
    pixel_scale: float = 0.263
    supersample: int = 2
    lens_fraction: float = 0.25
    negative_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_NEGATIVE_MIX))
    neighbour_fraction: float = 0.30
    fwhm_r_range: tuple[float, float] = (0.6, 1.4)
    n_exposures_range: tuple[int, int] = (1, 10)
    theta_e_range: tuple[float, float] = (0.8, 3.0)
    source_mag_r_range: tuple[float, float] = (22.0, 26.0)
    min_arc_snr: float = 0.0
    max_redraws: int = 20
    max_new_lenses: int = 10
    psf_model: str = "moffat"
    moffat_beta: float = 3.5
    block_size: int = 256

    def __post_init__(self) -> None:
        self.n_pix = _number("LensSimConfig.n_pix", self.n_pix, int, 4)
        self.pixel_scale = _number("LensSimConfig.pixel_scale", self.pixel_scale, float, 0.0, low_open=True)
        self.supersample = _number("LensSimConfig.supersample", self.supersample, int, 1, 8)
        self.lens_fraction = _number("LensSimConfig.lens_fraction", self.lens_fraction, float, 0.0, 1.0)
        self.neighbour_fraction = _number("LensSimConfig.neighbour_fraction", self.neighbour_fraction, float, 0.0, 1.0)
        if not isinstance(self.negative_mix, dict):
            raise ValueError(f"LensSimConfig.negative_mix must be a dict of class name -> fraction, "
                             f"got {self.negative_mix!r}")
        unknown = sorted(set(self.negative_mix) - set(NEGATIVE_CLASSES))
        if unknown:
            raise ValueError(f"LensSimConfig.negative_mix has unknown class(es) {unknown}; the non-lens classes "
                             f"are {list(NEGATIVE_CLASSES)}")
        mix = {}
        for k in NEGATIVE_CLASSES:
            mix[k] = _number(f"LensSimConfig.negative_mix['{k}']", self.negative_mix.get(k, 0.0), float, 0.0, 1.0)
        total = sum(mix.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"LensSimConfig.negative_mix fractions sum to {total:.6g}, not 1: {mix}")
        self.negative_mix = {k: v for k, v in mix.items() if k in self.negative_mix}
        self.fwhm_r_range = _pair("fwhm_r_range", self.fwhm_r_range, float)
        if self.fwhm_r_range[0] <= 0:
            raise ValueError(f"LensSimConfig.fwhm_r_range = {self.fwhm_r_range}: the FWHM must be > 0 arcsec")
        self.n_exposures_range = _pair("n_exposures_range", self.n_exposures_range, int)
        if self.n_exposures_range[0] < 1:
            raise ValueError(f"LensSimConfig.n_exposures_range = {self.n_exposures_range}: at least 1 exposure")
        self.theta_e_range = _pair("theta_e_range", self.theta_e_range, float)
        if self.theta_e_range[0] <= 0:
            raise ValueError(f"LensSimConfig.theta_e_range = {self.theta_e_range}: theta_E must be > 0 arcsec")
        self.source_mag_r_range = _pair("source_mag_r_range", self.source_mag_r_range, float)
        self.min_arc_snr = _number("LensSimConfig.min_arc_snr", self.min_arc_snr, float, 0.0)
        self.max_redraws = _number("LensSimConfig.max_redraws", self.max_redraws, int, 1)
        self.max_new_lenses = _number("LensSimConfig.max_new_lenses", self.max_new_lenses, int, 0)
        if self.psf_model not in ("moffat", "gaussian"):
            raise ValueError(f"LensSimConfig.psf_model must be 'moffat' or 'gaussian', got {self.psf_model!r}")
        self.moffat_beta = _number("LensSimConfig.moffat_beta", self.moffat_beta, float, 1.0, low_open=True)
        self.block_size = _number("LensSimConfig.block_size", self.block_size, int, 1)

    @property
    def class_probabilities(self) -> np.ndarray:
        """Probability of each class of :data:`CLASS_NAMES` (lens first)."""
        p = [self.lens_fraction] + [(1.0 - self.lens_fraction) * self.negative_mix.get(k, 0.0)
                                    for k in NEGATIVE_CLASSES]
        p = np.asarray(p, dtype=float)
        return p / p.sum()

    def to_dict(self) -> dict:
        """A JSON-able dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict) -> LensSimConfig:
        """The config a :meth:`to_dict` dict describes; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"LensSimConfig: unknown option(s) {unknown}; known: {sorted(names)}")
        return cls(**values)


# =============================================================================== cutout set
@dataclass
class CutoutSet:
    """Multi-band cutouts with their inverse variance and one metadata row per image.

    Attributes
    ----------
    data : (N, n_bands, n_pix, n_pix) float32, sky-subtracted, electrons per second.
    ivar : same shape, float32, 1 / variance in (e-/s)^-2.
    meta : column name -> 1-d array of length N.
    bands : band names, one per axis-1 entry.
    pixel_scale : arcsec per pixel.
    zero_points : band -> magnitude of 1 e-/s.
    """

    data: np.ndarray
    ivar: np.ndarray
    meta: dict[str, np.ndarray]
    bands: tuple[str, ...] = BANDS
    pixel_scale: float = 0.263
    zero_points: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bands = tuple(str(b) for b in self.bands)
        if self.data.ndim != 4:
            raise ValueError(f"CutoutSet.data must be (N, bands, H, W), got shape {self.data.shape}")
        if self.ivar.shape != self.data.shape:
            raise ValueError(f"CutoutSet.ivar has shape {self.ivar.shape}, data {self.data.shape}")
        if self.data.shape[1] != len(self.bands):
            raise ValueError(f"CutoutSet.data has {self.data.shape[1]} bands but bands = {self.bands}")
        n = self.data.shape[0]
        for k, v in self.meta.items():
            if np.ndim(v) != 1 or len(v) != n:
                raise ValueError(f"CutoutSet.meta column '{k}' has shape {np.shape(v)}, expected ({n},)")
        self.zero_points = {str(k): float(v) for k, v in self.zero_points.items()}
        self.pixel_scale = float(self.pixel_scale)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def take(self, rows: slice | np.ndarray | Sequence[int]) -> CutoutSet:
        """The images ``rows`` (a slice, an index array or a boolean mask)."""
        return CutoutSet(self.data[rows], self.ivar[rows], {k: v[rows] for k, v in self.meta.items()}, self.bands,
                         self.pixel_scale, dict(self.zero_points))

    @staticmethod
    def concatenate(sets: Sequence[CutoutSet]) -> CutoutSet:
        """One set from several with the same bands, pixel scale and meta columns."""
        if not sets:
            raise ValueError("CutoutSet.concatenate: no sets given")
        first = sets[0]
        for s in sets[1:]:
            if s.bands != first.bands or s.pixel_scale != first.pixel_scale or set(s.meta) != set(first.meta):
                raise ValueError("CutoutSet.concatenate: sets differ in bands, pixel scale or meta columns")
        if len(sets) == 1:
            return first
        return CutoutSet(np.concatenate([s.data for s in sets]), np.concatenate([s.ivar for s in sets]),
                         {k: np.concatenate([s.meta[k] for s in sets]) for k in first.meta}, first.bands,
                         first.pixel_scale, dict(first.zero_points))


# =============================================================================== observations
@dataclass(frozen=True)
class BandObservation:
    """One band's DES settings from lenstronomy: zero point (mag of 1 e-/s), sky (e-/s/arcsec^2),
    read noise (e- per exposure), exposure time per exposure (s), CCD gain (e-/ADU)."""

    band: str
    zero_point: float
    sky_cps_per_arcsec2: float
    read_noise: float
    exposure_time: float
    ccd_gain: float

    def magnitude_to_cps(self, magnitude: np.ndarray | float) -> np.ndarray:
        """Electrons per second of a source of AB magnitude ``magnitude`` (lenstronomy's
        ``SingleBand.magnitude2cps``)."""
        return _single_band(self.band).magnitude2cps(np.asarray(magnitude, dtype=float))


@functools.lru_cache(maxsize=None)
def _single_band(band: str):
    from lenstronomy.SimulationAPI.ObservationConfig.DES import DES
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    return SingleBand(**DES(band=band).kwargs_single_band())


@functools.lru_cache(maxsize=None)
def band_observation(band: str) -> BandObservation:
    """The DES observation settings of ``band`` (g, r or i) through lenstronomy's ``DES`` config and
    ``SingleBand``."""
    if band not in BANDS:
        raise ValueError(f"band {band!r}: the simulator knows {list(BANDS)}")
    from lenstronomy.SimulationAPI.ObservationConfig.DES import DES

    kw = DES(band=band).kwargs_single_band()
    single = _single_band(band)
    return BandObservation(band, float(kw["magnitude_zero_point"]), float(single.sky_brightness),
                           float(kw["read_noise"]), float(kw["exposure_time"]), float(kw["ccd_gain"]))


def zero_points() -> dict[str, float]:
    """Band -> zero point (magnitude of 1 e-/s) of the simulated images."""
    return {b: band_observation(b).zero_point for b in BANDS}


def background_variance(n_exposures: np.ndarray | int, band: str, pixel_scale: float) -> np.ndarray:
    """Variance (e-/s)^2 of a blank-sky pixel: (sky x pixel_area x T + N read_noise^2) / T^2 with
    T = N x exposure time (lenstronomy's ``data_util.bkg_noise`` squared)."""
    obs = band_observation(band)
    n = np.asarray(n_exposures, dtype=float)
    t = n * obs.exposure_time
    return (obs.sky_cps_per_arcsec2 * pixel_scale ** 2 * t + n * obs.read_noise ** 2) / t ** 2


def noise_variance(model: np.ndarray, n_exposures: np.ndarray, pixel_scale: float,
                   bands: Sequence[str] = BANDS) -> np.ndarray:
    """Per-pixel noise variance (e-/s)^2 of noiseless images ``model`` (N, bands, H, W) in e-/s:
    background (:func:`background_variance`) plus the source's Poisson variance max(model, 0) / T."""
    n = np.asarray(n_exposures, dtype=float)
    var = np.empty(model.shape, dtype=np.float64)
    for j, b in enumerate(bands):
        t = (n * band_observation(b).exposure_time)[:, None, None]
        var[:, j] = background_variance(n, b, pixel_scale)[:, None, None] + np.maximum(model[:, j], 0.0) / t
    return var


# =============================================================================== PSF
def moffat_alpha(fwhm: np.ndarray | float, beta: float) -> np.ndarray:
    """Moffat core width alpha (arcsec) for a FWHM (arcsec): FWHM = 2 alpha sqrt(2^(1/beta) - 1)."""
    return np.asarray(fwhm, dtype=float) / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def psf_noise_equivalent_area(fwhm: np.ndarray | float, model: str = "moffat", beta: float = 3.5) -> np.ndarray:
    """Noise-equivalent area 1 / integral(PSF^2) in arcsec^2 of a unit-flux PSF: 4 pi sigma^2 for a
    Gaussian, pi alpha^2 (2 beta - 1) / (beta - 1)^2 for a Moffat."""
    fwhm = np.asarray(fwhm, dtype=float)
    if model == "gaussian":
        sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        return 4.0 * math.pi * sigma ** 2
    if model == "moffat":
        alpha = moffat_alpha(fwhm, beta)
        return math.pi * alpha ** 2 * (2.0 * beta - 1.0) / (beta - 1.0) ** 2
    raise ValueError(f"psf model {model!r}: 'moffat' or 'gaussian'")


def psf_transfer(k: np.ndarray, fwhm: np.ndarray | float, model: str = "moffat", beta: float = 3.5) -> np.ndarray:
    """The optical transfer function (Fourier transform of the unit-flux PSF) at spatial frequency
    ``k`` (cycles/arcsec): exp(-2 pi^2 sigma^2 k^2) for a Gaussian; for a Moffat
    2^(2-beta) b^(beta-1) K_(beta-1)(b) / Gamma(beta-1), b = 2 pi k alpha (1 at k = 0)."""
    k = np.abs(np.asarray(k, dtype=float))
    fwhm = np.asarray(fwhm, dtype=float)
    if model == "gaussian":
        sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        return np.exp(-2.0 * math.pi ** 2 * sigma ** 2 * k ** 2)
    if model != "moffat":
        raise ValueError(f"psf model {model!r}: 'moffat' or 'gaussian'")
    b = 2.0 * math.pi * k * moffat_alpha(fwhm, beta)
    nu = beta - 1.0
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        logv = (2.0 - beta) * math.log(2.0) + nu * np.log(np.where(b > 0, b, 1.0)) - gammaln(nu)
        out = np.exp(logv) * kv(nu, np.where(b > 0, b, 1.0))
    out = np.where(b > 0, out, 1.0)
    return np.where(np.isfinite(out), out, 0.0)


@functools.lru_cache(maxsize=16)
def _otf_table(model: str, beta: float) -> tuple[float, np.ndarray, np.ndarray]:
    """The OTF as a function of x = k x FWHM on a uniform grid (step, values, differences), for a
    fast linear interpolation by direct indexing (np.interp's search took a third of the time)."""
    x_max = 3.0 if model == "gaussian" else 45.0 * 2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0) / (2.0 * math.pi)
    x = np.linspace(0.0, x_max, 8001)
    y = psf_transfer(x, 1.0, model, beta)
    y[-1] = 0.0
    return float(x[1]), y.astype(np.float32), np.diff(y, append=0.0).astype(np.float32)


# =============================================================================== geometry
@dataclass(frozen=True)
class _Grid:
    n_pix: int
    supersample: int
    pixel_scale: float
    n_sub: int  # padded supersampled grid size
    offset: int  # first sub-pixel of the cutout in the padded grid
    coords: np.ndarray  # (n_sub,) float32 sub-pixel centres, arcsec from the cutout centre
    kabs: np.ndarray  # (n_sub, n_sub // 2 + 1) |k| in cycles/arcsec

    @property
    def h(self) -> float:
        return self.pixel_scale / self.supersample


@functools.lru_cache(maxsize=8)
def _grid(n_pix: int, supersample: int, pixel_scale: float, fwhm_max: float) -> _Grid:
    margin = max(4, int(math.ceil(1.5 * fwhm_max / pixel_scale)))
    n_sub = supersample * (n_pix + 2 * margin)
    while True:
        n_sub = scipy.fft.next_fast_len(n_sub, real=True)
        if (n_sub - supersample * n_pix) % 2 == 0:
            break
        n_sub += 1
    h = pixel_scale / supersample
    coords = ((np.arange(n_sub) - (n_sub - 1) / 2.0) * h).astype(np.float32)
    ky = np.fft.fftfreq(n_sub, d=h)
    kx = np.fft.rfftfreq(n_sub, d=h)
    kabs = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).astype(np.float32)
    return _Grid(n_pix, supersample, pixel_scale, n_sub, (n_sub - supersample * n_pix) // 2, coords, kabs)


def _grid_for(config: LensSimConfig) -> _Grid:
    return _grid(config.n_pix, config.supersample, config.pixel_scale, config.fwhm_r_range[1] * max(FWHM_SCALE))


def _observe(model: np.ndarray, fwhm: np.ndarray, grid: _Grid, psf_model: str, beta: float) -> np.ndarray:
    """PSF-convolve (FFT, analytic OTF) supersampled flux-per-sub-pixel images (c, bands, n_sub,
    n_sub) with per-image, per-band FWHM (c, bands), crop the cutout and bin to pixels."""
    step, values, slopes = _otf_table(psf_model, beta)
    t = grid.kabs[None, None] * (fwhm / step).astype(np.float32)[:, :, None, None]
    np.minimum(t, np.float32(len(values) - 1), out=t)
    index = t.astype(np.int32)
    t -= index
    otf = values[index]
    otf += t * slopes[index]
    ft = scipy.fft.rfft2(model, workers=1)
    ft *= otf
    conv = scipy.fft.irfft2(ft, s=(grid.n_sub, grid.n_sub), workers=1)
    o, s, n = grid.offset, grid.supersample, grid.n_pix
    out = np.zeros(conv.shape[:2] + (n, n), dtype=np.float32)
    for dy in range(s):
        for dx in range(s):
            out += conv[:, :, o + dy:o + s * n:s, o + dx:o + s * n:s]
    return out


# =============================================================================== light profiles
def sersic_b(n: np.ndarray | float) -> np.ndarray:
    """b_n with Gamma(2n) gamma(2n, b_n) = Gamma(2n)/2 (R_e encloses half the light)."""
    return gammaincinv(2.0 * np.asarray(n, dtype=float), 0.5)


def sersic_unit_flux(n: np.ndarray | float, r_eff: np.ndarray | float) -> np.ndarray:
    """Total flux of exp(-b_n (R / R_e)^(1/n)) (amplitude 1 at R = 0) over the plane, with R the
    product-averaged elliptical radius sqrt(q u^2 + v^2 / q): 2 pi n R_e^2 b_n^(-2n) Gamma(2n)."""
    n = np.asarray(n, dtype=float)
    r_eff = np.asarray(r_eff, dtype=float)
    b = sersic_b(n)
    return np.exp(np.log(2.0 * math.pi * n * r_eff ** 2) - 2.0 * n * np.log(b) + gammaln(2.0 * n))


def _col(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)[:, None, None]


def _rotate(x, y, p) -> tuple[np.ndarray, np.ndarray]:
    dx = x - _col(p["x"])
    dy = y - _col(p["y"])
    c, s = _col(np.cos(p["phi"])), _col(np.sin(p["phi"]))
    return dx * c + dy * s, -dx * s + dy * c


def _k_sersic(x, y, p, h):
    u, v = _rotate(x, y, p)
    q = _col(p["q"])
    r = np.sqrt(q * u * u + v * v / q)
    np.maximum(r, np.float32(0.25 * h), out=r)
    r /= _col(p["r_eff"])
    with np.errstate(divide="ignore"):
        np.log(r, out=r)
    r *= _col(1.0 / p["n"])
    np.exp(r, out=r)
    r *= _col(-p["b"])
    np.exp(r, out=r)
    amp = p["flux"] * (h * h / p["norm"])[:, None]
    return [(r, amp)]


def _k_gaussian(x, y, p, h):
    dx = x - _col(p["x"])
    dy = y - _col(p["y"])
    prof = np.exp((dx * dx + dy * dy) * _col(-0.5 / p["sigma"] ** 2))
    amp = p["flux"] * (h * h / (2.0 * math.pi * p["sigma"] ** 2))[:, None]
    return [(prof, amp)]


def _ring_radial_integral(radius: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """integral_0^inf rho exp(-(rho - R)^2 / 2 sigma^2) d rho."""
    return (sigma ** 2 * np.exp(-radius ** 2 / (2 * sigma ** 2))
            + radius * sigma * math.sqrt(math.pi / 2) * (1 + erf(radius / (math.sqrt(2) * sigma))))


def _tail_window_integral(span: np.ndarray, fade: np.ndarray) -> np.ndarray:
    """integral_0^span exp(-t / fade) (1 + cos(pi t / span)) / 2 dt."""
    z = -1.0 / fade + 1j * math.pi / span
    return 0.5 * fade * (1 - np.exp(-span / fade)) + 0.5 * np.real((np.exp(z * span) - 1.0) / z)


def _arc_coords(x, y, p):
    u, v = _rotate(x, y, p)
    v = v / _col(p["q"])
    rho = np.sqrt(u * u + v * v)
    return rho, np.arctan2(v, u)


def _k_tail(x, y, p, h):
    rho, theta = _arc_coords(x, y, p)
    rho -= _col(p["radius"])
    prof = np.exp(rho * rho * _col(-0.5 / p["sigma"] ** 2))
    t = np.mod((theta - _col(p["theta0"])) * _col(p["sign"]), np.float32(2 * math.pi))
    span = _col(p["span"])
    window = np.where(t < span, np.exp(-t / _col(p["fade"])) * 0.5 * (1 + np.cos(np.float32(math.pi) * t / span)),
                      np.float32(0))
    prof *= window
    total = p["q"] * _ring_radial_integral(p["radius"], p["sigma"]) * _tail_window_integral(p["span"], p["fade"])
    return [(prof, p["flux"] * (h * h / total)[:, None])]


def _k_ring(x, y, p, h):
    rho, theta = _arc_coords(x, y, p)
    rho -= _col(p["radius"])
    prof = np.exp(rho * rho * _col(-0.5 / p["sigma"] ** 2))
    prof *= 1 + _col(p["asym"]) * np.cos(theta - _col(p["asym_phase"]))
    total = p["q"] * _ring_radial_integral(p["radius"], p["sigma"]) * 2 * math.pi
    return [(prof, p["flux"] * (h * h / total)[:, None])]


_B1 = float(sersic_b(1.0))


def _k_spiral(x, y, p, h):
    u, v = _rotate(x, y, p)
    v = v / _col(p["q"])
    rd = np.sqrt(u * u + v * v)
    re = _col(p["r_eff"])
    disk = np.exp(rd * np.float32(-_B1) / re)
    theta = np.arctan2(v, u)
    np.maximum(rd, 0.1 * re, out=rd)
    phase = 2 * (theta - _col(p["chirality"] / np.tan(p["pitch"])) * np.log(rd / re)) - _col(p["arm_phase"])
    arms = (1 + np.cos(phase)) * 0.5
    arms *= arms
    arms *= disk * np.float32(8.0 / 3.0)
    norm = p["q"] * sersic_unit_flux(1.0, p["r_eff"])
    return [(disk, p["flux"] * (h * h / norm)[:, None]), (arms, p["arm_flux"] * (h * h / norm)[:, None])]


def _k_edge_on(x, y, p, h):
    u, v = _rotate(x, y, p)
    qd = _col(p["q"])
    rd = np.sqrt(u * u + (v / qd) ** 2)
    disk = np.exp(rd * np.float32(-_B1) / _col(p["r_eff"]))
    qb = _col(p["bulge_q"])
    rb = np.sqrt(qb * u * u + v * v / qb)
    np.maximum(rb, np.float32(0.25 * h), out=rb)
    bulge = np.exp(_col(-p["bulge_b"]) * (rb / _col(p["bulge_r_eff"])) ** _col(1.0 / p["bulge_n"]))
    lane = np.exp((v - _col(p["lane_offset"])) ** 2 * _col(-0.5 / p["lane_width"] ** 2))
    amp_d = p["flux"] * (h * h / (p["q"] * sersic_unit_flux(1.0, p["r_eff"])))[:, None]
    amp_b = p["bulge_flux"] * (h * h / sersic_unit_flux(p["bulge_n"], p["bulge_r_eff"]))[:, None]
    terms = []
    for j in range(3):
        att = np.exp(lane * _col(-p["tau"][:, j]))
        prof = (disk * _col(amp_d[:, j]) + bulge * _col(amp_b[:, j])) * att
        w = np.zeros((len(p["x"]), 3))
        w[:, j] = 1.0
        terms.append((prof, w))
    return terms


def _k_streak(x, y, p, h):
    d = (x - _col(p["x"])) * _col(np.sin(p["angle"])) - (y - _col(p["y"])) * _col(np.cos(p["angle"]))
    prof = np.exp(d * d * _col(-0.5 / p["sigma"] ** 2))
    return [(prof, p["peak"] * h * h)]


def _k_ghost(x, y, p, h):
    dx = x - _col(p["x"])
    dy = y - _col(p["y"])
    rho = np.sqrt(dx * dx + dy * dy) - _col(p["radius"])
    sig = _col(p["sigma"])
    prof = np.exp(rho * rho / (-2 * sig * sig)) + _col(p["plateau"]) / (1 + np.exp(np.clip(rho / sig, -30, 30)))
    return [(prof, p["peak"] * h * h)]


_KERNELS = {"sersic": _k_sersic, "gaussian": _k_gaussian, "tail": _k_tail, "ring": _k_ring, "spiral": _k_spiral,
            "edge_on": _k_edge_on, "streak": _k_streak, "ghost": _k_ghost}


class _Table:
    """Components of one kind: the image each belongs to, per-band amplitudes, shape parameters."""

    def __init__(self, kind: str, image: np.ndarray, **params: np.ndarray):
        self.kind = kind
        self.image = np.asarray(image, dtype=np.int64)
        self.params = {k: np.asarray(v, dtype=float) for k, v in params.items()}

    def __len__(self) -> int:
        return len(self.image)

    def take(self, rows) -> _Table:
        return _Table(self.kind, self.image[rows], **{k: v[rows] for k, v in self.params.items()})


def _render(tables: list[_Table], images: np.ndarray, grid: _Grid, source_plane=None) -> np.ndarray:
    """Supersampled noiseless flux per sub-pixel (e-/s), (len(images), 3, n_sub, n_sub) float32, of
    the components of ``tables`` that belong to ``images`` (sorted, unique). With
    ``source_plane = (bx, by)`` (each (len(images), n_sub, n_sub)) profiles are evaluated at those
    (ray-shot) positions instead of the image-plane grid."""
    out = np.zeros((len(images), 3, grid.n_sub, grid.n_sub), dtype=np.float32)
    gx = grid.coords[None, None, :]
    gy = grid.coords[None, :, None]
    for t in tables:
        if not len(t):
            continue
        pos = np.searchsorted(images, t.image)
        pos_c = np.minimum(pos, len(images) - 1)
        rows = np.flatnonzero((pos < len(images)) & (images[pos_c] == t.image))
        if not rows.size:
            continue
        local = pos[rows]
        order = np.argsort(local, kind="stable")
        rank = np.empty(rows.size, dtype=np.int64)
        sl = local[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sl)) + 1]
        counts = np.diff(np.r_[starts, sl.size])
        rank[order] = np.arange(sl.size) - np.repeat(starts, counts)
        kernel = _KERNELS[t.kind]
        for r in range(int(rank.max()) + 1):
            sel = rows[rank == r]
            loc = pos[sel]
            sub = t.take(sel)
            if source_plane is None:
                x, y = gx, gy
            else:
                x, y = source_plane[0][loc], source_plane[1][loc]
            for prof, amp in kernel(x, y, sub.params, grid.h):
                for j in range(3):
                    a = amp[:, j]
                    if np.any(a != 0):
                        out[loc, j] += prof * _col(a)
    return out


# =============================================================================== lensing
def sie_shear_deflection(x: np.ndarray, y: np.ndarray, theta_e: np.ndarray, q: np.ndarray, phi: np.ndarray,
                         center_x: np.ndarray, center_y: np.ndarray, gamma1: np.ndarray | float = 0.0,
                         gamma2: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Deflection (arcsec) of lenstronomy's ``SIE`` (its NIE with a vanishing core, product-averaged
    Einstein radius ``theta_e``, axis ratio ``q`` and position angle ``phi`` in radians, i.e.
    ``e1, e2 = param_util.phi_q2_ellipticity(phi, q)``) plus ``SHEAR`` (gamma1, gamma2) centred on
    the lens, at positions ``x, y`` (arcsec). Parameters broadcast against the positions, so a
    block of lenses is one call (e.g. parameters (L, 1, 1), positions (1, H, W)); lenstronomy's
    ``ray_shooting`` is beta = theta - alpha (Keeton & Kochanek 1998 formulas, as lenstronomy)."""
    q = np.minimum(np.asarray(q, dtype=float), 0.99999999)
    b = np.asarray(theta_e, dtype=float) * np.sqrt(q)
    s = 1e-10 / np.sqrt(q)
    dx = x - center_x
    dy = y - center_y
    c, sn = np.cos(phi), np.sin(phi)
    xr = dx * c + dy * sn
    yr = -dx * sn + dy * c
    psi = np.sqrt(q ** 2 * (s ** 2 + xr ** 2) + yr ** 2)
    e = np.sqrt(1.0 - q ** 2)
    ax_ = b / e * np.arctan(e * xr / (psi + s))
    ay_ = b / e * np.arctanh(e * yr / (psi + q ** 2 * s))
    ax = ax_ * c - ay_ * sn + gamma1 * dx + gamma2 * dy
    ay = ax_ * sn + ay_ * c + gamma2 * dx - gamma1 * dy
    return ax, ay


def _source_plane(unit_alpha, theta_e, shear_alpha, grid: _Grid):
    """Ray-shot positions beta = theta - theta_E alpha_SIE(theta_E = 1) - alpha_shear, float32."""
    gx = grid.coords[None, None, :]
    gy = grid.coords[None, :, None]
    te = _col(theta_e)
    return gx - te * unit_alpha[0] - shear_alpha[0], gy - te * unit_alpha[1] - shear_alpha[1]


def _lens_deflections(lens: dict, rows: np.ndarray, grid: _Grid):
    """SIE deflection at theta_E = 1 and the shear deflection on the padded sub-grid, float32."""
    g = grid.coords.astype(np.float64)
    x = g[None, None, :]
    y = g[:, None][None]
    p = {k: v[rows][:, None, None] for k, v in lens.items()}
    ax, ay = sie_shear_deflection(x, y, 1.0, p["q_mass"], p["phi_mass"], p["x"], p["y"])
    dx, dy = x - p["x"], y - p["y"]
    sx = p["gamma1"] * dx + p["gamma2"] * dy
    sy = p["gamma2"] * dx - p["gamma1"] * dy
    return ((ax.astype(np.float32), ay.astype(np.float32)),
            (sx.astype(np.float32), sy.astype(np.float32)))


def _render_lensed_sources(mass: dict, src: dict, rows: np.ndarray, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled lensed source light (len(rows), 3, n_sub, n_sub) of the lenses ``rows`` of the
    mass and source draws, and its r-band magnification (lensed flux on the grid / unlensed flux)."""
    unit, shear = _lens_deflections(mass, rows, grid)
    bx, by = _source_plane(unit, src["theta_e"][rows], shear, grid)
    sub = {"smooth": {k: v[rows] for k, v in src["smooth"].items()},
           **{k: v[rows] for k, v in src.items() if k != "smooth"}}
    local = np.arange(rows.size)
    tables, flux_r = _source_tables(sub, local)
    image = _render(tables, local, grid, source_plane=(bx, by))
    return image, image[:, 1].sum(axis=(1, 2), dtype=np.float64) / flux_r


# =============================================================================== priors
def _fluxes(mag_r: np.ndarray, g_r: np.ndarray, r_i: np.ndarray) -> np.ndarray:
    """(k, 3) e-/s in g, r, i of objects of r magnitude ``mag_r`` and colours g-r, r-i."""
    mags = (mag_r + g_r, mag_r, mag_r - r_i)
    return np.stack([band_observation(b).magnitude_to_cps(m) for b, m in zip(BANDS, mags)], axis=1)


def _loguniform(rng, lo, hi, k):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), k))


def _draw_sersic(rng, k, centre, *, n, r_eff, q, mag, g_r, r_i, log_r_eff=True) -> dict:
    """A Sersic population: n, R_e (log-uniform, or uniform), q, position angle, r mag and colours
    (uniform)."""
    r = _loguniform(rng, *r_eff, k) if log_r_eff else rng.uniform(*r_eff, k)
    out = {"x": centre[:, 0].copy(), "y": centre[:, 1].copy(), "n": rng.uniform(*n, k), "r_eff": r,
           "q": rng.uniform(*q, k),
           "phi": rng.uniform(0, math.pi, k), "mag_r": rng.uniform(*mag, k),
           "g_r": rng.uniform(*g_r, k), "r_i": rng.uniform(*r_i, k)}
    return out


def _draw_early_type(rng, k, centre) -> dict:
    """The deflector / elliptical prior (the same for lenses and non-lens ellipticals)."""
    return _draw_sersic(rng, k, centre, n=(3.0, 5.0), r_eff=(0.5, 2.5), q=(0.5, 1.0), mag=(17.5, 21.0),
                        g_r=(1.3, 1.7), r_i=(0.4, 0.6))


def _sersic_table(image, d: dict, flux=None) -> _Table:
    flux = _fluxes(d["mag_r"], d["g_r"], d["r_i"]) if flux is None else flux
    return _Table("sersic", image, x=d["x"], y=d["y"], n=d["n"], r_eff=d["r_eff"], q=d["q"], phi=d["phi"],
                  b=sersic_b(d["n"]), norm=sersic_unit_flux(d["n"], d["r_eff"]), flux=flux)


def _draw_mass(rng, defl: dict) -> dict:
    """SIE aligned with the deflector light (position angle scatter 10 degrees) + external shear."""
    k = len(defl["x"])
    phi_mass = defl["phi"] + rng.normal(0.0, math.radians(10.0), k)
    gamma = rng.uniform(0.0, 0.08, k)
    gphi = rng.uniform(0.0, math.pi, k)
    return {"x": defl["x"], "y": defl["y"], "q_mass": defl["q"].copy(), "phi_mass": phi_mass, "gamma": gamma,
            "gamma1": gamma * np.cos(2 * gphi), "gamma2": gamma * np.sin(2 * gphi)}


_MAX_CLUMPS = 4


def _draw_sources(rng, k: int, lens_x: np.ndarray, lens_y: np.ndarray, config: LensSimConfig) -> dict:
    """theta_E and the source (smooth Sersic + 0-4 clumps) of ``k`` lenses."""
    theta_e = rng.uniform(*config.theta_e_range, k)
    rad = 0.5 * theta_e * np.sqrt(rng.uniform(0, 1, k))
    ang = rng.uniform(0, 2 * math.pi, k)
    centre = np.stack([lens_x + rad * np.cos(ang), lens_y + rad * np.sin(ang)], axis=1)
    smooth = _draw_sersic(rng, k, centre, n=(0.5, 1.5), r_eff=(0.1, 0.4), q=(0.4, 1.0),
                          mag=config.source_mag_r_range, g_r=(0.0, 0.5), r_i=(-0.1, 0.3), log_r_eff=False)
    has = rng.random(k) < 0.5
    n_clumps = np.where(has, rng.integers(1, _MAX_CLUMPS + 1, k), 0)
    frac = np.where(has, rng.uniform(0.1, 0.4, k), 0.0)
    cx = centre[:, :1] + rng.normal(0, 1, (k, _MAX_CLUMPS)) * smooth["r_eff"][:, None]
    cy = centre[:, 1:] + rng.normal(0, 1, (k, _MAX_CLUMPS)) * smooth["r_eff"][:, None]
    csig = rng.uniform(0.05, 0.1, (k, _MAX_CLUMPS))
    cgr = rng.uniform(-0.1, 0.2, (k, _MAX_CLUMPS))
    cri = rng.uniform(-0.1, 0.2, (k, _MAX_CLUMPS))
    return {"theta_e": theta_e, "smooth": smooth, "n_clumps": n_clumps, "clump_frac": frac, "clump_x": cx,
            "clump_y": cy, "clump_sigma": csig, "clump_g_r": cgr, "clump_r_i": cri}


def _source_tables(src: dict, image: np.ndarray) -> tuple[list[_Table], np.ndarray]:
    """Tables of the sources of lenses ``image`` (one row per lens in ``src``) and their unlensed
    r flux (e-/s)."""
    sm = src["smooth"]
    total_r = band_observation("r").magnitude_to_cps(sm["mag_r"])
    frac = src["clump_frac"]
    smooth_flux = _fluxes(sm["mag_r"], sm["g_r"], sm["r_i"]) * (1 - frac)[:, None]
    tables = [_sersic_table(image, sm, flux=smooth_flux)]
    n_clumps = src["n_clumps"]
    rows, slots = np.nonzero(np.arange(_MAX_CLUMPS)[None, :] < n_clumps[:, None])
    if rows.size:
        per_clump_r = total_r[rows] * frac[rows] / n_clumps[rows]
        cmag = -2.5 * np.log10(per_clump_r) + band_observation("r").zero_point
        flux = _fluxes(cmag, src["clump_g_r"][rows, slots], src["clump_r_i"][rows, slots])
        tables.append(_Table("gaussian", image[rows], x=src["clump_x"][rows, slots], y=src["clump_y"][rows, slots],
                             sigma=src["clump_sigma"][rows, slots], flux=flux))
    return tables, total_r


def _draw_neighbours(rng, image: np.ndarray) -> _Table:
    k = len(image)
    rad = rng.uniform(2.0, 4.5, k)
    ang = rng.uniform(0, 2 * math.pi, k)
    centre = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    d = _draw_sersic(rng, k, centre, n=(0.5, 4.0), r_eff=(0.2, 0.8), q=(0.4, 1.0), mag=(20.0, 24.0),
                     g_r=(0.2, 1.6), r_i=(0.1, 0.6))
    return _sersic_table(image, d)


def _mag(flux_r: np.ndarray) -> np.ndarray:
    return -2.5 * np.log10(flux_r) + band_observation("r").zero_point


def _draw_spirals(rng, image, centre, tables, defl_mag):
    k = len(image)
    mag = rng.uniform(17.5, 21.5, k)
    r_eff = _loguniform(rng, 0.8, 3.0, k)
    q = rng.uniform(0.3, 1.0, k)
    phi = rng.uniform(0, math.pi, k)
    bt = rng.uniform(0.05, 0.35, k)
    arm_frac = rng.uniform(0.3, 0.6, k)
    total = band_observation("r").magnitude_to_cps(mag)
    disk_gr, disk_ri = rng.uniform(0.5, 0.9, k), rng.uniform(0.2, 0.4, k)
    arm_gr, arm_ri = rng.uniform(0.1, 0.5, k), rng.uniform(0.0, 0.3, k)
    smooth = _fluxes(_mag(total * (1 - bt) * (1 - arm_frac)), disk_gr, disk_ri)
    arms = _fluxes(_mag(total * (1 - bt) * arm_frac), arm_gr, arm_ri)
    tables.append(_Table("spiral", image, x=centre[:, 0], y=centre[:, 1], q=q, phi=phi, r_eff=r_eff,
                         pitch=np.radians(rng.uniform(12, 30, k)), chirality=rng.choice([-1.0, 1.0], k),
                         arm_phase=rng.uniform(0, 2 * math.pi, k), flux=smooth, arm_flux=arms))
    bulge = {"x": centre[:, 0], "y": centre[:, 1], "n": rng.uniform(1.5, 4.0, k),
             "r_eff": np.maximum(r_eff * rng.uniform(0.15, 0.35, k), 0.2), "q": np.maximum(q, 0.7), "phi": phi,
             "mag_r": _mag(total * bt), "g_r": rng.uniform(1.0, 1.5, k), "r_i": rng.uniform(0.35, 0.55, k)}
    tables.append(_sersic_table(image, bulge))
    defl_mag[image] = mag


def _draw_mergers(rng, image, centre, tables, defl_mag):
    k = len(image)
    pair = dict(n=(1.0, 4.0), r_eff=(0.3, 1.2), q=(0.5, 1.0), mag=(17.5, 21.5), g_r=(0.6, 1.5), r_i=(0.25, 0.55))
    prim = _draw_sersic(rng, k, centre, **pair)
    sep = rng.uniform(1.0, 3.0, k)
    ang = rng.uniform(0, 2 * math.pi, k)
    c2 = centre + np.stack([sep * np.cos(ang), sep * np.sin(ang)], axis=1)
    sec = _draw_sersic(rng, k, c2, **pair)
    sec["mag_r"] = prim["mag_r"] + rng.uniform(0.0, 1.5, k)
    tables += [_sersic_table(image, prim), _sersic_table(image, sec)]
    defl_mag[image] = prim["mag_r"]
    pair_flux = band_observation("r").magnitude_to_cps(prim["mag_r"]) + \
        band_observation("r").magnitude_to_cps(sec["mag_r"])
    n_tails = rng.integers(1, 3, k)
    tail_frac = rng.uniform(0.05, 0.25, k)
    rows = np.repeat(np.arange(k), n_tails)
    m = rows.size
    anchor_second = rng.random(m) < 0.5
    ax = np.where(anchor_second, c2[rows, 0], centre[rows, 0])
    ay = np.where(anchor_second, c2[rows, 1], centre[rows, 1])
    radius = rng.uniform(1.5, 4.0, m)
    psi = rng.uniform(0, 2 * math.pi, m)
    span = np.radians(rng.uniform(60, 150, m))
    flux_r = pair_flux[rows] * tail_frac[rows] / n_tails[rows]
    tables.append(_Table("tail", image[rows], x=ax + radius * np.cos(psi), y=ay + radius * np.sin(psi),
                         q=np.ones(m), phi=np.zeros(m), radius=radius, theta0=psi + math.pi,
                         sign=rng.choice([-1.0, 1.0], m), span=span, fade=span * rng.uniform(0.4, 1.0, m),
                         sigma=rng.uniform(0.15, 0.4, m),
                         flux=_fluxes(_mag(flux_r), rng.uniform(0.2, 0.8, m), rng.uniform(0.1, 0.4, m))))


def _draw_rings(rng, image, centre, tables, defl_mag):
    k = len(image)
    core = _draw_sersic(rng, k, centre, n=(2.0, 4.0), r_eff=(0.4, 1.5), q=(0.6, 1.0), mag=(17.5, 21.0),
                        g_r=(1.2, 1.7), r_i=(0.35, 0.6))
    tables.append(_sersic_table(image, core))
    defl_mag[image] = core["mag_r"]
    off = 0.3 * np.sqrt(rng.uniform(0, 1, k))
    oang = rng.uniform(0, 2 * math.pi, k)
    rx, ry = centre[:, 0] + off * np.cos(oang), centre[:, 1] + off * np.sin(oang)
    radius = rng.uniform(1.0, 3.0, k)
    q = rng.uniform(0.7, 1.0, k)
    phi = rng.uniform(0, math.pi, k)
    sigma = rng.uniform(0.1, 0.3, k)
    ring_flux = band_observation("r").magnitude_to_cps(rng.uniform(20.5, 23.5, k))
    clump_frac = rng.uniform(0.2, 0.5, k)
    g_r, r_i = rng.uniform(0.0, 0.5, k), rng.uniform(-0.1, 0.3, k)
    tables.append(_Table("ring", image, x=rx, y=ry, q=q, phi=phi, radius=radius, sigma=sigma,
                         asym=rng.uniform(0, 0.6, k), asym_phase=rng.uniform(0, 2 * math.pi, k),
                         flux=_fluxes(_mag(ring_flux * (1 - clump_frac)), g_r, r_i)))
    n_cl = rng.integers(2, 7, k)
    rows = np.repeat(np.arange(k), n_cl)
    m = rows.size
    t = rng.uniform(0, 2 * math.pi, m)
    rr = radius[rows] + rng.normal(0, 1, m) * sigma[rows]
    u, v = rr * np.cos(t), rr * np.sin(t) * q[rows]
    c, s = np.cos(phi[rows]), np.sin(phi[rows])
    cl_flux = ring_flux[rows] * clump_frac[rows] / n_cl[rows]
    tables.append(_Table("gaussian", image[rows], x=rx[rows] + u * c - v * s, y=ry[rows] + u * s + v * c,
                         sigma=rng.uniform(0.05, 0.12, m),
                         flux=_fluxes(_mag(cl_flux), g_r[rows] + rng.uniform(-0.1, 0.1, m),
                                      r_i[rows] + rng.uniform(-0.1, 0.1, m))))


def _draw_edge_on(rng, image, centre, tables, defl_mag):
    k = len(image)
    mag = rng.uniform(17.5, 21.5, k)
    total = band_observation("r").magnitude_to_cps(mag)
    bt = rng.uniform(0.0, 0.3, k)
    r_eff = _loguniform(rng, 1.0, 3.0, k)
    q = rng.uniform(0.1, 0.25, k)
    bn = rng.uniform(1.0, 3.0, k)
    tau_r = rng.uniform(0.5, 2.0, k)
    width = rng.uniform(0.3, 0.6, k) * q * r_eff
    tables.append(_Table("edge_on", image, x=centre[:, 0], y=centre[:, 1], phi=rng.uniform(0, math.pi, k), q=q,
                         r_eff=r_eff, flux=_fluxes(_mag(total * (1 - bt)), rng.uniform(0.5, 0.9, k),
                                                   rng.uniform(0.2, 0.4, k)),
                         bulge_n=bn, bulge_b=sersic_b(bn), bulge_r_eff=rng.uniform(0.3, 0.8, k),
                         bulge_q=rng.uniform(0.5, 0.9, k),
                         bulge_flux=_fluxes(_mag(np.maximum(total * bt, 1e-30)), rng.uniform(1.0, 1.5, k),
                                            rng.uniform(0.35, 0.55, k)),
                         lane_width=width, lane_offset=rng.uniform(-0.3, 0.3, k) * width,
                         tau=tau_r[:, None] * np.asarray(_DUST_RATIO)[None, :]))
    defl_mag[image] = mag


def _sb_to_cps(sb_mag: np.ndarray, band_index: int) -> np.ndarray:
    """Surface brightness mag/arcsec^2 -> e-/s/arcsec^2."""
    return band_observation(BANDS[band_index]).magnitude_to_cps(sb_mag)


def _draw_artifacts(rng, image, centre, tables, defl_mag, kind_out, bands_out, half_width):
    k = len(image)
    host = rng.random(k) < 0.5
    d = _draw_sersic(rng, k, centre, n=(0.5, 4.0), r_eff=(0.2, 1.0), q=(0.4, 1.0), mag=(20.0, 23.0),
                     g_r=(0.2, 1.6), r_i=(0.1, 0.6))
    if host.any():
        tables.append(_sersic_table(image[host], {key: v[host] for key, v in d.items()}))
    defl_mag[image[host]] = d["mag_r"][host]
    streak = rng.random(k) < 0.6
    # streaks: one band
    band = rng.integers(0, 3, k)
    sx, sy = rng.uniform(-half_width, half_width, (2, k))
    angle = rng.uniform(0, math.pi, k)
    width = rng.uniform(0.2, 0.6, k)
    peak_sb = rng.uniform(19.5, 23.0, k)
    peak = np.stack([_sb_to_cps(peak_sb, j) for j in range(3)], axis=1) * (band[:, None] == np.arange(3)[None, :])
    st = np.flatnonzero(streak)
    if st.size:
        tables.append(_Table("streak", image[st], x=sx[st], y=sy[st], angle=angle[st], sigma=width[st],
                             peak=peak[st]))
    # ghosts: each band with probability 1/2, at least one
    present = rng.random((k, 3)) < 0.5
    forced = rng.integers(0, 3, k)
    present[np.arange(k), forced] |= ~present.any(axis=1)
    gsb = rng.uniform(22.5, 25.0, k)
    gpeak = np.stack([_sb_to_cps(gsb, j) for j in range(3)], axis=1) * present
    gx, gy = rng.uniform(-half_width - 4.0, half_width + 4.0, (2, k))
    radius = rng.uniform(3.0, 8.0, k)
    gsig = rng.uniform(0.8, 2.0, k)
    plateau = rng.uniform(0.0, 0.4, k)
    gh = np.flatnonzero(~streak)
    if gh.size:
        tables.append(_Table("ghost", image[gh], x=gx[gh], y=gy[gh], radius=radius[gh], sigma=gsig[gh],
                             plateau=plateau[gh], peak=gpeak[gh]))
    kind_out[image] = np.where(streak, ARTIFACT_STREAK, ARTIFACT_GHOST)
    bit = np.array([1, 2, 4])
    bands_out[image] = np.where(streak, bit[band], (present * bit[None, :]).sum(axis=1))


# =============================================================================== the block
def _empty_meta(n: int) -> dict[str, np.ndarray]:
    out = {}
    for k, dt in META_COLUMNS.items():
        out[k] = np.full(n, np.nan) if np.dtype(dt).kind == "f" else np.zeros(n, dtype=dt)
    return out


def simulate_block(block_index: int, config: LensSimConfig, seed: int, noiseless: bool = False) -> CutoutSet:
    """Block ``block_index`` of the seeded sequence: exactly ``config.block_size`` images, drawn
    from ``numpy.random.default_rng([seed, block_index])`` alone.

    Parameters
    ----------
    block_index : block number (>= 0); its images are ``block_index * block_size ...``.
    config : simulator settings.
    seed : non-negative integer seed of the sequence.
    noiseless : return the noiseless images (the same draws; ``ivar`` still that of the noisy ones).

    Returns
    -------
    CutoutSet with data/ivar (block_size, 3, n_pix, n_pix) float32 in e-/s and the meta columns
    of the module docstring.
    """
    block_index = _number("block_index", block_index, int, 0)
    seed = _number("seed", seed, int, 0)
    rng = np.random.default_rng([seed, block_index])
    bsz, grid = config.block_size, _grid_for(config)
    half_width = 0.5 * config.n_pix * config.pixel_scale
    meta = _empty_meta(bsz)
    meta["object_id"] = block_index * bsz + np.arange(bsz, dtype=np.int64)

    # ---- classes and observing conditions (independent of each other)
    cls = rng.choice(len(CLASS_NAMES), size=bsz, p=config.class_probabilities)
    fwhm_r = rng.uniform(*config.fwhm_r_range, bsz)
    fwhm = fwhm_r[:, None] * np.asarray(FWHM_SCALE)[None, :]
    n_exp = rng.integers(config.n_exposures_range[0], config.n_exposures_range[1] + 1, bsz)
    has_nb = rng.random(bsz) < config.neighbour_fraction
    centre = rng.normal(0.0, _CENTRE_SCATTER, (bsz, 2))

    # ---- light of everything but the lensed sources
    tables: list[_Table] = []
    defl_mag = meta["deflector_mag_r"]
    lens_img = np.flatnonzero(cls == 0)
    ell = np.flatnonzero(cls == 1)
    if ell.size:
        d = _draw_early_type(rng, ell.size, centre[ell])
        tables.append(_sersic_table(ell, d))
        defl_mag[ell] = d["mag_r"]
    for code, draw in ((2, _draw_spirals), (3, _draw_mergers), (4, _draw_rings), (5, _draw_edge_on)):
        idx = np.flatnonzero(cls == code)
        if idx.size:
            draw(rng, idx, centre[idx], tables, defl_mag)
    art = np.flatnonzero(cls == 6)
    if art.size:
        _draw_artifacts(rng, art, centre[art], tables, defl_mag, meta["artifact_kind"], meta["artifact_bands"],
                        half_width)
    nb = np.flatnonzero(has_nb)
    if nb.size:
        tables.append(_draw_neighbours(rng, nb))
    # lenses: deflector light (the elliptical prior), mass, theta_E and source
    n_lens = lens_img.size
    defl = _draw_early_type(rng, n_lens, centre[lens_img])
    mass = _draw_mass(rng, defl)
    src = _draw_sources(rng, n_lens, defl["x"], defl["y"], config)
    nb_table = tables[-1] if nb.size else None

    model = np.empty((bsz, 3, config.n_pix, config.n_pix), dtype=np.float32)
    all_tables = tables + [_sersic_table(lens_img, defl)]
    for s in range(0, bsz, _CHUNK):
        imgs = np.arange(s, min(s + _CHUNK, bsz))
        model[imgs] = _observe(_render(all_tables, imgs, grid), fwhm[imgs], grid, config.psf_model,
                               config.moffat_beta)

    # ---- lensed sources
    arc = np.zeros((n_lens, 3, config.n_pix, config.n_pix), dtype=np.float32)
    magnification = np.full(n_lens, np.nan)

    def render_sources(rows: np.ndarray) -> None:
        for s in range(0, rows.size, _CHUNK):
            part = rows[s:s + _CHUNK]
            sp, magnification[part] = _render_lensed_sources(mass, src, part, grid)
            arc[part] = _observe(sp, fwhm[lens_img[part]], grid, config.psf_model, config.moffat_beta)

    def arc_snr(rows: np.ndarray) -> np.ndarray:
        img = lens_img[rows]
        total = model[img] + arc[rows]
        var = noise_variance(total, n_exp[img], config.pixel_scale)
        return np.sqrt((arc[rows].astype(np.float64) ** 2 / var).sum(axis=(1, 2, 3)))

    snr = np.zeros(n_lens)
    if n_lens:
        render_sources(np.arange(n_lens))
        snr = arc_snr(np.arange(n_lens))
    if config.min_arc_snr > 0 and n_lens:
        redraws = np.zeros(n_lens, dtype=int)
        new_lenses = np.zeros(n_lens, dtype=int)
        fail = np.flatnonzero(snr < config.min_arc_snr)
        while fail.size:
            redraws[fail] += 1
            renew = fail[redraws[fail] > config.max_redraws]
            if renew.size:
                new_lenses[renew] += 1
                over = renew[new_lenses[renew] > config.max_new_lenses]
                if over.size:
                    i = over[0]
                    raise ValueError(
                        f"min_arc_snr = {config.min_arc_snr} not reached for image {meta['object_id'][lens_img[i]]} "
                        f"(r FWHM {fwhm_r[lens_img[i]]:.2f}\", {n_exp[lens_img[i]]} exposure(s)) after "
                        f"{config.max_new_lenses} new deflectors x {config.max_redraws} redraws (best S/N of the "
                        f"last try {snr[i]:.2f}); lower min_arc_snr or brighten source_mag_r_range")
                redraws[renew] = 0
                nd = _draw_early_type(rng, renew.size, centre[lens_img[renew]])
                nm = _draw_mass(rng, nd)
                for key in defl:
                    defl[key][renew] = nd[key]
                for key in mass:
                    mass[key][renew] = nm[key]
                imgs = lens_img[renew]
                redo = [t for t in ([nb_table] if nb_table is not None else [])]
                redo.append(_sersic_table(imgs, {key: v[renew] for key, v in defl.items()}))
                for s in range(0, imgs.size, _CHUNK):
                    part = imgs[s:s + _CHUNK]
                    model[part] = _observe(_render(redo, part, grid), fwhm[part], grid, config.psf_model,
                                           config.moffat_beta)
            ns = _draw_sources(rng, fail.size, defl["x"][fail], defl["y"][fail], config)
            src["theta_e"][fail] = ns["theta_e"]
            for key in src["smooth"]:
                src["smooth"][key][fail] = ns["smooth"][key]
            for key in src:
                if key not in ("smooth", "theta_e"):
                    src[key][fail] = ns[key]
            render_sources(fail)
            snr[fail] = arc_snr(fail)
            fail = fail[snr[fail] < config.min_arc_snr]
    if n_lens:
        model[lens_img] += arc
        defl_mag[lens_img] = defl["mag_r"]
        meta["theta_e"][lens_img] = src["theta_e"]
        meta["source_mag_r"][lens_img] = src["smooth"]["mag_r"]
        meta["magnification"][lens_img] = magnification
        meta["arc_snr"][lens_img] = snr
        meta["q_deflector"][lens_img] = mass["q_mass"]
        meta["shear_gamma"][lens_img] = mass["gamma"]

    # ---- noise
    var = noise_variance(model, n_exp, config.pixel_scale)
    ivar = (1.0 / var).astype(np.float32)
    noise = rng.standard_normal(model.shape, dtype=np.float32)
    if noiseless:
        data = model
    else:
        noise *= np.sqrt(var).astype(np.float32)
        data = model + noise

    meta["label"] = (cls == 0).astype(np.int8)
    meta["object_class"] = cls.astype(np.int8)
    for j, b in enumerate(BANDS):
        meta[f"psf_fwhm_{b}"] = fwhm[:, j].copy()
    meta["n_exposures"] = n_exp.astype(np.int16)
    meta["has_neighbour"] = has_nb.astype(np.int8)
    meta["depth_r"] = depth_r(fwhm_r, n_exp, config)
    return CutoutSet(data, ivar, meta, BANDS, config.pixel_scale, zero_points())


def depth_r(fwhm_r: np.ndarray, n_exposures: np.ndarray, config: LensSimConfig) -> np.ndarray:
    """5-sigma point-source limiting r magnitude: zp - 2.5 log10(5 sigma_bkg sqrt(NEA / pixel_area))
    (background-limited optimal PSF photometry; NEA from :func:`psf_noise_equivalent_area`)."""
    sigma_pix = np.sqrt(background_variance(n_exposures, "r", config.pixel_scale))
    nea_pix = psf_noise_equivalent_area(fwhm_r, config.psf_model, config.moffat_beta) / config.pixel_scale ** 2
    return band_observation("r").zero_point - 2.5 * np.log10(5.0 * sigma_pix * np.sqrt(nea_pix))


def simulate_cutouts(n: int, config: LensSimConfig, seed: int, start: int = 0, progress: bool = False,
                     noiseless: bool = False) -> CutoutSet:
    """Images ``start .. start + n - 1`` of the seeded sequence (image ``i`` is always the same:
    block ``i // block_size`` of :func:`simulate_block`).

    Parameters
    ----------
    n : number of images (>= 0).
    config : simulator settings.
    seed : non-negative integer seed.
    start : index of the first image.
    progress : show a tqdm bar over blocks.
    noiseless : noiseless images (see :func:`simulate_block`).
    """
    n = _number("n", n, int, 0)
    start = _number("start", start, int, 0)
    bs = config.block_size
    if n == 0:
        shape = (0, len(BANDS), config.n_pix, config.n_pix)
        return CutoutSet(np.zeros(shape, np.float32), np.zeros(shape, np.float32),
                         {k: np.zeros(0, dtype=dt) for k, dt in META_COLUMNS.items()}, BANDS, config.pixel_scale,
                         zero_points())
    first, last = start // bs, (start + n - 1) // bs
    blocks = range(first, last + 1)
    if progress:
        from tqdm.auto import tqdm

        blocks = tqdm(blocks, desc="simulating blocks", unit="block")
    parts = []
    for b in blocks:
        block = simulate_block(b, config, seed, noiseless=noiseless)
        lo = max(start - b * bs, 0)
        hi = min(start + n - b * bs, bs)
        parts.append(block.take(slice(lo, hi)) if (lo, hi) != (0, bs) else block)
    return CutoutSet.concatenate(parts)


__all__ = ["BANDS", "CLASS_NAMES", "DEFAULT_NEGATIVE_MIX", "META_COLUMNS", "NEGATIVE_CLASSES", "BandObservation",
           "CutoutSet", "LensSimConfig", "background_variance", "band_observation", "depth_r", "moffat_alpha",
           "noise_variance", "psf_noise_equivalent_area", "psf_transfer", "sersic_b", "sersic_unit_flux",
           "sie_shear_deflection", "simulate_block", "simulate_cutouts", "zero_points"]
