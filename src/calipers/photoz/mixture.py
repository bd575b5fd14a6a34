"""Gaussian-mixture p(z): densities, CDFs, point estimates and qp output.

All functions take arrays ``weights, means, stds`` of shape (n_objects, n_components), with
weights summing to 1 along axis 1.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_SQRT2 = math.sqrt(2.0)


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def mixture_pdf(weights, means, stds, z) -> np.ndarray:
    """p(z) on a grid ``z`` (m,) for every object: (n, m)."""
    w, mu, s, zg = _t(weights), _t(means), _t(stds), _t(z)
    u = (zg[None, None, :] - mu[:, :, None]) / s[:, :, None]
    p = (w[:, :, None] / (s[:, :, None] * math.sqrt(2 * math.pi)) * torch.exp(-0.5 * u * u)).sum(1)
    return p.numpy()


def mixture_cdf(weights, means, stds, z) -> np.ndarray:
    """P(<z) on a grid ``z`` (m,) for every object: (n, m)."""
    w, mu, s, zg = _t(weights), _t(means), _t(stds), _t(z)
    u = (zg[None, None, :] - mu[:, :, None]) / (s[:, :, None] * _SQRT2)
    return (w[:, :, None] * 0.5 * (1 + torch.erf(u))).sum(1).numpy()


def _cdf_at(w, mu, s, z):
    return (w * 0.5 * (1 + torch.erf((z[:, None] - mu) / (s * _SQRT2)))).sum(1)


def mixture_quantiles(weights, means, stds, probs, n_iter: int = 40) -> np.ndarray:
    """Quantiles of each mixture by bisection on the analytic CDF: (n, len(probs))."""
    w, mu, s = (torch.as_tensor(a, dtype=torch.float32) for a in (weights, means, stds))
    lo0 = (mu - 8 * s).min(1).values
    hi0 = (mu + 8 * s).max(1).values
    out = []
    for p in np.atleast_1d(probs):
        lo, hi = lo0.clone(), hi0.clone()
        for _ in range(n_iter):
            mid = 0.5 * (lo + hi)
            below = _cdf_at(w, mu, s, mid) < p
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        out.append(0.5 * (lo + hi))
    return torch.stack(out, 1).numpy().astype(np.float64)


def mixture_mode(weights, means, stds, n_iter: int = 8) -> np.ndarray:
    """Global mode: start at the component mean of highest density, then mean-shift steps."""
    w, mu, s = (torch.as_tensor(a, dtype=torch.float32) for a in (weights, means, stds))
    logc = torch.log(w.clamp_min(1e-30)) - torch.log(s)

    # density at every component mean, (n, K candidates)
    dens = torch.logsumexp(logc[:, None, :] - 0.5 * ((mu[:, :, None] - mu[:, None, :]) / s[:, None, :]) ** 2, dim=-1)
    z = mu.gather(1, dens.argmax(1, keepdim=True))[:, 0]
    inv_var = s ** -2
    for _ in range(n_iter):
        r = torch.softmax(logc - 0.5 * ((z[:, None] - mu) / s) ** 2, dim=1)
        z = (r * inv_var * mu).sum(1) / (r * inv_var).sum(1)
    return z.numpy().astype(np.float64)


def mixture_point_estimates(weights, means, stds) -> dict[str, np.ndarray]:
    """RAIL-style point estimates: ``zmode``, ``zmean``, ``zmedian`` and the central 68%
    interval ``zlo68``/``zhi68`` (16th and 84th percentiles)."""
    q = mixture_quantiles(weights, means, stds, [0.5, 0.16, 0.84])
    return {
        "zmode": mixture_mode(weights, means, stds),
        "zmean": np.sum(np.asarray(weights, dtype=np.float64) * np.asarray(means, dtype=np.float64), axis=1),
        "zmedian": q[:, 0],
        "zlo68": q[:, 1],
        "zhi68": q[:, 2],
    }


def mixture_to_qp(weights, means, stds, ancil: dict | None = None):
    """A ``qp.mixmod`` ensemble (readable by ``qp.read`` and RAIL's evaluators)."""
    import qp

    ens = qp.Ensemble(
        qp.mixmod,
        data=dict(weights=np.asarray(weights), means=np.asarray(means), stds=np.asarray(stds)),
    )
    if ancil:
        ens.set_ancil(ancil)
    return ens
