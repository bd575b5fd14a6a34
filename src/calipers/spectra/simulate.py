"""A differentiable model of low-resolution stellar spectra in the Subaru PFS red arm, and its noise.

``SpectrumModel(config).flux(theta)`` maps labels ``theta = (Teff [K], log g [cgs], [M/H])``, a torch
tensor ``(N, 3)``, to noise-free continuum-normalised spectra ``(N, n_pix)``; everything is torch and
differentiable in the labels (forward- and reverse-mode), so :mod:`calipers.spectra.fisher` takes its
Jacobian by autograd. ``simulate_spectra`` draws labels from the prior and adds source + sky noise at a
set S/N, seeded and deterministic in blocks (spectrum ``i`` of a seed is always the same, however the
range is split into calls).

What it simplifies
------------------
There is no model-atmosphere grid (no BOSZ/MARCS/PHOENIX spectra, no radiative transfer code, nothing
downloaded): the photosphere is ONE layer at the continuum optical depth tau = 2/3 with T = Teff
(Eddington grey atmosphere), in LTE. Atomic data are approximate (solar abundances of Asplund et al.
2009; ionisation potentials; constant partition functions; log gf and excitation potentials of the
named lines quoted from memory of the VALD/NIST values to about 0.1-0.3 dex); the weak-line forest is
random (seeded). No rotation, macroturbulence, radial velocity, telluric absorption, chromospheric
emission, NLTE, molecular lines other than TiO (no CN, VO, H2O), no alpha-enhancement ([X/Fe] = 0).
It is meant to carry the physics that makes gravity visible in this wavelength range (pressure
broadening and the ionisation balance) with realistic orders of magnitude, not to match observed
spectra line by line.

Physics (textbook sources: D. F. Gray, *The Observation and Analysis of Stellar Photospheres*, 3rd ed.,
ch. 8-11 and 16; D. Mihalas, *Stellar Atmospheres*)
----------------------------------------------------------------------------------------------------
- Wavelength grid: 7100-8850 A (air, pixel centres) in ``n_pix`` = 4096 pixels, **log-uniform**
  (constant velocity width, 16.1 km/s per pixel for the defaults). Lines are computed on a grid
  ``oversample`` (8) times finer, made to depth, convolved with a Gaussian line-spread function of
  sigma = lambda / (2.355 R) (R = 5000: sigma = 1.58 pixels) and integrated over each pixel.
- Continuum: Planck B_lambda(Teff), divided by its mean over the pixels, so a free continuum scale and
  tilt are meaningful nuisances (:mod:`calipers.spectra.fisher`). The continuum opacity is H- (bound-free
  cross-section 4e-17 cm^2, constant over the band: it peaks near 8500 A and varies by < 10 % here;
  free-free adds 30 %): kappa_c = 4.158e-10 alpha_bf theta^2.5 10^(0.754 theta) P_e per neutral H atom
  (Gray eq. 8.12), theta = 5040 / T.
- Pressure: hydrostatic equilibrium at tau = 2/3, P_gas = g tau / kappa_c, with kappa_c proportional to
  the electron pressure P_e; P_e / (P_gas - P_e) = electrons per nucleus from Saha ionisation (first and
  second stages) of H, He, C, O, Na, Mg, Al, Si, K, Ca, Ti, Cr, Fe, Ni at (T, P_e). The pair is solved
  exactly (Newton in ln P_e, with the implicit-function derivative) per star. Limits: when metals give
  the electrons (cool stars), P_e^2 ~ g Z so P_gas ~ (g / Z)^(1/2); when hydrogen ionisation does (hot,
  low gravity), P_e^3 ~ g and P_gas ~ g^(2/3).
- Lines: LTE line-to-continuum opacity ratio at line centre,
  eta_0 = (pi e^2 / m_e c) g f 10^(-theta chi) (1 - e^(-h nu / k T)) A_el 10^[M/H] N_stage / (N_el U_stage)
  / (sqrt(pi) Delta nu_D kappa_c), with Boltzmann excitation and Saha ionisation fractions. A neutral
  line of a mostly ionised element (Fe I, Mg I, Na I, Ca I, Ti I, K I) scales as P_e like the H-
  continuum, so eta_0 hardly depends on g; a line of the dominant ion (Ca II triplet, Fe II, Ti II) and
  any line of a mostly neutral species (H, O I, TiO) scales as 1 / P_e. Profile: Voigt H(a, v) with the
  Doppler width from T and microturbulence, damping a = (gamma_rad + gamma_6 + gamma_Stark) / (4 pi
  Delta nu_D): classical radiative damping, van der Waals gamma_6 = E 10^19.6 C6^0.4 P_gas T^-0.7 (Gray
  eq. 11.35, Unsoeld C6 with the usual enhancement E = ``vdw_enhancement``; it grows with P_gas, so
  strong lines grow damping wings with gravity), and for hydrogen a Lorentzian linear-Stark width
  proportional to (n_u^2 - n_l^2) n_e^(2/3) (Holtsmark field). The Voigt function is Weideman's (1994)
  rational approximation of the Faddeeva function (24 terms, |error| < 1e-10) within about 30 Doppler
  widths of a line and its second-order asymptotic expansion a (v^2 + a^2 + 1/2) / (sqrt(pi)
  ((v^2 - a^2 - 1/2)^2 + 4 a^2 v^2)) beyond (relative error < 1e-4 there); both are analytic in
  (a, v), so the flux is smooth in the labels.
- Line depth: Milne-Eddington form for a line-to-continuum opacity ratio eta(lambda) (the sum of all
  lines and bands at that wavelength) constant with depth and a source function linear in tau,
  depth = D_max eta / (1 + eta), D_max = (2/3) beta / (1 + (2/3) beta) with beta = d ln B_lambda / d tau
  = s (3/8) x / (1 - e^-x), x = h c / (lambda k T): (3/8) is d ln T / d tau of the grey atmosphere at
  tau = 2/3, and s = ``source_function_steepness`` (2.5) stands for the steeper temperature gradient of
  real line-forming layers (cores of saturated lines reach 65-75 %).
- Lines included: the Ca II triplet (8498.02, 8542.09, 8662.14), Na I 8183.26 / 8194.82, Mg I 8806.76,
  8736.02 and others, K I 7664.90 / 7698.96, Ca I, Ti I, Fe I, Fe II, Si I, Al I, the O I triplet
  7772-7775 (see :data:`NAMED_LINES`), the Paschen series Pa 11-20 (oscillator strengths from Kramers'
  formula with a Gaunt factor 0.8), TiO bands (red-degraded heads of the gamma 0-0 at 7054/7088/7126,
  gamma 0-1 at 7589/7666/7672, delta 1-0 at 8206, epsilon 0-0 at 8432/8442/8452 and delta 0-0 at 8860 A;
  molecular Saha equilibrium Ti + O <-> TiO with D0 = 6.87 eV and oxygen not bound in CO, evaluated at
  T = 0.9 Teff (the grey-atmosphere temperature at tau ~ 0.2, where the bands form: at Teff itself TiO
  would be ~30x too weak in early M stars; 0.9 gives a 7054 A head depth of ~0.5 at 3750 K and
  ~0.2 at 4000 K for log g 4.5, nothing at 6000 K) and the layer's pressures, so TiO grows with
  pressure, metallicity and falling Teff; smooth band envelopes without rotational structure), and
  ``n_forest_lines`` weak lines at seeded random positions, of seeded random species (Fe I, Fe II, Ti I,
  Ti II, Si I, Ca I, Ni I, Cr I, Mg I, Al I, C I, Na I) and excitation potentials, with log gf set so the
  line-centre opacity ratio of a reference giant (4750 K, log g 2.5, [M/H] 0) is log-uniform in
  ``forest_log_strength_range`` (fixed by ``line_list_seed``, so every spectrum has the same forest).

Noise
-----
Counts per pixel are c (f + s), with f the noise-free flux, s the sky (:meth:`SpectrumModel.sky`: a
continuum ``sky_continuum`` times the star's mean continuum plus ``n_sky_lines`` seeded OH-like emission
lines through the same line-spread function, denser to the red) and c an exposure scale per star chosen
so that the median over pixels of the noise-free S/N, f / sqrt((f + s) / c), equals the requested S/N.
No read noise (so the exposure scale is exact). The noise is Gaussian with variance (f + s) / c.
``ivar`` is what a pipeline estimates from the observed counts, c / max(f_obs + s, ivar_floor s),
computed from the NOISY flux, so it carries no more information on the true spectrum than the noisy
flux itself (an ivar from the noise-free flux would let a network read the spectrum off it). The Fisher
bound uses the expected ivar c / (f + s) (:meth:`SpectrumModel.expected_ivar`).

Speed (``benchmarks/spectra_ceiling.py``): about 180 noise-free spectra/s on one CPU thread (float32,
chunks of 64; 470 lines, 26k exact-Voigt and 84k wing points per spectrum); the float64 forward-mode
Jacobian takes about 0.11 s per star.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from calipers.checks import checked_number as _number

logger = logging.getLogger(__name__)

LABEL_NAMES: tuple[str, str, str] = ("teff", "logg", "m_h")
COMPONENTS: tuple[str, ...] = ("atoms", "hydrogen", "tio", "forest")

# ----------------------------------------------------------------------------- constants (cgs)
C_CMS = 2.99792458e10
C_KMS = 2.99792458e5
K_BOLTZMANN = 1.380649e-16
H_PLANCK = 6.62607015e-27
M_ELECTRON = 9.1093837e-28
E_CHARGE = 4.80320471e-10  # esu
AMU = 1.66053907e-24
A_BOHR = 5.29177211e-9
HC_OVER_K_ANGSTROM = 1.438777e8  # h c / k in Angstrom K
EV_ANGSTROM = 12398.42  # photon energy (eV) x wavelength (A)
THETA_EV = 5039.78  # theta = THETA_EV / T; exp(-chi / kT) = 10^(-theta chi)
LN10 = math.log(10.0)
PI_E2_OVER_MC = math.pi * E_CHARGE ** 2 / (M_ELECTRON * C_CMS)  # 0.02654 cm^2 Hz
SAHA_CONSTANT = (2 * math.pi * M_ELECTRON * K_BOLTZMANN) ** 1.5 * K_BOLTZMANN / H_PLANCK ** 3  # 0.3335
TAU_PHOTOSPHERE = 2.0 / 3.0
HMINUS_BF_CROSS_SECTION = 4.0e-17  # cm^2 near 8000 A
HMINUS_FF_FACTOR = 1.3  # (bf + ff) / bf near 8000 A for 4000-6000 K
STARK_CONSTANT = 0.75 * 2.61 * E_CHARGE ** 2 * A_BOHR / H_PLANCK  # Hz cm^2: half-width per (n_u^2 - n_l^2) n_e^(2/3)
HYDROGEN_GAUNT = 0.8
WEIDEMAN_TERMS = 24
NEWTON_STEPS = 40  # electron-pressure solve; quadratic convergence after <= 10 steps in 3000-8000 K

# ----------------------------------------------------------------------------- atomic data
# name: (log eps (H = 12), I_1 [eV], I_2 [eV], U_0, U_1, U_2, mass [amu], scales with [M/H])
ELEMENTS: dict[str, tuple[float, float, float, float, float, float, float, bool]] = {
    "H": (12.00, 13.598, 1000.0, 2.0, 1.0, 1.0, 1.008, False),
    "He": (10.93, 24.587, 54.418, 1.0, 2.0, 1.0, 4.003, False),
    "C": (8.43, 11.260, 24.383, 9.3, 6.0, 1.0, 12.011, True),
    "O": (8.69, 13.618, 35.121, 8.9, 4.0, 9.0, 15.999, True),
    "Na": (6.24, 5.139, 47.286, 2.0, 1.0, 6.0, 22.990, True),
    "Mg": (7.60, 7.646, 15.035, 1.0, 2.0, 1.0, 24.305, True),
    "Al": (6.45, 5.986, 18.828, 5.8, 1.0, 2.0, 26.982, True),
    "Si": (7.51, 8.152, 16.346, 9.4, 5.7, 1.0, 28.086, True),
    "K": (5.03, 4.341, 31.630, 2.0, 1.0, 6.0, 39.098, True),
    "Ca": (6.34, 6.113, 11.872, 1.1, 2.1, 1.0, 40.078, True),
    "Ti": (4.95, 6.828, 13.576, 30.0, 55.0, 30.0, 47.867, True),
    "Cr": (5.64, 6.767, 16.486, 10.5, 7.2, 1.0, 51.996, True),
    "Fe": (7.50, 7.902, 16.199, 27.0, 42.0, 25.0, 55.845, True),
    "Ni": (6.22, 7.640, 18.169, 29.0, 10.5, 1.0, 58.693, True),
}
ELEMENT_NAMES: tuple[str, ...] = tuple(ELEMENTS)

# (label, air wavelength [A], element, stage (0 neutral, 1 ion), excitation [eV], log gf, window)
NAMED_LINES: tuple[tuple[str, float, str, int, float, float, str], ...] = (
    ("Ca II 8498", 8498.02, "Ca", 1, 1.692, -1.31, "wide"),
    ("Ca II 8542", 8542.09, "Ca", 1, 1.700, -0.36, "wide"),
    ("Ca II 8662", 8662.14, "Ca", 1, 1.692, -0.62, "wide"),
    ("Na I 8183", 8183.26, "Na", 0, 2.102, 0.24, "strong"),
    ("Na I 8195", 8194.82, "Na", 0, 2.104, 0.49, "strong"),
    ("Mg I 8807", 8806.76, "Mg", 0, 4.346, -0.13, "strong"),
    ("Mg I 8736", 8736.02, "Mg", 0, 5.946, -0.34, "strong"),
    ("Mg I 8718", 8717.83, "Mg", 0, 5.933, -0.97, "strong"),
    ("Mg I 7692", 7691.55, "Mg", 0, 5.753, -0.78, "strong"),
    ("Mg I 7388", 7387.69, "Mg", 0, 5.753, -0.87, "strong"),
    ("K I 7665", 7664.90, "K", 0, 0.000, 0.13, "strong"),
    ("K I 7699", 7698.96, "K", 0, 0.000, -0.17, "strong"),
    ("Ca I 7148", 7148.15, "Ca", 0, 2.709, 0.14, "strong"),
    ("Ca I 7202", 7202.20, "Ca", 0, 2.709, -0.26, "strong"),
    ("Ca I 7326", 7326.15, "Ca", 0, 2.933, -0.21, "strong"),
    ("Ti I 8427", 8426.50, "Ti", 0, 0.826, -1.20, "strong"),
    ("Ti I 8435", 8434.96, "Ti", 0, 0.836, -0.83, "strong"),
    ("Ti I 8683", 8682.98, "Ti", 0, 1.053, -1.79, "strong"),
    ("Ti I 8692", 8692.33, "Ti", 0, 1.046, -2.13, "strong"),
    ("Ti I 8735", 8734.71, "Ti", 0, 1.053, -2.24, "strong"),
    ("Ti I 7345", 7344.70, "Ti", 0, 1.460, -0.99, "strong"),
    ("Ti I 7358", 7357.73, "Ti", 0, 1.443, -1.12, "strong"),
    ("Fe I 8327", 8327.05, "Fe", 0, 2.198, -1.53, "strong"),
    ("Fe I 8388", 8387.77, "Fe", 0, 2.176, -1.49, "strong"),
    ("Fe I 8468", 8468.40, "Fe", 0, 2.223, -2.07, "strong"),
    ("Fe I 8514", 8514.07, "Fe", 0, 2.198, -2.23, "strong"),
    ("Fe I 8612", 8611.80, "Fe", 0, 2.845, -1.93, "strong"),
    ("Fe I 8622", 8621.60, "Fe", 0, 2.949, -2.32, "strong"),
    ("Fe I 8675", 8674.75, "Fe", 0, 2.831, -1.80, "strong"),
    ("Fe I 8689", 8688.62, "Fe", 0, 2.176, -1.21, "strong"),
    ("Fe I 8824", 8824.22, "Fe", 0, 2.198, -1.54, "strong"),
    ("Fe I 8838", 8838.43, "Fe", 0, 2.858, -1.98, "strong"),
    ("Fe I 7446", 7445.75, "Fe", 0, 4.256, -0.24, "strong"),
    ("Fe I 7495", 7495.07, "Fe", 0, 4.220, -0.10, "strong"),
    ("Fe I 7511", 7511.02, "Fe", 0, 4.178, 0.10, "strong"),
    ("Fe I 7748", 7748.27, "Fe", 0, 2.949, -1.75, "strong"),
    ("Fe I 7781", 7780.56, "Fe", 0, 4.473, -0.07, "strong"),
    ("Fe I 7832", 7832.20, "Fe", 0, 4.435, 0.11, "strong"),
    ("Fe I 7937", 7937.14, "Fe", 0, 4.311, 0.23, "strong"),
    ("Fe I 8046", 8046.05, "Fe", 0, 4.415, 0.09, "strong"),
    ("Fe I 8085", 8085.17, "Fe", 0, 4.446, -0.21, "strong"),
    ("Fe II 7222", 7222.39, "Fe", 1, 3.889, -3.36, "strong"),
    ("Fe II 7224", 7224.49, "Fe", 1, 3.889, -3.20, "strong"),
    ("Fe II 7449", 7449.34, "Fe", 1, 3.889, -3.09, "strong"),
    ("Fe II 7462", 7462.41, "Fe", 1, 3.889, -2.73, "strong"),
    ("Fe II 7516", 7515.83, "Fe", 1, 3.903, -3.39, "strong"),
    ("Fe II 7712", 7711.72, "Fe", 1, 3.903, -2.50, "strong"),
    ("Si I 7406", 7405.77, "Si", 0, 5.614, -0.82, "strong"),
    ("Si I 7416", 7415.95, "Si", 0, 5.614, -0.73, "strong"),
    ("Si I 7424", 7423.50, "Si", 0, 5.619, -0.58, "strong"),
    ("Si I 7932", 7932.35, "Si", 0, 5.964, -0.47, "strong"),
    ("Si I 8728", 8728.01, "Si", 0, 6.181, -0.36, "strong"),
    ("Si I 8742", 8742.45, "Si", 0, 5.871, -0.51, "strong"),
    ("Al I 7835", 7835.31, "Al", 0, 4.021, -0.65, "strong"),
    ("Al I 7836", 7836.13, "Al", 0, 4.022, -0.45, "strong"),
    ("Al I 8773", 8772.87, "Al", 0, 4.022, -0.32, "strong"),
    ("Al I 8774", 8773.90, "Al", 0, 4.022, -0.16, "strong"),
    ("O I 7772", 7771.94, "O", 0, 9.146, 0.37, "strong"),
    ("O I 7774", 7774.17, "O", 0, 9.146, 0.22, "strong"),
    ("O I 7775", 7775.39, "O", 0, 9.146, 0.00, "strong"),
)

# Paschen lines n_u -> 3: (upper level, air wavelength [A])
PASCHEN_LINES: tuple[tuple[int, float], ...] = (
    (11, 8862.78), (12, 8750.47), (13, 8665.02), (14, 8598.39), (15, 8545.38),
    (16, 8502.48), (17, 8467.25), (18, 8437.95), (19, 8413.32), (20, 8392.40),
)

# TiO band heads: (label, head [A], band oscillator strength per head, Franck-Condon factor,
# lower vibrational level v'', lower electronic level energy [eV], red e-folding length [A])
TIO_BANDS: tuple[tuple[str, float, float, float, int, float, float], ...] = (
    ("TiO gamma 0-0 R3", 7054.2, 0.05, 0.6, 0, 0.0, 50.0),
    ("TiO gamma 0-0 R2", 7087.6, 0.05, 0.6, 0, 0.0, 50.0),
    ("TiO gamma 0-0 R1", 7125.6, 0.05, 0.6, 0, 0.0, 50.0),
    ("TiO gamma 0-1 R3", 7589.3, 0.05, 0.25, 1, 0.0, 40.0),
    ("TiO gamma 0-1 R2", 7666.4, 0.05, 0.25, 1, 0.0, 40.0),
    ("TiO gamma 0-1 R1", 7672.0, 0.05, 0.25, 1, 0.0, 40.0),
    ("TiO delta 1-0", 8206.0, 0.08, 0.25, 0, 0.43, 80.0),
    ("TiO epsilon 0-0 R3", 8432.3, 0.005, 0.6, 0, 0.0, 30.0),
    ("TiO epsilon 0-0 R2", 8442.2, 0.005, 0.6, 0, 0.0, 30.0),
    ("TiO epsilon 0-0 R1", 8452.0, 0.005, 0.6, 0, 0.0, 30.0),
    ("TiO delta 0-0", 8859.6, 0.08, 0.7, 0, 0.43, 80.0),
)
TIO_DISSOCIATION_EV = 6.87
TIO_ROTATION_CM = 0.535  # B, cm^-1
TIO_VIBRATION_CM = 1009.0  # omega_e, cm^-1
TIO_ELECTRONIC_WEIGHT = 6.0  # X 3Delta
MOLECULE_TEMPERATURE_RATIO = 0.9  # TiO forms higher up: the grey-atmosphere temperature at tau ~ 0.2

# forest species: (element, stage, weight, excitation range [eV])
FOREST_SPECIES: tuple[tuple[str, int, float, tuple[float, float]], ...] = (
    ("Fe", 0, 0.40, (0.0, 5.5)), ("Fe", 1, 0.07, (2.5, 6.0)), ("Ti", 0, 0.10, (0.0, 3.0)),
    ("Ti", 1, 0.03, (1.0, 4.0)), ("Si", 0, 0.08, (4.9, 6.2)), ("Ca", 0, 0.05, (1.9, 5.0)),
    ("Ni", 0, 0.10, (1.7, 5.5)), ("Cr", 0, 0.07, (0.0, 4.0)), ("Mg", 0, 0.03, (4.3, 6.5)),
    ("Al", 0, 0.02, (3.1, 5.0)), ("C", 0, 0.03, (7.5, 8.8)), ("Na", 0, 0.02, (2.1, 4.3)),
)
FOREST_REFERENCE_LABELS = (4750.0, 2.5, 0.0)

# half-widths (fine samples) of the window of a line, and of its inner (exact Voigt) part
WINDOWS: dict[str, tuple[int, int]] = {"forest": (48, 24), "strong": (400, 32), "wide": (1400, 32),
                                       "hydrogen": (900, 128)}


# ----------------------------------------------------------------------------- configuration
def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"SpectraSimConfig.{name} must be a pair (low, high), got {value!r}") from None
    out = []
    for v in (lo, hi):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(v)):
            raise ValueError(f"SpectraSimConfig.{name} must hold finite numbers, got {value!r}")
        out.append(float(v))
    if out[0] >= out[1]:
        raise ValueError(f"SpectraSimConfig.{name} = {value!r}: low must be below high")
    return out[0], out[1]


@dataclass
class SpectraSimConfig:
    """Settings of the spectrum model and of the simulated survey (see the module docstring).

    Parameters
    ----------
    wavelength_min, wavelength_max : centres of the first and last pixel, Angstrom (air).
    n_pix : number of pixels (log-uniform grid).
    resolving_power : R = lambda / FWHM of the Gaussian line-spread function.
    oversample : fine samples per pixel on which lines are computed before the line-spread function.
    teff_range : effective temperature prior (K), uniform; also the range the model accepts.
    logg_range : surface gravity prior (log10 cm s^-2), uniform.
    m_h_range : metallicity prior (dex), uniform.
    microturbulence : km/s, added in quadrature to the thermal Doppler speed.
    vdw_enhancement : factor on the Unsoeld van der Waals damping constant gamma_6.
    source_function_steepness : s in the Milne-Eddington source-function gradient (line core depths).
    n_forest_lines : number of seeded weak lines.
    forest_log_strength_range : log10 line-centre opacity ratio of forest lines in the reference giant.
    line_list_seed : seed of the forest (positions, species, excitation, strengths).
    components : which opacity sources to include, a subset of ``("atoms", "hydrogen", "tio",
        "forest")`` (atoms: the named metal lines; hydrogen: Paschen; tio: TiO bands; forest: weak lines).
    sky_continuum : sky continuum in units of the star's mean continuum.
    n_sky_lines : number of seeded OH-like sky emission lines.
    sky_seed : seed of the sky lines.
    ivar_floor : the estimated variance is floored at ``ivar_floor`` x the sky variance.
    block_size : spectra per seeded block (changing it changes the labels and the noise).
    chunk_size : spectra per vectorised model evaluation (memory; does not change results).
    """

    wavelength_min: float = 7100.0
    wavelength_max: float = 8850.0
    n_pix: int = 4096
    resolving_power: float = 5000.0
    oversample: int = 8
    teff_range: tuple[float, float] = (3750.0, 6000.0)
    logg_range: tuple[float, float] = (1.0, 5.0)
    m_h_range: tuple[float, float] = (-0.25, 0.75)
    microturbulence: float = 1.5
    vdw_enhancement: float = 2.0
    source_function_steepness: float = 2.5
    n_forest_lines: int = 400
    forest_log_strength_range: tuple[float, float] = (-1.5, 2.0)
    line_list_seed: int = 19
    components: tuple[str, ...] = COMPONENTS
    sky_continuum: float = 1.0
    n_sky_lines: int = 120
    sky_seed: int = 7
    ivar_floor: float = 0.05
    block_size: int = 256
    chunk_size: int = 64

    def __post_init__(self) -> None:
        self.wavelength_min = _number("SpectraSimConfig.wavelength_min", self.wavelength_min, float, 0.0,
                                      low_open=True)
        self.wavelength_max = _number("SpectraSimConfig.wavelength_max", self.wavelength_max, float,
                                      self.wavelength_min, low_open=True)
        self.n_pix = _number("SpectraSimConfig.n_pix", self.n_pix, int, 16)
        self.resolving_power = _number("SpectraSimConfig.resolving_power", self.resolving_power, float, 100.0)
        self.oversample = _number("SpectraSimConfig.oversample", self.oversample, int, 1, 64)
        self.teff_range = _pair("teff_range", self.teff_range)
        if self.teff_range[0] < 3000.0 or self.teff_range[1] > 8000.0:
            raise ValueError(f"SpectraSimConfig.teff_range = {self.teff_range}: the model is built for "
                             "3000-8000 K (H- continuum, no hydrogen-dominated opacity)")
        self.logg_range = _pair("logg_range", self.logg_range)
        if self.logg_range[0] < -0.5 or self.logg_range[1] > 5.5:
            raise ValueError(f"SpectraSimConfig.logg_range = {self.logg_range}: must lie within -0.5..5.5")
        self.m_h_range = _pair("m_h_range", self.m_h_range)
        if self.m_h_range[0] < -4.0 or self.m_h_range[1] > 1.0:
            raise ValueError(f"SpectraSimConfig.m_h_range = {self.m_h_range}: must lie within -4..1")
        self.microturbulence = _number("SpectraSimConfig.microturbulence", self.microturbulence, float, 0.0, 10.0)
        self.vdw_enhancement = _number("SpectraSimConfig.vdw_enhancement", self.vdw_enhancement, float, 0.0)
        self.source_function_steepness = _number("SpectraSimConfig.source_function_steepness",
                                                 self.source_function_steepness, float, 0.0, low_open=True)
        self.n_forest_lines = _number("SpectraSimConfig.n_forest_lines", self.n_forest_lines, int, 0)
        self.forest_log_strength_range = _pair("forest_log_strength_range", self.forest_log_strength_range)
        self.line_list_seed = _number("SpectraSimConfig.line_list_seed", self.line_list_seed, int, 0)
        comps = tuple(self.components)
        unknown = sorted(set(comps) - set(COMPONENTS))
        if unknown or not comps:
            raise ValueError(f"SpectraSimConfig.components = {self.components!r}: choose a non-empty subset of "
                             f"{COMPONENTS}")
        self.components = tuple(c for c in COMPONENTS if c in comps)
        self.sky_continuum = _number("SpectraSimConfig.sky_continuum", self.sky_continuum, float, 0.0)
        self.n_sky_lines = _number("SpectraSimConfig.n_sky_lines", self.n_sky_lines, int, 0)
        self.sky_seed = _number("SpectraSimConfig.sky_seed", self.sky_seed, int, 0)
        self.ivar_floor = _number("SpectraSimConfig.ivar_floor", self.ivar_floor, float, 0.0, low_open=True)
        if self.sky_continuum == 0.0 and self.n_sky_lines == 0:
            logger.info("SpectraSimConfig: no sky; the ivar floor then acts on a zero sky variance and "
                        "noisy fluxes below zero get the variance of the smallest positive observed flux")
        self.block_size = _number("SpectraSimConfig.block_size", self.block_size, int, 1)
        self.chunk_size = _number("SpectraSimConfig.chunk_size", self.chunk_size, int, 1)

    @property
    def label_ranges(self) -> np.ndarray:
        """(3, 2) array of the (low, high) prior range of Teff, log g, [M/H]."""
        return np.array([self.teff_range, self.logg_range, self.m_h_range], dtype=float)

    def to_dict(self) -> dict:
        """A JSON-able dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict) -> SpectraSimConfig:
        """The config a :meth:`to_dict` dict describes; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"SpectraSimConfig: unknown option(s) {unknown}; known: {sorted(names)}")
        return cls(**values)


def wavelength_grid(config: SpectraSimConfig) -> np.ndarray:
    """Pixel-centre wavelengths (Angstrom, air), log-uniform from ``wavelength_min`` to ``wavelength_max``."""
    return np.exp(np.linspace(math.log(config.wavelength_min), math.log(config.wavelength_max), config.n_pix))


# ----------------------------------------------------------------------------- Voigt function
def _weideman_coefficients(n_terms: int) -> tuple[float, np.ndarray]:
    """Weideman (1994, SIAM J. Numer. Anal. 31, 1497) coefficients: w(z) ~ 2 p(Z) / (L - i z)^2 +
    1 / (sqrt(pi) (L - i z)), Z = (L + i z) / (L - i z), p a polynomial of degree n_terms - 1."""
    m = 2 * n_terms
    k = np.arange(-m + 1, m)
    scale = math.sqrt(n_terms / math.sqrt(2.0))
    t = scale * np.tan(k * math.pi / m / 2.0)
    f = np.concatenate([[0.0], np.exp(-t ** 2) * (scale ** 2 + t ** 2)])
    a = np.real(np.fft.fft(np.fft.fftshift(f))) / (2 * m)
    return scale, a[1:n_terms + 1][::-1].copy()


_WEIDEMAN_L, _WEIDEMAN_A = _weideman_coefficients(WEIDEMAN_TERMS)


def voigt_hjerting(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Voigt-Hjerting function H(a, v) = Re w(v + i a) (H(0, 0) = 1) by Weideman's rational
    approximation with 24 terms (absolute error < 1e-10 for a >= 0); differentiable in a and v.

    Parameters
    ----------
    a : damping parameter (>= 0), broadcastable with ``v``.
    v : distance from line centre in Doppler widths.
    """
    scale = _WEIDEMAN_L
    denom = torch.complex(scale + a, -v)  # L - i z with z = v + i a
    numer = torch.complex(scale - a, v)  # L + i z
    big_z = numer / denom
    coeffs = _WEIDEMAN_A
    p = torch.full_like(big_z, complex(coeffs[0]))
    for c in coeffs[1:]:
        p = p * big_z + float(c)
    w = 2.0 * p / (denom * denom) + (1.0 / math.sqrt(math.pi)) / denom
    return w.real


def voigt_hjerting_wing(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H(a, v) far from the core (|v| >~ 15): the one-pole Gauss-Hermite (second-order asymptotic)
    form a (v^2 + a^2 + 1/2) / (sqrt(pi) ((v^2 - a^2 - 1/2)^2 + 4 a^2 v^2)), relative error
    < 1e-4 for |v| >= 15, real arithmetic."""
    v2 = v * v
    a2 = a * a
    return a * (v2 + a2 + 0.5) / (math.sqrt(math.pi) * ((v2 - a2 - 0.5) ** 2 + 4.0 * a2 * v2))


# ----------------------------------------------------------------------------- the model
@dataclass
class _Lines:
    """The line table (numpy, float64) of a model."""

    label: list[str]
    wavelength: np.ndarray
    element: np.ndarray  # index into ELEMENT_NAMES
    stage: np.ndarray
    excitation: np.ndarray
    log_gf: np.ndarray
    window: list[str]
    n_upper: np.ndarray  # Paschen upper level (0 for metals)

    def __len__(self) -> int:
        return len(self.wavelength)


def _paschen_log_gf(n_upper: int) -> float:
    """log10 g f of the hydrogen n = 3 -> n_upper line: Kramers' semiclassical oscillator strength
    f = 32 / (3 pi sqrt(3)) / (n_l^5 n_u^3) (1/n_l^2 - 1/n_u^2)^-3 times a Gaunt factor, g = 2 n_l^2."""
    n_l = 3
    f = 32.0 / (3 * math.pi * math.sqrt(3)) / (n_l ** 5 * n_upper ** 3) * (1 / n_l ** 2 - 1 / n_upper ** 2) ** -3
    return math.log10(2 * n_l ** 2 * f * HYDROGEN_GAUNT)


class SpectrumModel:
    """Noise-free spectra as a differentiable function of (Teff, log g, [M/H]), and their noise.

    Parameters
    ----------
    config : the model settings (wavelengths, resolution, line list, components, sky).

    Notes
    -----
    Everything that does not depend on the labels (line list, window indices, line-spread kernel,
    band shapes, sky) is built once here, in float64; :meth:`flux` computes in the dtype of ``theta``
    (float32 for speed, float64 for derivative checks). The model holds no torch parameters and
    changes no global torch state.
    """

    def __init__(self, config: SpectraSimConfig | None = None) -> None:
        # a private copy: changing the caller's config later cannot desynchronise the built tables
        self.config = dataclasses.replace(config) if config is not None else SpectraSimConfig()
        cfg = self.config
        self._ranges = torch.tensor(cfg.label_ranges, dtype=torch.float64)
        # ---- grids
        self.wavelength = wavelength_grid(cfg)
        self._dln = math.log(cfg.wavelength_max / cfg.wavelength_min) / (cfg.n_pix - 1)
        k = cfg.oversample
        self._fine_step = self._dln / k
        sigma_ln = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)) * cfg.resolving_power)
        sigma_fine = sigma_ln / self._fine_step
        self._margin = int(math.ceil(5.0 * sigma_fine)) + 1
        self._n_fine = cfg.n_pix * k + 2 * self._margin
        ln0 = math.log(cfg.wavelength_min)
        # fine sample i <-> pixel p = (i - margin) // k, sub-sample (i - margin) % k
        offsets = (np.arange(self._n_fine) - self._margin - (k - 1) / 2.0) * self._fine_step
        self._ln_fine = ln0 + offsets
        self._ln_fine0 = self._ln_fine[0]
        # line-spread kernel: pixel p = sum_t kernel[t] q[p k + t], t = 0 .. 2 margin + k - 1
        t = np.arange(2 * self._margin + k)
        d = t[:, None] - self._margin - np.arange(k)[None, :]
        from scipy.special import erf  # noqa: PLC0415 - scipy is a core dependency; keep import local

        g = 0.5 * (erf((d + 0.5) / (math.sqrt(2) * sigma_fine)) - erf((d - 0.5) / (math.sqrt(2) * sigma_fine)))
        kernel = g.mean(axis=1)
        self._kernel = kernel / kernel.sum()
        # ---- lines and bands
        self._lines = self._build_lines()
        self._build_points()
        self._build_bands()
        self._sky = self._build_sky()
        self._abund0 = np.array([10 ** (ELEMENTS[e][0] - 12.0) for e in ELEMENT_NAMES])
        self._metal = np.array([ELEMENTS[e][7] for e in ELEMENT_NAMES], dtype=float)
        mass = np.array([ELEMENTS[e][6] for e in ELEMENT_NAMES])
        self._nh_per_gram = 1.0 / (float((self._abund0 * mass).sum()) * AMU)
        ion = np.array([[ELEMENTS[e][1], ELEMENTS[e][2]] for e in ELEMENT_NAMES])
        part = np.array([[ELEMENTS[e][3], ELEMENTS[e][4], ELEMENTS[e][5]] for e in ELEMENT_NAMES])
        self._ion = ion
        self._ln_saha = np.log(SAHA_CONSTANT * 2.0 * part[:, 1:] / part[:, :2])  # (E, 2)
        self._partition = part
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self._tensors_np = self._line_arrays()
        if "forest" in cfg.components and cfg.n_forest_lines > 0:
            self._calibrate_forest()
        logger.debug("SpectrumModel: %d lines, %d fine samples, %d inner + %d wing Voigt points",
                     len(self._lines), self._n_fine, len(self._inner_line), len(self._outer_line))

    # ------------------------------------------------------------------ construction
    def _build_lines(self) -> _Lines:
        cfg = self.config
        rows: list[tuple] = []
        names = {e: i for i, e in enumerate(ELEMENT_NAMES)}
        if "atoms" in cfg.components:
            for label, lam, el, stage, chi, loggf, win in NAMED_LINES:
                rows.append((label, lam, names[el], stage, chi, loggf, win, 0))
        if "hydrogen" in cfg.components:
            for n_u, lam in PASCHEN_LINES:
                chi = ELEMENTS["H"][1] * (1.0 - 1.0 / 9.0)
                rows.append((f"H I Pa{n_u}", lam, names["H"], 0, chi, _paschen_log_gf(n_u), "hydrogen", n_u))
        if "forest" in cfg.components and cfg.n_forest_lines > 0:
            rng = np.random.default_rng([cfg.line_list_seed, 19])
            n = cfg.n_forest_lines
            lo = math.log(cfg.wavelength_min - 5.0)
            hi = math.log(cfg.wavelength_max + 5.0)
            lam = np.exp(rng.uniform(lo, hi, n))
            weights = np.array([s[2] for s in FOREST_SPECIES])
            which = rng.choice(len(FOREST_SPECIES), size=n, p=weights / weights.sum())
            u = rng.uniform(size=n)
            for i in range(n):
                el, stage, _, (x0, x1) = FOREST_SPECIES[which[i]]
                chi = x0 + (x1 - x0) * u[i]
                rows.append((f"forest {el} {'I' * (stage + 1)} {lam[i]:.2f}", float(lam[i]), names[el], stage,
                             float(chi), 0.0, "forest", 0))
            self._forest_target = rng.uniform(*cfg.forest_log_strength_range, n)
        cols = list(zip(*rows)) if rows else [[] for _ in range(8)]
        return _Lines(label=list(cols[0]), wavelength=np.asarray(cols[1], float), element=np.asarray(cols[2], int),
                      stage=np.asarray(cols[3], int), excitation=np.asarray(cols[4], float),
                      log_gf=np.asarray(cols[5], float), window=list(cols[6]), n_upper=np.asarray(cols[7], int))

    def _build_points(self) -> None:
        """Flattened (line, fine sample, Delta ln lambda) lists of the inner (exact Voigt) and wing points."""
        inner: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        outer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        lines = self._lines
        for i in range(len(lines)):
            half, half_in = WINDOWS[lines.window[i]]
            ln_lam = math.log(lines.wavelength[i])
            centre = int(round((ln_lam - self._ln_fine0) / self._fine_step))
            j = np.arange(-half, half + 1)
            idx = centre + j
            ok = (idx >= 0) & (idx < self._n_fine)
            j, idx = j[ok], idx[ok]
            dln = self._ln_fine[idx] - ln_lam
            is_in = np.abs(j) <= half_in
            inner.append((np.full(is_in.sum(), i), idx[is_in], dln[is_in]))
            outer.append((np.full((~is_in).sum(), i), idx[~is_in], dln[~is_in]))

        def cat(parts, k, dtype):
            return np.concatenate([p[k] for p in parts]).astype(dtype) if parts else np.zeros(0, dtype)

        self._inner_line, self._inner_fine, self._inner_dln = (cat(inner, 0, np.int64), cat(inner, 1, np.int64),
                                                               cat(inner, 2, float))
        self._outer_line, self._outer_fine, self._outer_dln = (cat(outer, 0, np.int64), cat(outer, 1, np.int64),
                                                               cat(outer, 2, float))

    def _build_bands(self) -> None:
        """TiO band envelopes on the fine grid: a sharp head (0.3 A logistic edge) degraded to the red."""
        if "tio" not in self.config.components:
            self._bands = None
            return
        lam = np.exp(self._ln_fine)
        shapes = []
        for _, head, _, _, _, _, length in TIO_BANDS:
            x = (lam - head)
            edge = 0.5 * (1.0 + np.tanh(x / 0.6))
            shapes.append(edge * np.exp(-np.clip(x, 0.0, None) / length))
        self._bands = np.array(shapes)
        self._band_head = np.array([b[1] for b in TIO_BANDS])
        self._band_f = np.array([b[2] for b in TIO_BANDS])
        self._band_fc = np.array([b[3] for b in TIO_BANDS])
        self._band_v = np.array([b[4] for b in TIO_BANDS], dtype=float)
        self._band_elow = np.array([b[5] for b in TIO_BANDS])
        self._band_length = np.array([b[6] for b in TIO_BANDS])

    def _build_sky(self) -> np.ndarray:
        """Sky flux per pixel in units of the star's mean continuum: continuum plus OH-like lines."""
        cfg = self.config
        rng = np.random.default_rng([cfg.sky_seed, 7])
        n = cfg.n_sky_lines
        sky = np.full(cfg.n_pix, cfg.sky_continuum)
        if n:
            # OH Meinel bands get denser and brighter to the red: positions with density ~ lambda^4
            u = rng.uniform(size=n)
            l0, l1 = cfg.wavelength_min, cfg.wavelength_max
            lam = (l0 ** 5 + u * (l1 ** 5 - l0 ** 5)) ** 0.2
            peak = np.exp(rng.normal(math.log(5.0), 1.0, n))
            sigma = lam / (2.0 * math.sqrt(2.0 * math.log(2.0)) * cfg.resolving_power)
            prof = np.exp(-0.5 * ((self.wavelength[None, :] - lam[:, None]) / sigma[:, None]) ** 2)
            sky = sky + max(cfg.sky_continuum, 0.1) * (peak[:, None] * prof).sum(0)
        return sky

    def _line_arrays(self) -> dict[str, np.ndarray]:
        """Per-line constants (float64 numpy) used by :meth:`_line_parameters`."""
        lines = self._lines
        el = lines.element
        lam_cm = lines.wavelength * 1e-8
        part = self._partition[el, lines.stage]
        ln_const = (math.log(PI_E2_OVER_MC) + lines.log_gf * LN10 + np.log(self._abund0[el]) - np.log(part)
                    + np.log(lam_cm) - 0.5 * math.log(math.pi))
        mass = np.array([ELEMENTS[ELEMENT_NAMES[e]][6] for e in el]) * AMU
        # Unsoeld C6 (Gray eq. 11.29) with the (Z+1)^2 factor of an ion; upper level kept >= 0.5 eV bound
        ion_pot = self._ion[el, np.clip(lines.stage, 0, 1)]
        chi_photon = EV_ANGSTROM / lines.wavelength
        bound_up = np.maximum(ion_pot - lines.excitation - chi_photon, 0.5)
        bound_lo = np.maximum(ion_pot - lines.excitation, 0.5 + chi_photon)
        c6 = 0.3e-30 * (lines.stage + 1.0) ** 2 * (1.0 / bound_up ** 2 - 1.0 / bound_lo ** 2)
        is_h = lines.n_upper > 0
        log_gamma6 = np.where(is_h, -np.inf, 19.6 + 0.4 * np.log10(np.maximum(c6, 1e-40)))
        stark = np.where(is_h, 4.0 * math.pi * STARK_CONSTANT * (lines.n_upper ** 2 - 9.0), 0.0)
        return {
            "ln_const": ln_const,
            "excitation": lines.excitation,
            "metal": self._metal[el],
            "element": el,
            "stage": lines.stage,
            "two_kt_over_m": 2.0 * K_BOLTZMANN / mass,  # times T
            "lam_cm": lam_cm,
            "photon_x": HC_OVER_K_ANGSTROM / lines.wavelength,  # times 1 / T
            "gamma_rad": 2.223e15 / lines.wavelength ** 2,
            "gamma6_coef": np.where(is_h, 0.0, self.config.vdw_enhancement * 10.0 ** np.where(is_h, 0.0, log_gamma6)),
            "stark_coef": stark,
        }

    def _calibrate_forest(self) -> None:
        """Set the forest's log gf so its line-centre opacity ratios in the reference giant hit the
        seeded targets (the forest's temperature and pressure behaviour stays physical)."""
        ref = torch.tensor([FOREST_REFERENCE_LABELS], dtype=torch.float64)
        with torch.no_grad():
            phot = self._photosphere(ref)
            ln_eta0, _, _ = self._line_parameters(phot, ref, self._const(torch.float64, ref.device))
        forest = np.array([w == "forest" for w in self._lines.window])
        now = ln_eta0[0].numpy()[forest] / LN10
        self._lines.log_gf[forest] += self._forest_target - now
        self._tensors_np = self._line_arrays()
        self._cache.clear()

    def _const(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """The label-independent tensors on ``device``: per-line constants in float64, grids in ``dtype``."""
        key = (dtype, str(device))
        if key in self._cache:
            return self._cache[key]
        f64 = torch.float64
        arrays = self._tensors_np
        out = {k: torch.as_tensor(v, device=device, dtype=torch.long if v.dtype.kind in "iu" else f64)
               for k, v in arrays.items()}
        out.update(
            inner_line=torch.as_tensor(self._inner_line, device=device),
            inner_fine=torch.as_tensor(self._inner_fine, device=device),
            inner_dln=torch.as_tensor(self._inner_dln, device=device, dtype=dtype),
            outer_line=torch.as_tensor(self._outer_line, device=device),
            outer_fine=torch.as_tensor(self._outer_fine, device=device),
            outer_dln=torch.as_tensor(self._outer_dln, device=device, dtype=dtype),
            kernel=torch.as_tensor(self._kernel, device=device, dtype=dtype),
            abund0=torch.as_tensor(self._abund0, device=device, dtype=f64),
            metal_el=torch.as_tensor(self._metal, device=device, dtype=f64),
            ion=torch.as_tensor(self._ion, device=device, dtype=f64),
            ln_saha=torch.as_tensor(self._ln_saha, device=device, dtype=f64),
            lam_pix=torch.as_tensor(self.wavelength, device=device, dtype=f64),
        )
        if self._bands is not None:
            out.update(bands=torch.as_tensor(self._bands, device=device, dtype=dtype),
                       band_head=torch.as_tensor(self._band_head, device=device, dtype=f64),
                       band_f=torch.as_tensor(self._band_f, device=device, dtype=f64),
                       band_fc=torch.as_tensor(self._band_fc, device=device, dtype=f64),
                       band_v=torch.as_tensor(self._band_v, device=device, dtype=f64),
                       band_elow=torch.as_tensor(self._band_elow, device=device, dtype=f64),
                       band_length=torch.as_tensor(self._band_length, device=device, dtype=f64))
        self._cache[key] = out
        return out

    # ------------------------------------------------------------------ labels
    @property
    def label_names(self) -> tuple[str, str, str]:
        return LABEL_NAMES

    def check_labels(self, theta: torch.Tensor | np.ndarray, allow_outside: bool = False) -> torch.Tensor:
        """``theta`` as a floating tensor of shape (N, 3), checked: finite and, unless ``allow_outside``,
        within the configured label ranges. Raises ValueError naming the first offending row."""
        if not isinstance(theta, torch.Tensor):
            theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))
        if not theta.is_floating_point():
            theta = theta.to(torch.float64)
        if theta.ndim != 2 or theta.shape[1] != 3:
            raise ValueError(f"labels must have shape (N, 3) = (Teff [K], log g, [M/H]) per star, got shape "
                             f"{tuple(theta.shape)}")
        values = theta.detach()
        bad = ~torch.isfinite(values).all(dim=1)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0])
            raise ValueError(f"labels row {row} is not finite: {values[row].tolist()}")
        if not allow_outside:
            ranges = self._ranges.to(values.device)
            tol = 1e-9 * (ranges[:, 1] - ranges[:, 0])
            low = values.to(torch.float64) < ranges[:, 0] - tol
            high = values.to(torch.float64) > ranges[:, 1] + tol
            out = low | high
            if bool(out.any()):
                row, col = (int(x) for x in torch.nonzero(out)[0])
                raise ValueError(f"labels row {row}: {LABEL_NAMES[col]} = {float(values[row, col]):.6g} is outside "
                                 f"the model's range {tuple(self._ranges[col].tolist())} (SpectraSimConfig."
                                 f"{['teff_range', 'logg_range', 'm_h_range'][col]})")
        return theta

    # ------------------------------------------------------------------ physics
    def _charge_residual(self, ln_pe: torch.Tensor, ln_phi: torch.Tensor, abund: torch.Tensor,
                         ln_c: torch.Tensor, h_index: int) -> torch.Tensor:
        """F(ln P_e) = 2 ln P_e - ln(g tau / kappa_0) - ln Y + ln(1 + Y) + ln f_HI, zero at the solution
        (P_e^2 = g tau Y / ((1 + Y) kappa_0 f_HI), Y = electrons per nucleus)."""
        frac = self._stage_fractions(ln_pe, ln_phi)
        electrons = (abund * (frac[..., 1] + 2.0 * frac[..., 2])).sum(-1) / abund.sum(-1)
        return (2.0 * ln_pe - ln_c - torch.log(electrons) + torch.log1p(electrons)
                + torch.log(frac[:, h_index, 0]))

    @staticmethod
    def _stage_fractions(ln_pe: torch.Tensor, ln_phi: torch.Tensor) -> torch.Tensor:
        """(N, E, 3) Saha fractions of the neutral, first and second ion of each element."""
        ln_r1 = ln_phi[..., 0] - ln_pe[:, None]
        ln_r2 = ln_phi[..., 1] - ln_pe[:, None]
        terms = torch.stack([torch.zeros_like(ln_r1), ln_r1, ln_r1 + ln_r2], dim=-1)
        return torch.softmax(terms, dim=-1)

    @staticmethod
    def _ln_phi(temp: torch.Tensor, c: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, E, 2) ln of the Saha function Phi(T) = N_(i+1) P_e / N_i of each element's first two stages."""
        return (c["ln_saha"][None] + 2.5 * torch.log(temp)[:, None, None]
                - (THETA_EV * LN10 / temp)[:, None, None] * c["ion"][None])

    def _photosphere(self, theta64: torch.Tensor) -> dict[str, torch.Tensor]:
        """The single-layer photosphere of each star (float64): T, P_e, P_gas, ionisation fractions."""
        c = self._const(torch.float64, theta64.device)
        teff, logg, mh = theta64[:, 0], theta64[:, 1], theta64[:, 2]
        temp = teff
        theta_t = THETA_EV / temp
        ln_phi = self._ln_phi(temp, c)
        abund = c["abund0"][None] * torch.exp(LN10 * mh[:, None] * c["metal_el"][None])
        ln_sigma = (math.log(4.158e-10 * HMINUS_BF_CROSS_SECTION * HMINUS_FF_FACTOR) + 2.5 * torch.log(theta_t)
                    + 0.754 * LN10 * theta_t)
        ln_c = LN10 * logg + math.log(TAU_PHOTOSPHERE) - ln_sigma - math.log(self._nh_per_gram)
        h_index = ELEMENT_NAMES.index("H")
        # Newton in ln P_e on detached inputs, then one step on the live inputs: at the converged root
        # that step carries the exact implicit-function derivative d ln P_e / d theta = -F_theta / F_v.
        with torch.no_grad():
            args = (ln_phi.detach(), abund.detach(), ln_c.detach())
            ln_pe = 0.5 * (ln_c.detach() + math.log(1e-4))
            # a fixed number of steps (no early exit on the batch's worst star), so each star's result
            # does not depend on which other stars share its batch
            for _ in range(NEWTON_STEPS):
                f = self._charge_residual(ln_pe, *args, h_index)
                eps = 1e-6
                df = (self._charge_residual(ln_pe + eps, *args, h_index)
                      - self._charge_residual(ln_pe - eps, *args, h_index)) / (2 * eps)
                step = torch.clamp(f / df, -2.0, 2.0)
                ln_pe = ln_pe - step
            if float(step.abs().max()) > 1e-10:
                raise RuntimeError(f"SpectrumModel: the electron-pressure solve did not converge (last Newton step "
                                   f"{float(step.abs().max()):.2g} in ln P_e); labels far outside the model's range?")
            df = (self._charge_residual(ln_pe + 1e-6, *args, h_index)
                  - self._charge_residual(ln_pe - 1e-6, *args, h_index)) / 2e-6
        ln_pe = ln_pe - self._charge_residual(ln_pe, ln_phi, abund, ln_c, h_index) / df
        frac = self._stage_fractions(ln_pe, ln_phi)
        electrons = (abund * (frac[..., 1] + 2.0 * frac[..., 2])).sum(-1) / abund.sum(-1)
        ln_pg = ln_pe + torch.log1p(electrons) - torch.log(electrons)
        return {"temperature": temp, "theta": theta_t, "ln_pe": ln_pe, "ln_pg": ln_pg, "fractions": frac,
                "abundance": abund, "ln_sigma": ln_sigma, "h_neutral": frac[:, h_index, 0]}

    def _line_parameters(self, phot: dict[str, torch.Tensor], theta64: torch.Tensor,
                         c: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ln eta_0, a, c / b) per star and line, float64, shapes (N, L)."""
        temp = phot["temperature"][:, None]
        mh = theta64[:, 2:3]
        frac = phot["fractions"][:, c["element"], c["stage"]]
        b2 = c["two_kt_over_m"][None] * temp + (self.config.microturbulence * 1e5) ** 2
        ln_b = 0.5 * torch.log(b2)
        stim = -torch.expm1(-c["photon_x"][None] / temp)
        ln_eta0 = (c["ln_const"][None] - phot["theta"][:, None] * LN10 * c["excitation"][None]
                   + LN10 * mh * c["metal"][None] + torch.log(frac) + torch.log(stim) - ln_b
                   - phot["ln_sigma"][:, None] - phot["ln_pe"][:, None] - torch.log(phot["h_neutral"])[:, None])
        pg = torch.exp(phot["ln_pg"])[:, None]
        n_e = torch.exp(phot["ln_pe"])[:, None] / (K_BOLTZMANN * temp)
        gamma = (c["gamma_rad"][None] + c["gamma6_coef"][None] * pg * temp ** -0.7
                 + c["stark_coef"][None] * n_e ** (2.0 / 3.0))
        doppler_nu = torch.exp(ln_b) / c["lam_cm"][None]
        damping = gamma / (4.0 * math.pi * doppler_nu)
        c_over_b = C_CMS * torch.exp(-ln_b)
        return ln_eta0, damping, c_over_b

    def _band_strengths(self, phot: dict[str, torch.Tensor], theta64: torch.Tensor,
                        c: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, B) peak band opacity ratio of each TiO band head (molecular Saha equilibrium)."""
        temp = MOLECULE_TEMPERATURE_RATIO * phot["temperature"]
        kt_ev = temp / (THETA_EV * LN10)  # kT in eV
        names = {e: i for i, e in enumerate(ELEMENT_NAMES)}
        abund = phot["abundance"]
        frac = self._stage_fractions(phot["ln_pe"], self._ln_phi(temp, c))  # Saha at the molecule's temperature
        ti, ox, carbon = names["Ti"], names["O"], names["C"]
        oxygen_free = torch.clamp(abund[:, ox] - abund[:, carbon], min=1e-3 * abund[:, ox])  # C locked in CO
        pe = torch.exp(phot["ln_pe"])
        p_h = (torch.exp(phot["ln_pg"]) - pe) / abund.sum(-1)
        hck = HC_OVER_K_ANGSTROM * 1e-8  # h c / k in cm K
        u_tio = (temp / (hck * TIO_ROTATION_CM)) / (-torch.expm1(-hck * TIO_VIBRATION_CM / temp)) \
            * TIO_ELECTRONIC_WEIGHT
        mu = ELEMENTS["Ti"][6] * ELEMENTS["O"][6] / (ELEMENTS["Ti"][6] + ELEMENTS["O"][6]) * AMU
        ln_kp = (1.5 * torch.log(2 * math.pi * mu * K_BOLTZMANN * temp / H_PLANCK ** 2)
                 + torch.log(K_BOLTZMANN * temp) + math.log(ELEMENTS["Ti"][3] * ELEMENTS["O"][3])
                 - torch.log(u_tio) - TIO_DISSOCIATION_EV / kt_ev)
        # n(TiO) / n(H) = P_Ti P_O / (K_p P_H)
        ln_tio = (torch.log(abund[:, ti] * frac[:, ti, 0]) + torch.log(oxygen_free * frac[:, ox, 0])
                  + torch.log(p_h) - ln_kp)
        x_vib = hck * TIO_VIBRATION_CM / temp
        ln_pop = (torch.log(-torch.expm1(-x_vib))[:, None] - x_vib[:, None] * c["band_v"][None]
                  - c["band_elow"][None] / kt_ev[:, None])
        lam_cm = c["band_head"] * 1e-8
        ln_width = torch.log(C_CMS * c["band_length"] * 1e-8 / lam_cm ** 2)  # band width in Hz
        ln_s = (math.log(PI_E2_OVER_MC) + torch.log(c["band_f"] * c["band_fc"])[None] + ln_pop + ln_tio[:, None]
                - ln_width[None] - phot["ln_sigma"][:, None] - phot["ln_pe"][:, None]
                - torch.log(phot["h_neutral"])[:, None])
        return torch.exp(ln_s)

    def photosphere(self, theta: torch.Tensor | np.ndarray, allow_outside: bool = False) -> dict[str, torch.Tensor]:
        """Physical state of the line-forming layer per star (float64 tensors of shape (N,)):
        ``temperature`` (K), ``pressure_gas`` and ``pressure_electron`` (dyn cm^-2), ``electron_density``
        (cm^-3), ``hydrogen_neutral_fraction``."""
        theta = self.check_labels(theta, allow_outside)
        phot = self._photosphere(theta.to(torch.float64))
        pe = torch.exp(phot["ln_pe"])
        return {"temperature": phot["temperature"], "pressure_gas": torch.exp(phot["ln_pg"]),
                "pressure_electron": pe, "electron_density": pe / (K_BOLTZMANN * phot["temperature"]),
                "hydrogen_neutral_fraction": phot["h_neutral"]}

    def _residual_chunk(self, theta: torch.Tensor) -> torch.Tensor:
        dtype = theta.dtype
        c = self._const(dtype, theta.device)
        c64 = self._const(torch.float64, theta.device) if dtype != torch.float64 else c
        theta64 = theta.to(torch.float64)
        phot = self._photosphere(theta64)
        n = theta.shape[0]
        eta = torch.zeros(n, self._n_fine, dtype=dtype, device=theta.device)
        if len(self._lines):
            ln_eta0, damping, c_over_b = (x.to(dtype) for x in self._line_parameters(phot, theta64, c64))
            eta0 = torch.exp(ln_eta0)
            for kind in ("inner", "outer"):
                line = c[f"{kind}_line"]
                if line.numel() == 0:
                    continue
                v = c[f"{kind}_dln"][None] * c_over_b[:, line]
                a = damping[:, line]
                prof = voigt_hjerting(a, v) if kind == "inner" else voigt_hjerting_wing(a, v)
                eta = eta.index_add(1, c[f"{kind}_fine"], eta0[:, line] * prof)
        if self._bands is not None:
            eta = eta + self._band_strengths(phot, theta64, c64).to(dtype) @ c["bands"]
        absorbed = eta / (1.0 + eta)
        k = self.config.oversample
        smoothed = (absorbed.unfold(1, c["kernel"].numel(), k) * c["kernel"]).sum(-1)
        x = HC_OVER_K_ANGSTROM / (c64["lam_pix"][None] * phot["temperature"][:, None])
        beta = self.config.source_function_steepness * 0.375 * x / (-torch.expm1(-x))
        d_max = (2.0 / 3.0) * beta / (1.0 + (2.0 / 3.0) * beta)
        return 1.0 - d_max.to(dtype) * smoothed

    def _chunked(self, fn, theta: torch.Tensor) -> torch.Tensor:
        size = self.config.chunk_size
        if theta.shape[0] <= size:
            return fn(theta)
        return torch.cat([fn(theta[i:i + size]) for i in range(0, theta.shape[0], size)])

    def residual(self, theta: torch.Tensor | np.ndarray, allow_outside: bool = False) -> torch.Tensor:
        """Line absorption alone, flux / continuum, shape (N, n_pix), in the dtype of ``theta``
        (numpy input: float64)."""
        theta = self.check_labels(theta, allow_outside)
        return self._chunked(self._residual_chunk, theta)

    def continuum(self, theta: torch.Tensor | np.ndarray, allow_outside: bool = False) -> torch.Tensor:
        """Planck continuum B_lambda(Teff) divided by its mean over the pixels, shape (N, n_pix)."""
        theta = self.check_labels(theta, allow_outside)
        lam = torch.as_tensor(self.wavelength, dtype=theta.dtype, device=theta.device)
        x = HC_OVER_K_ANGSTROM / (lam[None] * theta[:, :1])
        planck = (lam[None] / lam.mean()) ** -5 / torch.expm1(x)
        return planck / planck.mean(dim=1, keepdim=True)

    def flux(self, theta: torch.Tensor | np.ndarray, allow_outside: bool = False) -> torch.Tensor:
        """Noise-free spectra, continuum x line absorption, shape (N, n_pix), differentiable in ``theta``.

        Parameters
        ----------
        theta : (N, 3) labels (Teff [K], log g [dex cgs], [M/H] [dex]); float32 for speed, float64 for
            derivative checks; numpy arrays are taken as float64.
        allow_outside : accept labels outside the configured ranges (the physics is still defined a
            little beyond them; finite differences at the edges need this).
        """
        theta = self.check_labels(theta, allow_outside)

        def chunk(t: torch.Tensor) -> torch.Tensor:
            return self.continuum(t, allow_outside=True) * self._residual_chunk(t)

        return self._chunked(chunk, theta)

    def line_table(self) -> dict[str, np.ndarray]:
        """The line list: ``label``, ``wavelength`` (A), ``element``, ``stage`` (0 neutral, 1 ion),
        ``excitation`` (eV), ``log_gf``, ``window`` (forest, strong, wide, hydrogen)."""
        ln = self._lines
        return {"label": np.array(ln.label), "wavelength": ln.wavelength.copy(),
                "element": np.array([ELEMENT_NAMES[e] for e in ln.element]), "stage": ln.stage.copy(),
                "excitation": ln.excitation.copy(), "log_gf": ln.log_gf.copy(), "window": np.array(ln.window)}

    # ------------------------------------------------------------------ noise
    @property
    def sky(self) -> np.ndarray:
        """Sky flux per pixel (float64, n_pix) in units of the star's mean continuum."""
        return self._sky.copy()

    def _exposure(self, flux: np.ndarray, snr) -> np.ndarray:
        if flux.ndim != 2 or flux.shape[1] != self.config.n_pix:
            raise ValueError(f"flux must have shape (N, {self.config.n_pix}), got {flux.shape}")
        if np.ndim(snr) == 0:
            snr = _number("snr", snr, float, 0.0, low_open=True)
        else:  # one S/N per row
            snr = np.asarray(snr, dtype=np.float64)
            if snr.shape != (flux.shape[0],):
                raise ValueError(f"snr must be a number or one value per spectrum ({flux.shape[0]}), got shape "
                                 f"{snr.shape}")
            bad = np.flatnonzero(~(np.isfinite(snr) & (snr > 0)))
            if bad.size:
                raise ValueError(f"snr must be finite and > 0; {bad.size} value(s) are not, first at row {bad[0]} "
                                 f"({snr[bad[0]]!r})")
        if not np.all(np.isfinite(flux)) or np.any(flux < 0):
            raise ValueError("flux must be finite and non-negative (a noise-free model flux)")
        per_pix = flux / np.sqrt(flux + self._sky[None])
        med = np.median(per_pix, axis=1)
        if np.any(med <= 0):
            raise ValueError("flux has a non-positive median S/N shape (all-zero spectrum?)")
        return (snr / med) ** 2

    def noise_variance(self, flux: np.ndarray | torch.Tensor, snr) -> np.ndarray:
        """Expected noise variance per pixel (float64, (N, n_pix)) of noise-free spectra ``flux`` observed
        at median per-pixel S/N ``snr`` (a number, or one per spectrum): (f + sky) / c with c the exposure
        scale of each star."""
        flux = _as_numpy(flux)
        c = self._exposure(flux, snr)
        return (flux + self._sky[None]) / c[:, None]

    def expected_ivar(self, flux: np.ndarray | torch.Tensor, snr) -> np.ndarray:
        """1 / :meth:`noise_variance`: the inverse variance the Fisher bound uses."""
        return 1.0 / self.noise_variance(flux, snr)

    def add_noise(self, flux: np.ndarray | torch.Tensor, snr, seed: int, start: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Noisy spectra and the ivar a pipeline would estimate from them.

        Parameters
        ----------
        flux : (N, n_pix) noise-free spectra, rows ``start .. start + N - 1`` of a seeded sequence.
        snr : median per-pixel S/N of each star (a number, or an array with one value per row).
        seed : noise seed; the standard normals of spectrum ``i`` come from block ``i // block_size`` of
            ``numpy.random.default_rng([seed, 1, block])`` alone (the same for every S/N, so noise draws at
            different S/N are common random numbers).
        start : index of the first row in the seeded sequence.

        Returns
        -------
        (noisy_flux, ivar), float32, ivar = c / max(noisy + sky, ivar_floor x sky) (from the noisy flux).
        """
        flux = _as_numpy(flux)
        seed = _number("seed", seed, int, 0)
        start = _number("start", start, int, 0)
        var = self.noise_variance(flux, snr)
        c = (flux + self._sky[None]) / var
        normals = _block_normals(seed, start, flux.shape[0], self.config.n_pix, self.config.block_size)
        noisy = flux + np.sqrt(var) * normals
        floor = self.config.ivar_floor * np.maximum(self._sky[None], 1e-12)
        ivar = c / np.maximum(noisy + self._sky[None], floor)
        return noisy.astype(np.float32), ivar.astype(np.float32)


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _blocks(start: int, n: int, block_size: int):
    """(block, lo, hi) slices of rows start .. start + n - 1 in blocks of ``block_size``."""
    if n == 0:
        return
    first, last = start // block_size, (start + n - 1) // block_size
    for b in range(first, last + 1):
        yield b, max(start - b * block_size, 0), min(start + n - b * block_size, block_size)


def _block_normals(seed: int, start: int, n: int, n_pix: int, block_size: int) -> np.ndarray:
    parts = [np.random.default_rng([seed, 1, b]).standard_normal((block_size, n_pix))[lo:hi]
             for b, lo, hi in _blocks(start, n, block_size)]
    return np.concatenate(parts) if parts else np.zeros((0, n_pix))


def draw_labels(config: SpectraSimConfig, n: int, seed: int, start: int = 0) -> np.ndarray:
    """Labels ``start .. start + n - 1`` (float64, (n, 3): Teff, log g, [M/H]) drawn uniformly from the
    configured ranges; block ``b`` comes from ``numpy.random.default_rng([seed, 0, b])`` alone."""
    n = _number("n", n, int, 0)
    seed = _number("seed", seed, int, 0)
    start = _number("start", start, int, 0)
    ranges = config.label_ranges
    parts = []
    for b, lo, hi in _blocks(start, n, config.block_size):
        u = np.random.default_rng([seed, 0, b]).uniform(size=(config.block_size, 3))[lo:hi]
        parts.append(ranges[:, 0] + u * (ranges[:, 1] - ranges[:, 0]))
    return np.concatenate(parts) if parts else np.zeros((0, 3))


@dataclass
class SpectrumSet:
    """Spectra with their inverse variance and labels.

    Attributes
    ----------
    wavelength : (n_pix,) float64, Angstrom (air), log-uniform.
    flux : (N, n_pix) float32, continuum-normalised flux with noise.
    ivar : (N, n_pix) float32, inverse variance estimated from the noisy flux.
    labels : (N, 3) float64, (Teff, log g, [M/H]).
    snr : the median per-pixel S/N the noise was set to.
    model_flux : (N, n_pix) float32 noise-free flux, or None.
    label_names : names of the label columns.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    labels: np.ndarray
    snr: float
    model_flux: np.ndarray | None = None
    label_names: tuple[str, ...] = LABEL_NAMES

    def __post_init__(self) -> None:
        n, n_pix = self.flux.shape if self.flux.ndim == 2 else (None, None)
        if self.flux.ndim != 2 or self.ivar.shape != self.flux.shape:
            raise ValueError(f"SpectrumSet: flux {self.flux.shape} and ivar {self.ivar.shape} must be equal (N, n_pix)")
        if self.wavelength.shape != (n_pix,):
            raise ValueError(f"SpectrumSet: wavelength has shape {self.wavelength.shape}, expected ({n_pix},)")
        if self.labels.shape != (n, len(self.label_names)):
            raise ValueError(f"SpectrumSet: labels have shape {self.labels.shape}, expected ({n}, "
                             f"{len(self.label_names)})")
        if self.model_flux is not None and self.model_flux.shape != self.flux.shape:
            raise ValueError(f"SpectrumSet: model_flux has shape {self.model_flux.shape}, flux {self.flux.shape}")

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    def take(self, rows: slice | np.ndarray | Sequence[int]) -> SpectrumSet:
        """The spectra ``rows`` (a slice, an index array or a boolean mask)."""
        return SpectrumSet(self.wavelength, self.flux[rows], self.ivar[rows], self.labels[rows], self.snr,
                           None if self.model_flux is None else self.model_flux[rows], self.label_names)


def redraw_noise_fn(model: "SpectrumModel", chunk_rows: int = 1024):
    """A ``noise_fn(clean, snr, rng) -> (flux, ivar)`` for training with the noise redrawn every epoch
    (:func:`calipers.spectra.model.train_member`): :meth:`SpectrumModel.add_noise` of ``model`` with a
    fresh noise seed drawn from ``rng`` on every call, one S/N per row. The ivar is the one a pipeline
    estimates from the *noisy* flux, never the expected ivar of the noise-free flux, which would hand
    a network the true spectrum through its sigma channel. Rows go ``chunk_rows`` at a time (rounded
    up to whole blocks) with start offsets, which gives exactly the draw of one call with flat memory."""
    block = model.config.block_size
    step = block * max(1, int(chunk_rows) // block)

    def noise_fn(clean: np.ndarray, snr: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        seed = int(rng.integers(0, 2 ** 62))
        snr = np.asarray(snr, dtype=np.float64)
        flux = np.empty(clean.shape, dtype=np.float32)
        ivar = np.empty(clean.shape, dtype=np.float32)
        for s in range(0, clean.shape[0], step):
            flux[s:s + step], ivar[s:s + step] = model.add_noise(clean[s:s + step], snr[s:s + step], seed, s)
        return flux, ivar

    return noise_fn


def simulate_spectra(config: SpectraSimConfig, n: int, seed: int, snr: float, start: int = 0,
                     model: SpectrumModel | None = None, keep_model_flux: bool = False,
                     progress: bool = False) -> SpectrumSet:
    """Spectra ``start .. start + n - 1`` of the seeded sequence: labels from the prior
    (:func:`draw_labels`), noise-free flux (:meth:`SpectrumModel.flux`, float32), noise at median per-pixel
    S/N ``snr`` (:meth:`SpectrumModel.add_noise`). Spectrum ``i`` is the same whatever the split.

    Parameters
    ----------
    config : simulator settings.
    n : number of spectra (>= 0).
    seed : non-negative seed (labels use stream 0, noise stream 1).
    snr : median per-pixel S/N (> 0).
    start : index of the first spectrum.
    model : a :class:`SpectrumModel` of ``config`` to reuse (built when None).
    keep_model_flux : also return the noise-free flux.
    progress : show a tqdm bar over chunks.
    """
    n = _number("n", n, int, 0)
    start = _number("start", start, int, 0)
    if model is None:
        model = SpectrumModel(config)
    elif model.config != config:
        raise ValueError("simulate_spectra: the model was built for a different SpectraSimConfig")
    _number("snr", snr, float, 0.0, low_open=True)
    labels = draw_labels(config, n, seed, start)
    # The model runs on chunks aligned to the start of each block, so a spectrum is always computed in
    # the same batch (vectorised float kernels round the tail of a batch differently, at the 1-ulp level).
    bs, cs = config.block_size, config.chunk_size
    jobs = []
    for b, lo, hi in _blocks(start, n, bs):
        for c0 in range((lo // cs) * cs, hi, cs):
            c1 = min(c0 + cs, bs)
            jobs.append((b, c0, c1, max(lo, c0), min(hi, c1)))
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        jobs = tqdm(jobs, desc="simulating spectra", unit="chunk")
    parts = []
    with torch.no_grad():
        for b, c0, c1, r0, r1 in jobs:
            chunk_labels = draw_labels(config, c1 - c0, seed, b * bs + c0)
            flux = model.flux(torch.as_tensor(chunk_labels, dtype=torch.float32)).numpy()
            parts.append(flux[r0 - c0:r1 - c0])
    clean = np.concatenate(parts) if parts else np.zeros((0, config.n_pix), np.float32)
    noisy, ivar = model.add_noise(clean, snr, seed, start)
    return SpectrumSet(model.wavelength.copy(), noisy, ivar, labels, float(snr),
                       clean.astype(np.float32) if keep_model_flux else None)


__all__ = ["COMPONENTS", "ELEMENTS", "LABEL_NAMES", "NAMED_LINES", "PASCHEN_LINES", "TIO_BANDS", "SpectraSimConfig",
           "redraw_noise_fn", "SpectrumModel", "SpectrumSet", "draw_labels", "simulate_spectra", "voigt_hjerting",
           "voigt_hjerting_wing", "wavelength_grid"]
