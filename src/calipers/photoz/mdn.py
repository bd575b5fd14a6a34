"""A mixture density network for p(z | photometry)."""
from __future__ import annotations

import math

import torch
from torch import nn


def photometry_features(mags: torch.Tensor, errs: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Magnitudes, adjacent colours, log errors and non-detection flags, concatenated."""
    colours = mags[:, :-1] - mags[:, 1:]
    return torch.cat([mags, colours, torch.log(errs), flags], dim=1)


def n_features(n_bands: int) -> int:
    return 4 * n_bands - 1


class MixtureDensityNetwork(nn.Module):
    """MLP from photometry to a ``n_components`` Gaussian mixture over redshift.

    The feature standardisation (mean, std) is a buffer of the module, so it is saved in the
    state dict with the weights and the model cannot be applied with the wrong scaling.

    Parameters
    ----------
    n_bands : int
        Number of photometric bands.
    n_components : int
        Gaussian components in the mixture.
    hidden : int
        Width of the hidden layers.
    n_layers : int
        Number of hidden layers.
    """

    LOG_SIGMA_MIN = math.log(1e-3)
    LOG_SIGMA_MAX = math.log(3.0)

    def __init__(self, n_bands: int, n_components: int = 10, hidden: int = 128, n_layers: int = 3):
        super().__init__()
        self.n_bands, self.n_components = n_bands, n_components
        d = n_features(n_bands)
        layers: list[nn.Module] = []
        for _ in range(n_layers):
            layers += [nn.Linear(d, hidden), nn.SiLU()]
            d = hidden
        layers.append(nn.Linear(d, 3 * n_components))
        self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(n_features(n_bands)))
        self.register_buffer("feature_std", torch.ones(n_features(n_bands)))

    def set_scaling(self, mags: torch.Tensor, errs: torch.Tensor, flags: torch.Tensor) -> None:
        """Fit the feature standardisation on training photometry."""
        f = photometry_features(mags, errs, flags)
        self.feature_mean.copy_(f.mean(0))
        self.feature_std.copy_(f.std(0).clamp_min(1e-6))

    def forward(self, mags: torch.Tensor, errs: torch.Tensor, flags: torch.Tensor):
        """Return (log_weights, means, log_sigmas), each (n, n_components)."""
        x = (photometry_features(mags, errs, flags) - self.feature_mean) / self.feature_std
        logits, means, log_sigma = self.net(x).split(self.n_components, dim=-1)
        return (
            torch.log_softmax(logits, dim=-1),
            means,
            log_sigma.clamp(self.LOG_SIGMA_MIN, self.LOG_SIGMA_MAX),
        )


def mixture_log_prob(log_w: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(z) of a batch of Gaussian mixtures (n, K) at z (n,)."""
    zz = z[:, None]
    lp = log_w - 0.5 * ((zz - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(lp, dim=-1)


def mixture_nll(out, z: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of true redshifts under the network's mixtures."""
    return -mixture_log_prob(*out, z).mean()
