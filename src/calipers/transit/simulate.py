"""An Ariel-like simulator of exoplanet transits, from planet to light curves (issue 20).

Per planet, in seeded blocks (so any split of the planets over processes gives the same data):

1. **Atmosphere** (isothermal, H2/He background): scale height ``H = k T / (mu m_u g)``; the opacity
   per molecule is the sum over the background gas of Rayleigh scattering by H2 (``8.49e-33 m^2
   (1 um / lambda)^4``, times a haze enhancement factor) and the band cross-sections of H2O, CH4, CO2
   and CO times their volume mixing ratios (:data:`BANDS`). The altitude where the slant optical
   depth reaches ``tau_eq = 0.56`` (Lecavelier des Etangs et al. 2008; de Wit & Seager 2013) is
   ``z(lambda) = H ln(sigma(lambda) n_ref sqrt(2 pi R_p H) / tau_eq)``, with ``n_ref = P_ref / k T``
   at the reference pressure ``P_ref`` where the radius is ``R_p``; a grey cloud deck at pressure
   ``P_c`` hides everything below ``z_c = H ln(P_ref / P_c)``. The transit depth is
   ``((R_p + max(z, z_c)) / R_s)^2``, averaged over each wavelength bin (``oversample`` points).
2. **Light curves** per bin with **batman** (Kreidberg 2015): circular orbit, period, impact
   parameter, ``a/R_s`` from Kepler's third law and the stellar density, quadratic limb darkening
   ``u_k(lambda) = u_k,ref (2 um / lambda)^0.5`` (weaker towards the infrared), times spanning three
   transit durations around mid-transit; and an FGS-like white-light channel at 0.7 um that sees the
   same transit (its depth from the same atmosphere).
3. **Noise**, the benchmark's difficulty (keep these levels): white noise per point
   ``s0 sqrt(lambda / 2 um)`` with ``s0`` log-uniform in 3e-4..3e-3 (the white channel ``s0 / 5``);
   a common-mode AR(1) jitter (rho 0.9, stationary amplitude ``0.7 s0``) coupled into every bin with
   a factor ``1 + 0.3 N(0, 1)`` per bin (into the white channel with 1); per-bin linear and
   quadratic drifts in time (``N(0, s0)`` each over the visit, the time scaled to [-1, 1]).

What it simplifies, on purpose and documented: no detector-level frames (no pixels, no dark, flat,
non-linearity or read noise: the light curves are what a calibrated extraction would give); no
stellar activity or spots; isothermal, well-mixed atmospheres without chemistry; band-model
cross-sections (a few Gaussian bands per molecule at the right wavelengths and plausible relative
strengths, not line lists, no pressure or temperature dependence); no collision-induced
absorption; circular orbits; Gaussian white noise. The cross-section scale matters only through
``ln`` (a factor 10 in every band shifts the spectrum by ``H ln 10``), so the spectra's shapes and
amplitudes in scale heights, which carry the information, are realistic.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

log = logging.getLogger(__name__)

K_B = 1.380649e-23  # J / K
M_U = 1.66053906660e-27  # kg
G_NEWTON = 6.67430e-11  # m^3 kg^-1 s^-2
R_SUN = 6.957e8  # m
RHO_SUN = 1408.0  # kg m^-3, mean solar density
DAY = 86400.0  # s
TAU_EQ = 0.56  # slant optical depth of the effective transit radius
RAYLEIGH_H2 = 8.49e-33  # m^2 at 1 um (H2, lambda^-4)
H2_FRACTION = 0.85  # of the background gas, for Rayleigh scattering
WHITE_WAVELENGTH = 0.7  # um, the FGS-like white-light channel
MOLECULES = ("H2O", "CH4", "CO2", "CO")
# band model: (centre um, Gaussian width um, peak cross-section m^2) per band, and a floor (line
# wings and weak bands) relative to the strongest band of the molecule
BANDS: dict[str, list[tuple[float, float, float]]] = {
    "H2O": [(1.87, 0.08, 2e-25), (2.70, 0.12, 6e-25), (3.20, 0.25, 2e-27)],
    "CH4": [(2.32, 0.07, 1e-25), (3.31, 0.09, 8e-25)],
    "CO2": [(2.01, 0.03, 3e-26), (2.69, 0.04, 1.5e-25), (4.30, 0.08, 2e-23)],
    "CO": [(2.35, 0.05, 1e-26), (4.65, 0.10, 4e-25)],
}
BAND_FLOOR = 1e-3

__all__ = ["BANDS", "MOLECULES", "TransitSet", "TransitSimConfig", "airs_ch0_bins", "band_cross_sections",
           "draw_planets", "simulate_transits", "transit_depths", "transmission_spectrum"]


@dataclass
class TransitSimConfig:
    """What :func:`simulate_transits` draws and how it observes it.

    Parameters
    ----------
    n_bins, wavelength_min, wavelength_max : the spectral bins (um), equal in wavelength; the
        default is the challenge's AIRS-CH0 layout, 283 bins over 1.95-3.90 um
    oversample : points per bin averaged into the bin's depth
    n_times : points per light curve, spanning ``window_durations`` transit durations
    s0_range : per-point white noise at 2 um, log-uniform (fraction of the stellar flux)
    white_noise_factor : the white-light channel's noise over ``s0``
    jitter_rho, jitter_amplitude, jitter_coupling_scatter : the AR(1) common mode (amplitude in
        units of ``s0``) and the scatter of its per-bin coupling factor ``1 + scatter N(0, 1)``
    drift_scale : standard deviation of each per-bin drift coefficient (linear, quadratic), in
        units of ``s0``
    rp_rs_range, temperature_range (K), gravity_range (m s^-2, log-uniform), mu_range (mean
        molecular weight, amu), log_abundance_range (log10 volume mixing ratio, each molecule),
        log_cloud_pressure_range (log10 bar), log_haze_range (log10 Rayleigh enhancement),
        reference_pressure (bar), stellar_radius_range (solar radii), stellar_density_range (solar),
        period_range (days, log-uniform), impact_range, ld_u1_range, ld_u2_range (at 2 um): the priors
    block_size : planets per seeded block
    """

    n_bins: int = 283
    wavelength_min: float = 1.95
    wavelength_max: float = 3.90
    oversample: int = 8
    n_times: int = 120
    window_durations: float = 3.0
    s0_range: tuple[float, float] = (3e-4, 3e-3)
    white_noise_factor: float = 0.2
    jitter_rho: float = 0.9
    jitter_amplitude: float = 0.7
    jitter_coupling_scatter: float = 0.3
    drift_scale: float = 1.0
    rp_rs_range: tuple[float, float] = (0.05, 0.18)
    temperature_range: tuple[float, float] = (500.0, 2000.0)
    gravity_range: tuple[float, float] = (4.0, 40.0)
    mu_range: tuple[float, float] = (2.2, 3.5)
    log_abundance_range: tuple[float, float] = (-8.0, -2.0)
    log_cloud_pressure_range: tuple[float, float] = (-4.0, 1.0)
    log_haze_range: tuple[float, float] = (0.0, 2.0)
    reference_pressure: float = 10.0
    stellar_radius_range: tuple[float, float] = (0.6, 1.4)
    stellar_density_range: tuple[float, float] = (0.5, 2.0)
    period_range: tuple[float, float] = (1.0, 10.0)
    impact_range: tuple[float, float] = (0.0, 0.8)
    ld_u1_range: tuple[float, float] = (0.1, 0.3)
    ld_u2_range: tuple[float, float] = (0.05, 0.25)
    block_size: int = 256

    def __post_init__(self):
        for name in ("s0_range", "rp_rs_range", "temperature_range", "gravity_range", "mu_range",
                     "log_abundance_range", "log_cloud_pressure_range", "log_haze_range", "stellar_radius_range",
                     "stellar_density_range", "period_range", "impact_range", "ld_u1_range", "ld_u2_range"):
            lo, hi = (float(v) for v in getattr(self, name))
            setattr(self, name, (lo, hi))
            if not lo <= hi:
                raise ValueError(f"TransitSimConfig.{name} must be [low, high] with low <= high, got {[lo, hi]}")
        if self.n_bins < 1 or self.oversample < 1 or self.n_times < 8 or self.block_size < 1:
            raise ValueError("TransitSimConfig: n_bins, oversample and block_size must be >= 1 and n_times >= 8; got "
                             f"{self.n_bins}, {self.oversample}, {self.block_size}, {self.n_times}")
        if not 0 < self.wavelength_min < self.wavelength_max:
            raise ValueError(f"TransitSimConfig: need 0 < wavelength_min < wavelength_max, got "
                             f"{self.wavelength_min}, {self.wavelength_max}")
        if not 0 <= self.jitter_rho < 1:
            raise ValueError(f"TransitSimConfig.jitter_rho must be in [0, 1), got {self.jitter_rho}")
        if self.impact_range[1] >= 1 - self.rp_rs_range[1] or self.impact_range[0] < 0:
            raise ValueError("TransitSimConfig: impact parameters must lie in [0, 1 - max Rp/Rs) so that every "
                             f"transit is full; got {self.impact_range} with Rp/Rs up to {self.rp_rs_range[1]}")
        if self.s0_range[0] <= 0 or self.window_durations <= 1:
            raise ValueError("TransitSimConfig: s0 must be positive and window_durations > 1")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> TransitSimConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TransitSimConfig: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()})


def airs_ch0_bins(config: TransitSimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres [K] and edges [K + 1] (um), equal in wavelength."""
    edges = np.linspace(config.wavelength_min, config.wavelength_max, config.n_bins + 1)
    return 0.5 * (edges[1:] + edges[:-1]), edges


def band_cross_sections(wavelength) -> dict[str, np.ndarray]:
    """Per molecule, the band-model cross-section (m^2 per molecule) at ``wavelength`` (um)."""
    lam = np.asarray(wavelength, dtype=np.float64)
    out = {}
    for mol, bands in BANDS.items():
        peak = max(b[2] for b in bands)
        sigma = np.full(lam.shape, BAND_FLOOR * peak)
        for centre, width, strength in bands:
            sigma = sigma + strength * np.exp(-0.5 * ((lam - centre) / width) ** 2)
        out[mol] = sigma
    return out


# the planet parameters, in the order of the columns of ``draw_planets``' output
PLANET_COLUMNS = ("rp_rs", "temperature", "gravity", "mu", "log_H2O", "log_CH4", "log_CO2", "log_CO",
                  "log_cloud_pressure", "log_haze", "stellar_radius", "stellar_density", "period", "impact",
                  "ld_u1", "ld_u2", "s0")


def draw_planets(config: TransitSimConfig, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` planets from the priors of ``config``: a dict of [n] arrays named by :data:`PLANET_COLUMNS`."""
    c = config

    def uniform(r):
        return rng.uniform(r[0], r[1], n)

    def log_uniform(r):
        return np.exp(rng.uniform(np.log(r[0]), np.log(r[1]), n))

    out = {"rp_rs": uniform(c.rp_rs_range), "temperature": uniform(c.temperature_range),
           "gravity": log_uniform(c.gravity_range), "mu": uniform(c.mu_range)}
    for mol in MOLECULES:
        out[f"log_{mol}"] = uniform(c.log_abundance_range)
    out |= {"log_cloud_pressure": uniform(c.log_cloud_pressure_range), "log_haze": uniform(c.log_haze_range),
            "stellar_radius": uniform(c.stellar_radius_range), "stellar_density": uniform(c.stellar_density_range),
            "period": log_uniform(c.period_range), "impact": uniform(c.impact_range),
            "ld_u1": uniform(c.ld_u1_range), "ld_u2": uniform(c.ld_u2_range), "s0": log_uniform(c.s0_range)}
    return out


def transmission_spectrum(planets: dict, wavelength, reference_pressure: float = 10.0) -> np.ndarray:
    """Transit depth ``((R_p + max(z, z_c)) / R_s)^2`` [n, len(wavelength)] of planets (a dict as
    :func:`draw_planets` gives, at least ``rp_rs``, ``temperature``, ``gravity``, ``mu``,
    ``log_<molecule>``, ``log_cloud_pressure``, ``log_haze``, ``stellar_radius``) at ``wavelength``
    (um). ``reference_pressure`` (bar) is where the radius is ``R_p``."""
    lam = np.atleast_1d(np.asarray(wavelength, dtype=np.float64))
    p = {k: np.asarray(v, dtype=np.float64)[:, None] for k, v in planets.items()}
    r_s = p["stellar_radius"] * R_SUN
    r_p = p["rp_rs"] * r_s
    scale_height = K_B * p["temperature"] / (p["mu"] * M_U * p["gravity"])
    p_ref = reference_pressure * 1e5
    n_ref = p_ref / (K_B * p["temperature"])
    sigma = H2_FRACTION * RAYLEIGH_H2 * (1.0 / lam[None, :]) ** 4 * 10.0 ** p["log_haze"]
    for mol, xs in band_cross_sections(lam).items():
        sigma = sigma + 10.0 ** p[f"log_{mol}"] * xs[None, :]
    z_gas = scale_height * np.log(sigma * n_ref * np.sqrt(2.0 * np.pi * r_p * scale_height) / TAU_EQ)
    z_cloud = scale_height * np.log(p_ref / (10.0 ** p["log_cloud_pressure"] * 1e5))
    return ((r_p + np.maximum(z_gas, z_cloud)) / r_s) ** 2


def transit_depths(config: TransitSimConfig, planets: dict) -> tuple[np.ndarray, np.ndarray]:
    """The bin-averaged depth spectrum [n, K] and the white-light channel's depth [n]."""
    _, edges = airs_ch0_bins(config)
    k = config.oversample
    # ``oversample`` points at the centres of equal sub-bins of every bin
    frac = (np.arange(k) + 0.5) / k
    fine = (edges[:-1, None] + frac[None, :] * np.diff(edges)[:, None]).ravel()
    depth = transmission_spectrum(planets, fine, config.reference_pressure)
    depth = depth.reshape(depth.shape[0], config.n_bins, k).mean(axis=2)
    white = transmission_spectrum(planets, [WHITE_WAVELENGTH], config.reference_pressure)[:, 0]
    return depth, white


def _orbit(planets: dict) -> dict[str, np.ndarray]:
    """a/Rs from Kepler's third law, inclination and the total transit duration T14 (days)."""
    period = np.asarray(planets["period"], dtype=np.float64)
    rho = np.asarray(planets["stellar_density"], dtype=np.float64) * RHO_SUN
    a_rs = (G_NEWTON * rho * (period * DAY) ** 2 / (3.0 * np.pi)) ** (1.0 / 3.0)
    b = np.asarray(planets["impact"], dtype=np.float64)
    inc = np.degrees(np.arccos(b / a_rs))
    k = np.asarray(planets["rp_rs"], dtype=np.float64)
    arg = np.sqrt((1.0 + k) ** 2 - b ** 2) / (a_rs * np.sin(np.radians(inc)))
    t14 = period / np.pi * np.arcsin(np.clip(arg, 0.0, 1.0))
    return {"a_rs": a_rs, "inclination": inc, "t14": t14}


def limb_darkening(planets: dict, wavelength) -> np.ndarray:
    """Quadratic coefficients [n, len(wavelength), 2]: ``u_k(lambda) = u_k(2 um) (2 um / lambda)^0.5``."""
    lam = np.atleast_1d(np.asarray(wavelength, dtype=np.float64))
    scale = (2.0 / lam) ** 0.5
    u1 = np.asarray(planets["ld_u1"], dtype=np.float64)[:, None] * scale[None, :]
    u2 = np.asarray(planets["ld_u2"], dtype=np.float64)[:, None] * scale[None, :]
    return np.stack([u1, u2], axis=-1)


def transit_shapes(times: np.ndarray, orbit: dict, radius_ratio: np.ndarray, ld: np.ndarray,
                   period: np.ndarray) -> np.ndarray:
    """batman light curves [n, K, T]: planet i, curve j with radius ratio ``radius_ratio[i, j]`` and
    quadratic limb darkening ``ld[i, j]``, at ``times[i]`` (days from mid-transit)."""
    import batman

    n, n_curves = radius_ratio.shape
    out = np.empty((n, n_curves, times.shape[1]))
    params = batman.TransitParams()
    params.t0, params.ecc, params.w, params.limb_dark = 0.0, 0.0, 90.0, "quadratic"
    for i in range(n):
        params.per, params.a, params.inc = float(period[i]), float(orbit["a_rs"][i]), float(orbit["inclination"][i])
        params.rp, params.u = float(radius_ratio[i, 0]), [float(v) for v in ld[i, 0]]
        model = batman.TransitModel(params, times[i])
        for j in range(n_curves):
            params.rp, params.u = float(radius_ratio[i, j]), [float(ld[i, j, 0]), float(ld[i, j, 1])]
            out[i, j] = model.light_curve(params)
    return out


@dataclass
class TransitSet:
    """Simulated observations of ``n`` planets.

    Attributes
    ----------
    wavelength : [K] bin centres (um); ``bin_edges`` [K + 1]
    planets : the drawn parameters, a dict of [n] arrays (:data:`PLANET_COLUMNS`) plus the orbit
        (``a_rs``, ``inclination``, ``t14``)
    depth : [n, K] the true binned transit depth (the target)
    white_depth : [n] the white-light channel's true depth
    time : [n, T] days from mid-transit
    flux : [n, K, T] float32 normalised light curve per bin; ``white`` [n, T] the white-light channel
    ld : [n, K, 2] quadratic limb darkening per bin; ``ld_white`` [n, 2]
    """

    wavelength: np.ndarray
    bin_edges: np.ndarray
    planets: dict
    depth: np.ndarray
    white_depth: np.ndarray
    time: np.ndarray
    flux: np.ndarray
    white: np.ndarray
    ld: np.ndarray
    ld_white: np.ndarray
    config: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.depth.shape[0])


def _block(config: TransitSimConfig, n: int, seed: int, block: int) -> TransitSet:
    c = config
    rng = np.random.default_rng([seed, block])
    planets = draw_planets(c, n, rng)
    wavelength, edges = airs_ch0_bins(c)
    depth, white_depth = transit_depths(c, planets)
    orbit = _orbit(planets)
    planets |= orbit
    half = 0.5 * c.window_durations * orbit["t14"]
    unit = np.linspace(-1.0, 1.0, c.n_times)
    time = half[:, None] * unit[None, :]
    ld = limb_darkening(planets, wavelength)
    ld_white = limb_darkening(planets, [WHITE_WAVELENGTH])
    curves = transit_shapes(time, orbit, np.sqrt(np.concatenate([depth, white_depth[:, None]], axis=1)),
                            np.concatenate([ld, ld_white], axis=1), planets["period"])
    s0 = planets["s0"][:, None, None]
    # common-mode AR(1) jitter, stationary with unit variance, then scaled
    eps = rng.normal(size=(n, c.n_times))
    jitter = np.empty_like(eps)
    jitter[:, 0] = eps[:, 0]
    innov = np.sqrt(1.0 - c.jitter_rho ** 2)
    for t in range(1, c.n_times):
        jitter[:, t] = c.jitter_rho * jitter[:, t - 1] + innov * eps[:, t]
    jitter *= c.jitter_amplitude * planets["s0"][:, None]
    coupling = 1.0 + c.jitter_coupling_scatter * rng.normal(size=(n, c.n_bins + 1))
    coupling[:, -1] = 1.0  # the white channel
    drift = rng.normal(size=(n, c.n_bins + 1, 2)) * c.drift_scale * s0
    trend = drift[..., :1] * unit[None, None, :] + drift[..., 1:] * unit[None, None, :] ** 2
    white_sigma = np.concatenate([np.sqrt(wavelength / 2.0)[None, :].repeat(n, 0),
                                  np.full((n, 1), c.white_noise_factor)], axis=1)[..., None] * s0
    noise = rng.normal(size=curves.shape) * white_sigma
    flux = curves + trend + coupling[..., None] * jitter[:, None, :] + noise
    planets |= {"jitter_coupling": coupling[:, :-1]}
    return TransitSet(wavelength, edges, planets, depth, white_depth, time, flux[:, :-1].astype(np.float32),
                      flux[:, -1].astype(np.float32), ld, ld_white[:, 0], c.to_dict())


def simulate_transits(config: TransitSimConfig, n: int, seed: int, start: int = 0, progress: bool = False) -> TransitSet:
    """Planets ``start .. start + n`` of the stream that ``seed`` defines (block ``b`` holds planets
    ``b * block_size ..``; each block is drawn from its own generator ``(seed, b)``, so any split
    into ranges gives the same planets)."""
    from tqdm.auto import tqdm

    if n < 0 or start < 0:
        raise ValueError(f"simulate_transits: n and start must be >= 0, got {n}, {start}")
    bs = config.block_size
    parts = []
    first, last = start // bs, (start + n - 1) // bs if n else start // bs - 1
    for b in tqdm(range(first, last + 1), desc="transit blocks", disable=not progress, leave=False):
        block = _block(config, bs, seed, b)
        lo = max(start - b * bs, 0)
        hi = min(start + n - b * bs, bs)
        parts.append(_slice(block, slice(lo, hi)))
    if not parts:
        return _slice(_block(config, 1, seed, 0), slice(0, 0))
    return _concat(parts)


def _slice(s: TransitSet, rows: slice) -> TransitSet:
    return TransitSet(s.wavelength, s.bin_edges, {k: v[rows] for k, v in s.planets.items()}, s.depth[rows],
                      s.white_depth[rows], s.time[rows], s.flux[rows], s.white[rows], s.ld[rows], s.ld_white[rows],
                      s.config)


def _concat(parts: list[TransitSet]) -> TransitSet:
    p0 = parts[0]
    cat = np.concatenate
    return TransitSet(p0.wavelength, p0.bin_edges, {k: cat([p.planets[k] for p in parts]) for k in p0.planets},
                      cat([p.depth for p in parts]), cat([p.white_depth for p in parts]),
                      cat([p.time for p in parts]), cat([p.flux for p in parts]), cat([p.white for p in parts]),
                      cat([p.ld for p in parts]), cat([p.ld_white for p in parts]), p0.config)
