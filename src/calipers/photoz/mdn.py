"""A mixture density network for p(z | photometry)."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn


def photometry_features(mags: torch.Tensor, errs: torch.Tensor, flags: torch.Tensor,
                        colours: str = "adjacent") -> torch.Tensor:
    """Magnitudes, colours (adjacent bands, or all pairs), log errors and non-detection flags."""
    if colours == "all":
        i, j = torch.triu_indices(mags.shape[1], mags.shape[1], offset=1)
        col = mags[:, i] - mags[:, j]
    else:
        col = mags[:, :-1] - mags[:, 1:]
    return torch.cat([mags, col, torch.log(errs), flags], dim=1)


def n_features(n_bands: int, colours: str = "adjacent") -> int:
    n_col = n_bands * (n_bands - 1) // 2 if colours == "all" else n_bands - 1
    return 3 * n_bands + n_col


# a continuous feature whose training spread is below this is treated as constant: it is centred
# but not scaled (scale 1), so an unseen value is never amplified (the old 1e-6 floor turned a
# non-detection flag that was constant in training into an input of 1e6)
MIN_FEATURE_SCALE = 1e-2


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
    activation : str
        Hidden-layer non-linearity: silu, relu, gelu or tanh.
    colours : str
        Colour features: ``adjacent`` bands or ``all`` pairs.
    z_range : (float, float), optional
        Redshift range of the model: every component mean is clamped into it (in training
        and prediction alike), so no p(z) is centred outside the redshifts the model knows.
        None: unbounded (models saved before the range was recorded).
    """

    LOG_SIGMA_MIN = math.log(1e-3)
    LOG_SIGMA_MAX = math.log(3.0)

    ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}

    def __init__(self, n_bands: int, n_components: int = 10, hidden: int = 128, n_layers: int = 3,
                 activation: str = "silu", colours: str = "adjacent",
                 z_range: tuple[float, float] | None = None):
        super().__init__()
        if z_range is not None:
            lo, hi = (float(v) for v in z_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"z_range must be two finite numbers lo <= hi, got {z_range!r}")
            z_range = (lo, hi)
        self.z_range = z_range
        if colours not in ("adjacent", "all"):
            raise ValueError(f"colours must be 'adjacent' or 'all', got {colours!r}")
        self.colours = colours
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(self.ACTIVATIONS)}, got {activation!r}")
        self.n_bands, self.n_components = n_bands, n_components
        d = n_features(n_bands, colours)
        layers: list[nn.Module] = []
        for _ in range(n_layers):
            layers += [nn.Linear(d, hidden), self.ACTIVATIONS[activation]()]
            d = hidden
        layers.append(nn.Linear(d, 3 * n_components))
        self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(d_in := n_features(n_bands, colours)))
        self.register_buffer("feature_std", torch.ones(d_in))

    def set_scaling(self, mags: torch.Tensor, errs: torch.Tensor, flags: torch.Tensor) -> None:
        """Fit the feature standardisation on training photometry.

        Magnitudes, colours and log errors are standardised by their training mean and std; a
        feature whose std is below :data:`MIN_FEATURE_SCALE` (constant in training) is centred
        with scale 1. The non-detection flags are 0/1 indicators and are passed unchanged
        (mean 0, scale 1), whatever their training frequency.
        """
        f = photometry_features(mags, errs, flags, self.colours)
        mean, std = f.mean(0), f.std(0) if len(f) > 1 else torch.zeros(f.shape[1])
        std = torch.where(torch.isfinite(std) & (std >= MIN_FEATURE_SCALE), std, torch.ones_like(std))
        n_flags = flags.shape[1]
        mean[-n_flags:], std[-n_flags:] = 0.0, 1.0
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    @torch.no_grad()
    def init_output(self, z: torch.Tensor, width: float = 0.1) -> None:
        """Start every galaxy near one mixture spread over the training redshifts ``z``: equal
        weights, component means at the K quantiles (k + 1/2) / K of z, widths ``width`` x std(z),
        with the last layer's mean and width weights scaled down 10x. (From the default
        initialisation the means start near z = 0 and must first climb to the data; starting
        on the data gives a better validation NLL in fewer epochs: see the README.)"""
        k = self.n_components
        z = torch.as_tensor(z, dtype=torch.float64)
        last = self.net[-1]
        last.weight[k:].mul_(0.1)
        last.bias[:k] = 0.0
        last.bias[k:2 * k] = torch.quantile(z, (torch.arange(k, dtype=torch.float64) + 0.5) / k).float()
        last.bias[2 * k:] = math.log(width * max(float(z.std()), 1e-3))

    def forward(self, mags: torch.Tensor, errs: torch.Tensor, flags: torch.Tensor):
        """Return (log_weights, means, log_sigmas), each (n, n_components)."""
        x = (photometry_features(mags, errs, flags, self.colours) - self.feature_mean) / self.feature_std
        logits, means, log_sigma = self.net(x).split(self.n_components, dim=-1)
        if self.z_range is not None:
            means = means.clamp(*self.z_range)
        return (
            torch.log_softmax(logits, dim=-1),
            means,
            log_sigma.clamp(self.LOG_SIGMA_MIN, self.LOG_SIGMA_MAX),
        )


def mixture_log_prob(log_w: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(z) of a batch of Gaussian mixtures (..., K) at z (...): any leading dimensions
    (e.g. (members, rows))."""
    zz = z[..., None]
    lp = log_w - 0.5 * ((zz - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(lp, dim=-1)


def mixture_nll(out, z: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of true redshifts under the network's mixtures."""
    return -mixture_log_prob(*out, z).mean()


_SQRT_2PI = math.sqrt(2 * math.pi)


def _abs_moment(m: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """E|X| for X ~ N(m, var)."""
    sd = torch.sqrt(var)
    u = m / sd
    return m * torch.erf(u / math.sqrt(2.0)) + 2 * sd * torch.exp(-0.5 * u * u) / _SQRT_2PI


@functools.lru_cache(maxsize=16)
def _pair_selectors(k: int, dtype, device) -> tuple[torch.Tensor, ...]:
    """(K, K (K - 1) / 2) 0/1 matrices whose columns pick the first and the second component of
    each pair i < j: ``x @ first`` is x_i for every pair (and their difference and sum, for
    x_i - x_j and x_i + x_j). A product with them gathers by matrix
    multiplication - each output is one input times 1 plus zeros, so exactly x_i - and its
    gradient is a matrix product too, several times faster on a CPU than index gathers and their
    scatter-add backward."""
    i, j = torch.triu_indices(k, k, offset=1)
    first = torch.zeros(k, len(i), dtype=dtype, device=device)
    second = torch.zeros(k, len(i), dtype=dtype, device=device)
    first[i, torch.arange(len(i))] = 1
    second[j, torch.arange(len(i))] = 1
    return first, second, first - second, first + second


def mixture_scores(out, z: torch.Tensor, cde_weight: float = 0.0, crps_weight: float = 0.0) -> torch.Tensor:
    """Per-row training score ``NLL + cde_weight * CDE loss + crps_weight * CRPS`` of Gaussian
    mixtures (..., K) at z (...), all in closed form; returns (...).

    - NLL: ``-log p(z)``;
    - CDE loss (quadratic score): ``int p^2 dz - 2 p(z)``;
    - CRPS (Grimit et al. 2006): ``E|X - z| - E|X - X'| / 2``.

    The two pair sums over components (``int p^2`` and ``E|X - X'|``) are symmetric in the
    pair, so they are taken over the K (K - 1) / 2 pairs i < j (twice) plus the K diagonal
    terms, sharing the Gaussian factor between both scores: about half the work of the full
    K x K sums (:func:`mixture_cde_loss`, :func:`mixture_crps`), with the same value up to
    float rounding. All three are proper scores, so any mix is minimised by the true p(z).
    """
    log_w, mu, log_sigma = out
    sigma = torch.exp(log_sigma)
    offset = z[..., None] - mu
    u_true = offset / sigma
    # log of each component's weighted density at the truth: log w - u^2/2 - log sigma - log sqrt(2 pi)
    log_terms = log_w - 0.5 * u_true * u_true - log_sigma - 0.5 * math.log(2 * math.pi)
    log_p = torch.logsumexp(log_terms, dim=-1)
    loss = -log_p
    if cde_weight <= 0 and crps_weight <= 0:
        return loss
    w = torch.exp(log_w)
    var = sigma * sigma
    first, second, difference, total = _pair_selectors(mu.shape[-1], mu.dtype, mu.device)
    ww = (w @ first) * (w @ second)
    d = mu @ difference
    sd = torch.sqrt(var @ total)
    u = d / sd
    gauss = torch.exp(-0.5 * u * u) / _SQRT_2PI  # standard normal density at u
    w2 = w * w
    if cde_weight > 0:  # int p^2 = sum_ij w_i w_j N(mu_i - mu_j; 0, var_i + var_j)
        sq = (w2 / (2 * math.sqrt(math.pi) * sigma)).sum(-1) + 2 * (ww * gauss / sd).sum(-1)
        loss = loss + cde_weight * (sq - 2 * torch.exp(log_p))
    if crps_weight > 0:  # E|X - X'| = sum_ij w_i w_j E|N(mu_i - mu_j, var_i + var_j)|
        # E|X - z| = sum_k w_k E|N(z - mu_k, var_k)| = sum_k w_k [m erf(u / sqrt 2) + 2 sigma phi(u)],
        # and w_k phi(u) = sigma_k exp(log_terms_k): the Gaussian factor of the NLL is reused
        near = (w * offset * torch.erf(u_true / math.sqrt(2.0)) + 2 * var * torch.exp(log_terms)).sum(-1)
        spread = ((2 / math.sqrt(math.pi)) * w2 * sigma).sum(-1) \
            + 2 * (ww * (d * torch.erf(u / math.sqrt(2.0)) + 2 * sd * gauss)).sum(-1)
        loss = loss + crps_weight * (near - 0.5 * spread)
    return loss


def _pair_terms(w: torch.Tensor, mu: torch.Tensor, var: torch.Tensor):
    """Pairwise (..., K, K) weight products, mean differences and variance sums of a mixture."""
    return (w[..., :, None] * w[..., None, :], mu[..., :, None] - mu[..., None, :], var[..., :, None] + var[..., None, :])


def mixture_cde_loss(out, z: torch.Tensor) -> torch.Tensor:
    """Mean CDE loss (quadratic score) ``int p^2 dz - 2 p(z_true)``, analytic for Gaussian mixtures
    (the full K x K sum; :func:`mixture_scores` is the training form)."""
    log_w, mu, log_sigma = out
    ww, d, v = _pair_terms(torch.exp(log_w), mu, torch.exp(2 * log_sigma))
    sq = (ww * torch.exp(-0.5 * d * d / v) / torch.sqrt(2 * math.pi * v)).sum((-2, -1))
    return (sq - 2 * torch.exp(mixture_log_prob(log_w, mu, log_sigma, z))).mean()


def mixture_crps(out, z: torch.Tensor) -> torch.Tensor:
    """Mean CRPS ``E|X - z| - E|X - X'| / 2`` of Gaussian mixtures, in closed form
    (Grimit et al. 2006): a proper score that, unlike the NLL, grows only linearly with the
    distance of the truth from the mass, so it weighs catastrophic outliers differently
    (the full K x K sum; :func:`mixture_scores` is the training form)."""
    log_w, mu, log_sigma = out
    w, var = torch.exp(log_w), torch.exp(2 * log_sigma)
    ww, d, v = _pair_terms(w, mu, var)
    near = (w * _abs_moment(z[..., None] - mu, var)).sum(-1)
    spread = (ww * _abs_moment(d, v)).sum((-2, -1))
    return (near - 0.5 * spread).mean()
