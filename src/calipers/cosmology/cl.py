"""Angular power spectra with pyccl, for every tracer pair and n(z) realization, and the Gaussian
(Knox) covariance of a survey.

Tracers: ``("shear", i)`` is a :class:`pyccl.WeakLensingTracer` of tomographic bin i;
``("density", i)`` a :class:`pyccl.NumberCountsTracer` of bin i with a constant linear bias and
no RSD or magnification. The data-vector pairs (:func:`tracer_pairs`) follow the DESC 3x2pt
convention: every shear-shear pair i <= j, density auto-spectra only, and every density-shear
(lens i, source j) pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROBES = ("shear", "density")
ARCMIN2_PER_SR = (180.0 * 60.0 / np.pi) ** 2


@dataclass
class CosmologyParams:
    Omega_c: float = 0.25
    Omega_b: float = 0.05
    h: float = 0.67
    n_s: float = 0.96
    sigma8: float = 0.81
    transfer_function: str = "eisenstein_hu"
    matter_power_spectrum: str = "halofit"


@dataclass
class SurveySpec:
    """A survey for the Gaussian covariance (defaults: roughly LSST year 1 sources)."""

    f_sky: float = 0.3
    n_gal_arcmin2: float = 10.0   # all bins together; each bin gets its share of the galaxies
    sigma_e: float = 0.26         # shape noise per component


@dataclass
class ClSpec:
    probes: tuple = ("shear", "density")
    bias: float = 1.5
    ell_min: float = 20.0
    ell_max: float = 2000.0
    n_ell: int = 15


def make_cosmology(p: CosmologyParams):
    import pyccl as ccl

    return ccl.Cosmology(Omega_c=p.Omega_c, Omega_b=p.Omega_b, h=p.h, n_s=p.n_s, sigma8=p.sigma8,
                         transfer_function=p.transfer_function, matter_power_spectrum=p.matter_power_spectrum)


def ell_bins(ell_min: float, ell_max: float, n_ell: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-spaced ell bins: (effective ell = geometric centre, bin width)."""
    if not 0 < ell_min < ell_max or n_ell < 1:
        raise ValueError(f"need 0 < ell_min < ell_max and n_ell >= 1, got {ell_min}, {ell_max}, {n_ell}")
    edges = np.geomspace(ell_min, ell_max, n_ell + 1)
    return np.sqrt(edges[1:] * edges[:-1]), np.diff(edges)


# sacc data types of the C_ell of each pair of tracer kinds (sacc.standard_types names)
SACC_DATA_TYPES = {("shear", "shear"): "galaxy_shear_cl_ee", ("density", "density"): "galaxy_density_cl",
                   ("density", "shear"): "galaxy_shearDensity_cl_e"}


def sacc_points(pairs, ell) -> list[tuple[str, str, str, float]]:
    """(sacc data type, tracer 1, tracer 2, ell) of every element of a pair-major, ell-minor C_ell
    data vector; tracers are named ``bin<i>`` as TheoryCl writes them."""
    return [(SACC_DATA_TYPES[(a[0], b[0])], f"bin{a[1]}", f"bin{b[1]}", float(e)) for a, b in pairs for e in ell]


def select_sacc_points(s, points, source: str = "sacc file") -> np.ndarray:
    """Values of a ``sacc.Sacc`` at the given points (see :func:`sacc_points`), in that order.

    Raises
    ------
    ValueError
        Naming every missing (data type, tracers) combination, or the ells the file has for a
        combination whose ell binning differs.
    """
    out = np.empty(len(points))
    problems = []
    cache = {}
    for i, (dtype, t1, t2, ell) in enumerate(points):
        key = (dtype, t1, t2)
        if key not in cache:
            ells, vals = s.get_ell_cl(dtype, t1, t2)
            cache[key] = (np.asarray(ells, dtype=float), np.asarray(vals, dtype=float))
        ells, vals = cache[key]
        if len(ells) == 0:
            msg = f"no {dtype} data for tracers ({t1}, {t2})"
        else:
            j = np.flatnonzero(np.isclose(ells, ell, rtol=1e-6))
            if len(j) == 1:
                out[i] = vals[j[0]]
                continue
            msg = f"{dtype} ({t1}, {t2}) has no point at ell = {ell:.6g} (it has ells {np.round(ells, 3).tolist()})"
        if msg not in problems:
            problems.append(msg)
    if problems:
        raise ValueError(f"{source}: the data vector does not match the simulator's: " + "; ".join(problems[:6])
                         + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))
    return out


def tracer_pairs(n_bins: int, probes=PROBES) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    unknown = set(probes) - set(PROBES)
    if unknown or not probes:
        raise ValueError(f"probes must be a non-empty subset of {PROBES}, got {list(probes)}")
    pairs = []
    if "shear" in probes:
        pairs += [(("shear", i), ("shear", j)) for i in range(n_bins) for j in range(i, n_bins)]
    if "density" in probes:
        pairs += [(("density", i), ("density", i)) for i in range(n_bins)]
    if "shear" in probes and "density" in probes:
        pairs += [(("density", i), ("shear", j)) for i in range(n_bins) for j in range(n_bins)]
    return pairs


def check_nz(zgrid: np.ndarray, nz: np.ndarray, cosmo=None) -> None:
    """Clear errors for n(z) a theory code must not be given."""
    z = np.asarray(zgrid, dtype=float)
    nz = np.atleast_2d(nz)
    if nz.shape[-1] != len(z):
        raise ValueError(f"n(z) has {nz.shape[-1]} points but the z grid has {len(z)}")
    if not np.all(np.isfinite(nz)):
        raise ValueError("n(z) holds NaN or inf values")
    neg = np.argwhere(nz < 0)
    if len(neg):
        raise ValueError(f"n(z) has negative values ({len(neg)} points; first in bin {neg[0][0]} at "
                         f"z = {z[neg[0][-1]]:.4g}: {nz[tuple(neg[0])]:.3g})")
    empty = np.flatnonzero(np.trapezoid(nz, z, axis=-1) <= 0)
    if empty.size:
        raise ValueError(f"n(z) of bin(s) {empty.tolist()} integrate to zero (empty bin)")
    if z[0] < 0:
        raise ValueError(f"the z grid starts below 0 ({z[0]})")
    if cosmo is not None:
        zmax = 1.0 / cosmo.cosmo.spline_params.A_SPLINE_MIN - 1.0
        if z[-1] > zmax:
            raise ValueError(f"the z grid reaches z = {z[-1]:.3g}, beyond the cosmology's range (z <= {zmax:.3g}); "
                             "cut the grid or widen the cosmology's spline range")


def _tracers(cosmo, zgrid, nz, bias, probes):
    import pyccl as ccl

    out = {}
    for i, n_i in enumerate(nz):
        if "shear" in probes:
            out[("shear", i)] = ccl.WeakLensingTracer(cosmo, dndz=(zgrid, n_i))
        if "density" in probes:
            out[("density", i)] = ccl.NumberCountsTracer(cosmo, has_rsd=False, dndz=(zgrid, n_i),
                                                         bias=(zgrid, np.full_like(zgrid, bias)))
    return out


def angular_power_spectra(cosmo, zgrid: np.ndarray, nz: np.ndarray, ell: np.ndarray, pairs, bias: float) -> np.ndarray:
    """C_ell (n_pairs, n_ell) of the n(z) ``nz`` (n_bins, len(zgrid)) for each tracer pair."""
    import pyccl as ccl

    check_nz(zgrid, nz, cosmo)
    probes = {t[0] for pair in pairs for t in pair}
    tr = _tracers(cosmo, np.asarray(zgrid, float), np.atleast_2d(nz), bias, probes)
    return np.array([ccl.angular_cl(cosmo, tr[a], tr[b], ell) for a, b in pairs])


def noise_spectra(n_bins: int, fractions: np.ndarray, survey: SurveySpec) -> dict:
    """Noise power per tracer: sigma_e^2 / n_i (shear) and 1 / n_i (density), n_i per steradian."""
    n_sr = survey.n_gal_arcmin2 * np.asarray(fractions, dtype=float) * ARCMIN2_PER_SR
    if np.any(n_sr <= 0):
        raise ValueError(f"every bin needs galaxies for its noise; bin fractions {list(fractions)}")
    return {**{("shear", i): survey.sigma_e ** 2 / n_sr[i] for i in range(n_bins)},
            **{("density", i): 1.0 / n_sr[i] for i in range(n_bins)}}


def knox_covariance(cosmo, zgrid, nz, ell, dell, pairs, bias: float, fractions, survey: SurveySpec) -> np.ndarray:
    """Gaussian covariance of the data vector (pair-major, ell-minor):
    Cov[(ab),(cd)](l) = [Ct_ac Ct_bd + Ct_ad Ct_bc] / ((2l + 1) dl f_sky), Ct = C + noise."""
    import pyccl as ccl

    probes = {t[0] for pair in pairs for t in pair}
    tr = _tracers(cosmo, np.asarray(zgrid, float), np.atleast_2d(nz), bias, probes)
    noise = noise_spectra(len(np.atleast_2d(nz)), fractions, survey)
    cache: dict = {}

    def ct(a, b):
        key = (a, b) if (a, b) in cache or (b, a) not in cache else (b, a)
        if key not in cache:
            cache[key] = ccl.angular_cl(cosmo, tr[a], tr[b], ell) + (noise[a] if a == b else 0.0)
        return cache[key]

    n_ell = len(ell)
    cov = np.zeros((len(pairs) * n_ell, len(pairs) * n_ell))
    norm = (2 * ell + 1) * dell * survey.f_sky
    for p, (a, b) in enumerate(pairs):
        for q, (c, d) in enumerate(pairs[p:], start=p):
            block = (ct(a, c) * ct(b, d) + ct(a, d) * ct(b, c)) / norm
            idx_p, idx_q = np.arange(p * n_ell, (p + 1) * n_ell), np.arange(q * n_ell, (q + 1) * n_ell)
            cov[idx_p, idx_q] = block
            cov[idx_q, idx_p] = block
    return cov
