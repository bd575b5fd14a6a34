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
