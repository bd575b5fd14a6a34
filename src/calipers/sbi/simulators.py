"""Simulators: a prior plus a batched ``simulate(theta) -> x`` (arrays in, arrays out).

:class:`GaussianLinear` is sbibm's ``gaussian_linear`` task, whose posterior is analytic, for
testing the whole SBI chain: theta ~ N(0, prior_var I) and x | theta ~ N(theta, noise_var I)
in ``dim`` dimensions, so theta | x ~ N(x prior_var / (prior_var + noise_var),
prior_var noise_var / (prior_var + noise_var) I).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GaussianLinear:
    dim: int = 10
    prior_var: float = 0.1
    noise_var: float = 0.1
    name: str = "gaussian_linear"

    @property
    def param_names(self) -> list[str]:
        return [f"theta_{i}" for i in range(self.dim)]

    def sample_prior(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(0.0, np.sqrt(self.prior_var), (n, self.dim))

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        theta = np.atleast_2d(theta)
        return theta + rng.normal(0.0, np.sqrt(self.noise_var), theta.shape)

    def prior_torch(self):
        """The prior as a torch distribution (what sbi needs)."""
        import torch
        from torch.distributions import MultivariateNormal

        return MultivariateNormal(torch.zeros(self.dim), self.prior_var * torch.eye(self.dim))

    def true_posterior(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance) of theta | x."""
        shrink = self.prior_var / (self.prior_var + self.noise_var)
        return shrink * np.asarray(x, dtype=float), shrink * self.noise_var * np.eye(self.dim)

    def sample_true_posterior(self, x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        mean, cov = self.true_posterior(np.ravel(x))
        return rng.multivariate_normal(mean, cov, n)


SIMULATORS = {"gaussian_linear": GaussianLinear}


def make_simulator(name: str, **options):
    if name not in SIMULATORS:
        raise ValueError(f"unknown simulator {name!r}; choose from {sorted(SIMULATORS)}")
    return SIMULATORS[name](**options)


@dataclass
class CosmologyCl:
    """Tomographic C_ell simulator: theta = (Omega_m, sigma8) under a uniform box prior.

    The n(z) arrays are given (the stages read them from an ``NZEstimate`` output, see
    ``calipers.core.simulations.simulator_from_spec``). Each simulation builds a pyccl cosmology (Omega_c = Omega_m - Omega_b; Omega_b, h, n_s fixed),
    takes the n(z) of every tomographic bin - the fiducial one, or
    (``marginalise_nz``) one of its realizations drawn at random, so that the posterior
    marginalises over the n(z) uncertainty - computes C_ell for every tracer pair and adds noise
    drawn from the Gaussian (Knox) covariance of the survey at the fiducial cosmology. The data
    vector is C_ell scaled by ell(ell+1)/2pi x 1e5, pair-major, ell-minor.
    """

    zgrid: np.ndarray | None = None       # n(z) grid
    nz_fid: np.ndarray | None = None      # fiducial n(z) per bin (n_bins, nz)
    nz_real: np.ndarray | None = None     # realizations (n_real, n_bins, nz)
    marginalise_nz: bool = True
    probes: tuple = ("shear",)
    ell_min: float = 20.0
    ell_max: float = 1000.0
    n_ell: int = 8
    omega_m_range: tuple = (0.2, 0.4)
    sigma8_range: tuple = (0.6, 1.0)
    Omega_b: float = 0.05
    h: float = 0.67
    n_s: float = 0.96
    fiducial: tuple = (0.3, 0.81)
    f_sky: float = 0.3
    n_gal_arcmin2: float = 10.0
    sigma_e: float = 0.26
    bias: float = 1.5
    name: str = "cosmology_cl"

    def __post_init__(self):
        from calipers import cosmology as cos

        if self.zgrid is None or self.nz_fid is None or self.nz_real is None:
            raise ValueError("cosmology_cl needs zgrid, nz_fid and nz_real (e.g. from an NZEstimate output)")
        self.probes = tuple(self.probes)
        self.zgrid, self.nz_fid, self.nz_real = (np.asarray(a, dtype=float) for a in (self.zgrid, self.nz_fid, self.nz_real))
        self.ell, self.dell = cos.ell_bins(self.ell_min, self.ell_max, self.n_ell)
        self.pairs = cos.tracer_pairs(len(self.nz_fid), self.probes)
        self.scale = np.tile(self.ell * (self.ell + 1) / (2 * np.pi) * 1e5, len(self.pairs))
        cosmo = self._cosmology(self.fiducial)
        fractions = np.full(len(self.nz_fid), 1.0 / len(self.nz_fid))
        cov = cos.knox_covariance(cosmo, self.zgrid, self.nz_fid, self.ell, self.dell, self.pairs, self.bias, fractions,
                                  cos.SurveySpec(self.f_sky, self.n_gal_arcmin2, self.sigma_e))
        self.noise_chol = np.linalg.cholesky(cov * np.outer(self.scale, self.scale))

    @property
    def param_names(self) -> list[str]:
        return ["Omega_m", "sigma8"]

    def _cosmology(self, theta):
        from calipers import cosmology as cos

        om, s8 = float(theta[0]), float(theta[1])
        return cos.make_cosmology(cos.CosmologyParams(Omega_c=om - self.Omega_b, Omega_b=self.Omega_b, h=self.h,
                                                      n_s=self.n_s, sigma8=s8))

    def _low_high(self):
        return np.array([self.omega_m_range[0], self.sigma8_range[0]]), np.array([self.omega_m_range[1], self.sigma8_range[1]])

    def sample_prior(self, n: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self._low_high()
        return rng.uniform(lo, hi, (n, 2))

    def theory(self, theta, nz) -> np.ndarray:
        from calipers import cosmology as cos

        cl = cos.angular_power_spectra(self._cosmology(theta), self.zgrid, nz, self.ell, self.pairs, self.bias)
        return cl.ravel() * self.scale

    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        theta = np.atleast_2d(theta)
        out = np.empty((len(theta), len(self.scale)))
        for i, t in enumerate(theta):
            nz = self.nz_real[rng.integers(len(self.nz_real))] if self.marginalise_nz else self.nz_fid
            out[i] = self.theory(t, nz) + self.noise_chol @ rng.standard_normal(len(self.scale))
        return out

    def observation_from_sacc(self, s, source: str = "sacc file") -> np.ndarray:
        """The data vector (scaled as :meth:`simulate` returns it) of the C_ell in a ``sacc.Sacc``
        (e.g. a TheoryCl output): the points of this simulator's tracer pairs and ell bins, which
        the file may hold among others; a clear error names what does not match."""
        from calipers import cosmology as cos

        points = cos.sacc_points(self.pairs, self.ell)
        return cos.select_sacc_points(s, points, source) * self.scale

    def prior_torch(self):
        import torch
        from sbi.utils import BoxUniform

        lo, hi = self._low_high()
        return BoxUniform(torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32))


SIMULATORS["cosmology_cl"] = CosmologyCl
