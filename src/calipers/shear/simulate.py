"""Galaxy postage stamps for weak-lensing shear with GalSim (issue 21).

Per galaxy, in seeded blocks (so any split of the galaxies over processes gives the same stamps):

- a Sersic profile (index in ``sersic_n_range``, quantised to ``sersic_n_step`` because GalSim builds
  one profile table per index; half-light radius in ``hlr_range`` arcsec, unit flux);
- an intrinsic ellipticity ``e`` (reduced-shear type, ``|e| = (a - b) / (a + b)``) with
  ``|e| ~ |N(0, e_sigma)|`` (redrawn above ``e_max``) at a uniform random angle;
- a shear ``g`` uniform in ``[-g_max, g_max]^2`` (training sets) or constant (ring sets);
- the sheared ellipticity ``eps = (e + g) / (1 + conj(g) e)`` (what ``obj.shear(e).shear(g)`` gives
  in GalSim, checked in the tests): the per-galaxy quantity an estimator regresses, whose mean over
  an isotropic population is ``g`` (Seitz & Schneider 1997);
- convolution with a Moffat PSF (``psf_beta``; FWHM one of ``psf_fwhm``, drawn uniformly when
  several are given), drawn with the pixel response on an odd ``stamp_size`` grid of
  ``pixel_scale`` arcsec, the galaxy at the centre of the central pixel (so that rotations by 90
  degrees about that pixel are exact);
- white Gaussian pixel noise whose sigma gives the drawn matched-filter S/N,
  ``S/N = sqrt(sum I^2) / sigma`` (log-uniform in ``snr_range``) of the galaxy's noise-free stamp
  **before lensing** (intrinsic shape, no shear). The sky's noise does not know about the lensing
  shear, so neither does sigma here: a sigma set from the sheared stamp would change with ``g``
  (``sum I^2`` depends on the sheared ellipticity), a dependence of the noise on the shear that no
  estimator sees and metacalibration cannot calibrate (it biased the calibrated ``m`` by about
  +0.01 at S/N 10-15, measured). The four rows of a ring unit share one sigma.

**Ring sets** (:func:`simulate_ring`) measure the multiplicative and additive bias: each unit is one
galaxy drawn twice, with its intrinsic shape as drawn and rotated by 90 degrees (``e -> -e``), so
that shape noise cancels in the pair, under a constant shear; with ``noise_pairs`` each of the two is
also drawn under ``-g`` with the same noise field (Pujol et al. 2019), which cancels most of the
pixel-noise scatter of the bias estimate. Rows ``4u .. 4u + 3`` of unit ``u`` are (e, +g), (e, -g),
(-e, +g), (-e, -g); without noise pairs, ``2u, 2u + 1`` are (e, g), (-e, g).

What it simplifies: isolated galaxies (no blending, no detection or selection), one band, a round
Moffat PSF known exactly, constant shear across a stamp, Gaussian white noise without the Poisson
term of the galaxy, no pixel-level detector effects.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger(__name__)

PARAM_COLUMNS = ("g1", "g2", "e1", "e2", "eps1", "eps2", "sersic_n", "hlr", "snr", "psf_fwhm", "noise_sigma")


@dataclass
class ShearSimConfig:
    """The simulated population and observation. Ranges are ``[low, high]``."""

    stamp_size: int = 33                 # pixels on a side, odd
    pixel_scale: float = 0.2             # arcsec
    sersic_n_range: tuple = (0.8, 4.0)
    sersic_n_step: float = 0.05
    hlr_range: tuple = (0.35, 0.8)       # arcsec
    e_sigma: float = 0.25
    e_max: float = 0.9
    g_max: float = 0.1
    psf_fwhm: tuple = (0.7,)             # arcsec; several values: drawn uniformly among them
    psf_beta: float = 3.5
    snr_range: tuple = (10.0, 100.0)     # log-uniform
    block_size: int = 256

    def __post_init__(self):
        self.sersic_n_range = tuple(float(v) for v in self.sersic_n_range)
        self.hlr_range = tuple(float(v) for v in self.hlr_range)
        self.snr_range = tuple(float(v) for v in self.snr_range)
        fw = self.psf_fwhm
        self.psf_fwhm = (float(fw),) if np.isscalar(fw) else tuple(float(v) for v in fw)
        if self.stamp_size < 5 or self.stamp_size % 2 == 0:
            raise ValueError(f"ShearSimConfig.stamp_size must be odd and >= 5 (90-degree rotations about the "
                             f"central pixel are exact only then), got {self.stamp_size}")
        for name in ("sersic_n_range", "hlr_range", "snr_range"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi):
                raise ValueError(f"ShearSimConfig.{name} must be 0 < low <= high, got {(lo, hi)}")
        if not (0.3 <= self.sersic_n_range[0] and self.sersic_n_range[1] <= 6.2):
            raise ValueError(f"ShearSimConfig.sersic_n_range must lie in GalSim's 0.3..6.2, got {self.sersic_n_range}")
        if not (0 < self.e_max < 1) or self.e_sigma < 0 or not (0 <= self.g_max < 1):
            raise ValueError("ShearSimConfig: need 0 < e_max < 1, e_sigma >= 0 and 0 <= g_max < 1")
        if not self.psf_fwhm or min(self.psf_fwhm) <= 0 or self.psf_beta <= 1:
            raise ValueError(f"ShearSimConfig: psf_fwhm must be positive values and psf_beta > 1, got "
                             f"{self.psf_fwhm}, {self.psf_beta}")
        if self.pixel_scale <= 0 or self.block_size < 1 or self.sersic_n_step <= 0:
            raise ValueError("ShearSimConfig: pixel_scale, block_size and sersic_n_step must be positive")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, values: dict) -> ShearSimConfig:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"ShearSimConfig: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


@dataclass
class ShearSet:
    """Stamps ``images[n, N, N]`` (float32, GalSim's orientation: ``images[:, y, x]`` with y up), the
    PSF image of each row's FWHM in ``psf_images[n_psf, N, N]`` with ``psf_index[n]``, and the
    per-galaxy parameters (:data:`PARAM_COLUMNS`, plus ``pair_id``, ``ring`` and ``shear_sign`` for
    ring sets)."""

    images: np.ndarray
    psf_images: np.ndarray
    psf_index: np.ndarray
    params: dict
    config: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])


def compose_shear(e1, e2, g1, g2) -> tuple[np.ndarray, np.ndarray]:
    """The ellipticity of a galaxy of intrinsic ellipticity ``e`` sheared by ``g`` (both of reduced
    shear type): ``(e + g) / (1 + conj(g) e)``."""
    e = np.asarray(e1) + 1j * np.asarray(e2)
    g = np.asarray(g1) + 1j * np.asarray(g2)
    eps = (e + g) / (1.0 + np.conj(g) * e)
    return eps.real, eps.imag


def draw_galaxies(config: ShearSimConfig, n: int, rng: np.random.Generator) -> dict:
    """The parameters of ``n`` galaxies (no shear): Sersic index, size, intrinsic shape, S/N, PSF."""
    c = config
    lo, hi = c.sersic_n_range
    n_s = lo + (hi - lo) * rng.random(n)
    n_s = np.clip(np.round(n_s / c.sersic_n_step) * c.sersic_n_step, lo, hi)
    hlr = c.hlr_range[0] + (c.hlr_range[1] - c.hlr_range[0]) * rng.random(n)
    mod = np.abs(rng.normal(0.0, c.e_sigma, n))
    bad = mod >= c.e_max
    while bad.any():
        mod[bad] = np.abs(rng.normal(0.0, c.e_sigma, int(bad.sum())))
        bad = mod >= c.e_max
    angle = np.pi * rng.random(n)  # the position angle beta; the ellipticity's phase is 2 beta
    e = mod * np.exp(2j * angle)
    log_snr = np.log(c.snr_range[0]) + (np.log(c.snr_range[1]) - np.log(c.snr_range[0])) * rng.random(n)
    psf_index = rng.integers(0, len(c.psf_fwhm), n)
    return {"sersic_n": n_s, "hlr": hlr, "e1": e.real, "e2": e.imag, "snr": np.exp(log_snr),
            "psf_index": psf_index, "psf_fwhm": np.asarray(c.psf_fwhm)[psf_index]}


def psf_image(config: ShearSimConfig, fwhm: float, dilation: float = 1.0) -> np.ndarray:
    """The Moffat PSF of ``fwhm`` (times ``dilation``) with the pixel response, unit sum, float64."""
    import galsim

    psf = galsim.Moffat(beta=config.psf_beta, fwhm=fwhm).dilate(dilation)
    im = psf.drawImage(nx=config.stamp_size, ny=config.stamp_size, scale=config.pixel_scale)
    return im.array.astype(np.float64) / im.array.sum()


def render(config: ShearSimConfig, sersic_n: float, hlr: float, e1: float, e2: float, g1: float, g2: float,
           fwhm: float, rotate_deg: float = 0.0) -> np.ndarray:
    """The noise-free stamp (float64, unit flux before the stamp's edge) of one galaxy, optionally
    rotated by ``rotate_deg`` counter-clockwise after shearing (for the equivariance tests)."""
    import galsim

    gal = galsim.Sersic(n=float(sersic_n), half_light_radius=float(hlr), flux=1.0)
    gal = gal.shear(g1=float(e1), g2=float(e2)).shear(g1=float(g1), g2=float(g2))
    if rotate_deg:
        gal = gal.rotate(float(rotate_deg) * galsim.degrees)
    obj = galsim.Convolve(gal, galsim.Moffat(beta=config.psf_beta, fwhm=float(fwhm)))
    return obj.drawImage(nx=config.stamp_size, ny=config.stamp_size, scale=config.pixel_scale).array.astype(np.float64)


def _noise_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream), int(index)])


def unlensed_noise_sigma(config: ShearSimConfig, sersic_n: float, hlr: float, e1: float, e2: float, fwhm: float,
                        snr: float) -> float:
    """The pixel-noise sigma that gives the galaxy before lensing (intrinsic shape, no shear) the
    matched-filter ``snr``: ``sqrt(sum I^2) / snr`` of its noise-free stamp."""
    clean = render(config, sersic_n, hlr, e1, e2, 0.0, 0.0, fwhm)
    return float(np.sqrt(np.sum(clean ** 2)) / snr)


def _render_rows(config: ShearSimConfig, p: dict, rows, noise_keys, seed: int, stream: int,
                 sigma=None) -> tuple:
    """Noisy stamps of ``rows`` of ``p``; the noise sigma of each row from :func:`unlensed_noise_sigma`
    unless given (``sigma``, one per row)."""
    n_pix = config.stamp_size
    images = np.empty((len(rows), n_pix, n_pix), np.float32)
    sig = np.empty(len(rows))
    for out, i in enumerate(rows):
        clean = render(config, p["sersic_n"][i], p["hlr"][i], p["e1"][i], p["e2"][i], p["g1"][i], p["g2"][i],
                       p["psf_fwhm"][i])
        sig[out] = (unlensed_noise_sigma(config, p["sersic_n"][i], p["hlr"][i], p["e1"][i], p["e2"][i],
                                         p["psf_fwhm"][i], p["snr"][i]) if sigma is None else sigma[out])
        noise = _noise_rng(seed, stream, noise_keys[i]).normal(size=clean.shape)
        images[out] = (clean + sig[out] * noise).astype(np.float32)
    return images, sig


def _blocks(start: int, n: int, block_size: int):
    """``(block, lo, hi)``: the rows ``lo .. hi`` of each block that ``start .. start + n`` touches."""
    if n <= 0:
        return []
    first, last = start // block_size, (start + n - 1) // block_size
    return [(b, max(start - b * block_size, 0), min(start + n - b * block_size, block_size))
            for b in range(first, last + 1)]


def psf_stack(config: ShearSimConfig) -> np.ndarray:
    """The PSF image of each of ``config.psf_fwhm`` ``[n_psf, N, N]`` (float32, unit sums)."""
    return np.stack([psf_image(config, f) for f in config.psf_fwhm]).astype(np.float32)


def simulate_shear(config: ShearSimConfig, n: int, seed: int, start: int = 0, progress: bool = False) -> ShearSet:
    """Galaxies ``start .. start + n`` of the training stream of ``seed``: shears uniform in
    ``[-g_max, g_max]^2``. Block ``b`` (``block_size`` galaxies) draws its parameters from
    ``(seed, b)``; galaxy ``i``'s noise from ``(seed, 0, i)``."""
    from tqdm.auto import tqdm

    if n < 0 or start < 0:
        raise ValueError(f"simulate_shear: n and start must be >= 0, got {n}, {start}")
    bs = config.block_size
    parts, params = [], []
    bar = tqdm(total=n, desc="shear stamps", disable=not progress, leave=False)
    for b, lo, hi in _blocks(start, n, bs):
        rng = np.random.default_rng([int(seed), int(b)])
        p = draw_galaxies(config, bs, rng)
        g = config.g_max * (2.0 * rng.random((bs, 2)) - 1.0)
        p["g1"], p["g2"] = g[:, 0], g[:, 1]
        p["eps1"], p["eps2"] = compose_shear(p["e1"], p["e2"], p["g1"], p["g2"])
        keys = b * bs + np.arange(bs)
        images, sig = _render_rows(config, p, range(lo, hi), keys, seed, 0)
        parts.append(images)
        params.append({k: np.asarray(v)[lo:hi] for k, v in p.items()} | {"noise_sigma": sig,
                                                                         "galaxy_id": keys[lo:hi]})
        bar.update(hi - lo)
    bar.close()
    return _assemble(config, parts, params)


def simulate_ring(config: ShearSimConfig, n_pairs: int, shears, seed: int, noise_pairs: bool = True,
                  start: int = 0, progress: bool = False) -> ShearSet:
    """Ring units ``start .. start + n_pairs`` of ``seed``: unit ``u`` has the constant shear
    ``shears[u % len(shears)]`` and its galaxy drawn with ``e`` and ``-e`` (and, with
    ``noise_pairs``, each under ``+g`` and ``-g`` with one noise field): 4 rows per unit, else 2."""
    from tqdm.auto import tqdm

    shears = np.asarray(shears, dtype=float).reshape(-1, 2)
    if not len(shears) or np.any(np.hypot(shears[:, 0], shears[:, 1]) >= 1):
        raise ValueError(f"simulate_ring: need at least one shear with |g| < 1, got {shears.tolist()}")
    if n_pairs < 0 or start < 0:
        raise ValueError(f"simulate_ring: n_pairs and start must be >= 0, got {n_pairs}, {start}")
    per = 4 if noise_pairs else 2
    bs = config.block_size
    parts, params = [], []
    bar = tqdm(total=n_pairs, desc="ring pairs", disable=not progress, leave=False)
    for b, lo, hi in _blocks(start, n_pairs, bs):
        rng = np.random.default_rng([int(seed), int(b)])
        base = draw_galaxies(config, bs, rng)
        units = b * bs + np.arange(lo, hi)
        g = shears[units % len(shears)]
        rows = []
        for ring in (0, 1):
            for sign in ((1, -1) if noise_pairs else (1,)):
                rows.append((ring, sign))
        p = {k: np.repeat(np.asarray(v)[lo:hi], per) for k, v in base.items()}
        ring = np.tile([r for r, _ in rows], hi - lo)
        sign = np.tile([s for _, s in rows], hi - lo)
        flip = 1.0 - 2.0 * ring
        p["e1"], p["e2"] = p["e1"] * flip, p["e2"] * flip
        p["g1"], p["g2"] = np.repeat(g[:, 0], per) * sign, np.repeat(g[:, 1], per) * sign
        p["eps1"], p["eps2"] = compose_shear(p["e1"], p["e2"], p["g1"], p["g2"])
        pair_id = np.repeat(units, per)
        # one noise field per (unit, ring): the +g and -g renders share it
        keys = pair_id * 2 + ring
        # one sigma per unit: its galaxy before lensing (the -e twin is the same stamp turned by 90 degrees)
        unit_sigma = [unlensed_noise_sigma(config, base["sersic_n"][j], base["hlr"][j], base["e1"][j], base["e2"][j],
                                           base["psf_fwhm"][j], base["snr"][j]) for j in range(lo, hi)]
        images, sig = _render_rows(config, p, range(len(pair_id)), keys, seed, 1, sigma=np.repeat(unit_sigma, per))
        parts.append(images)
        params.append(p | {"noise_sigma": sig, "pair_id": pair_id, "ring": ring, "shear_sign": sign,
                           "galaxy_id": pair_id * per + np.tile(np.arange(per), hi - lo)})
        bar.update(hi - lo)
    bar.close()
    return _assemble(config, parts, params)


def _assemble(config: ShearSimConfig, parts: list, params: list) -> ShearSet:
    n_pix = config.stamp_size
    images = np.concatenate(parts) if parts else np.zeros((0, n_pix, n_pix), np.float32)
    if params:
        p = {k: np.concatenate([q[k] for q in params]) for k in params[0]}
    else:
        p = {k: np.zeros(0) for k in PARAM_COLUMNS} | {"psf_index": np.zeros(0, int), "galaxy_id": np.zeros(0, int)}
    psf_index = np.asarray(p.pop("psf_index"), dtype=np.int64)
    return ShearSet(images, psf_stack(config), psf_index, p, config.to_dict())
