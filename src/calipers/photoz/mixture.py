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


def _grid_eval(weights, means, stds, z, kernel) -> np.ndarray:
    """Evaluate sum_k w_k kernel(z, mu_k, s_k) on a grid, in row blocks of bounded memory."""
    w, mu, s, zg = _t(weights), _t(means), _t(stds), _t(z)
    out = np.empty((w.shape[0], len(zg)))
    rows = max(1, 4_000_000 // max(1, w.shape[1] * len(zg)))  # ~32 MB per (rows, K, m) temporary
    for a in range(0, w.shape[0], rows):
        b = min(a + rows, w.shape[0])
        out[a:b] = (w[a:b, :, None] * kernel(zg[None, None, :], mu[a:b, :, None], s[a:b, :, None])).sum(1).numpy()
    return out


def mixture_pdf(weights, means, stds, z) -> np.ndarray:
    """p(z) on a grid ``z`` (m,) for every object: (n, m)."""
    return _grid_eval(weights, means, stds, z,
                      lambda x, m, s: torch.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi)))


def mixture_cdf(weights, means, stds, z) -> np.ndarray:
    """P(<z) on a grid ``z`` (m,) for every object: (n, m)."""
    return _grid_eval(weights, means, stds, z, lambda x, m, s: 0.5 * (1 + torch.erf((x - m) / (s * _SQRT2))))


_BLOCK = 8192  # rows per block: keeps the (rows, components) temporaries in cache


def _f32(*arrays):
    return [torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in arrays]


def _blocks(n: int):
    for start in range(0, n, _BLOCK):
        yield slice(start, min(start + _BLOCK, n))


def _bisect_quantiles(w, mu, s, probs: torch.Tensor, n_iter: int, n_newton: int = 1) -> torch.Tensor:
    """Joint quantile search for several probabilities: w, mu, s (n, K); returns (n, len(probs)).

    ``n_iter`` bisection steps bracket each quantile, then ``n_newton`` Newton steps on the CDF
    (kept inside the bracket) polish it.
    """
    lo = (mu - 8 * s).min(1).values[:, None].expand(-1, len(probs)).clone()
    hi = (mu + 8 * s).max(1).values[:, None].expand(-1, len(probs)).clone()
    w3, mu3, inv3 = w[:, None, :], mu[:, None, :], (1.0 / (s * _SQRT2))[:, None, :]
    target = 2 * probs[None, :] - 1  # compare sum(w * erf) with 2p - 1 (weights sum to 1)
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        below = (w3 * torch.erf((mid[:, :, None] - mu3) * inv3)).sum(-1) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    z = 0.5 * (lo + hi)
    for _ in range(n_newton):
        u = (z[:, :, None] - mu3) * inv3
        f = (w3 * torch.erf(u)).sum(-1) - target              # 2 (F - p)
        d = (w3 * inv3 * torch.exp(-u * u)).sum(-1) * (2 / math.sqrt(math.pi))  # 2 F'
        step = torch.where(d > 0, f / d.clamp_min(1e-30), torch.zeros_like(f))
        z = torch.minimum(torch.maximum(z - step, lo), hi)
    return z


def mixture_quantiles(weights, means, stds, probs, n_iter: int = 16, keep: int = 16,
                      tolerance: float = 1e-3) -> np.ndarray:
    """Quantiles of each mixture by bisection on the analytic CDF: (n, len(probs)).

    For speed each mixture is first pruned to its ``keep`` heaviest components
    (renormalised); rows whose dropped weight exceeds ``tolerance`` are redone with every
    component, so the result never depends on the pruning by more than ``tolerance`` in
    probability. ``n_iter`` halvings of the bracket are followed by one guarded Newton step.
    """
    w, mu, s = _f32(weights, means, stds)
    probs_t = torch.as_tensor(np.atleast_1d(probs), dtype=torch.float32)
    out = torch.empty((w.shape[0], len(probs_t)), dtype=torch.float32)
    k = min(keep, w.shape[1])
    for sl in _blocks(w.shape[0]):
        wb, mub, sb = w[sl], mu[sl], s[sl]
        if k < w.shape[1]:
            wk, idx = torch.topk(wb, k, dim=1)
            dropped = 1 - wk.sum(1)
            q = _bisect_quantiles(wk / wk.sum(1, keepdim=True), mub.gather(1, idx), sb.gather(1, idx), probs_t, n_iter)
            redo = dropped > tolerance
            if bool(redo.any()):
                q[redo] = _bisect_quantiles(wb[redo], mub[redo], sb[redo], probs_t, n_iter)
        else:
            q = _bisect_quantiles(wb, mub, sb, probs_t, n_iter)
        out[sl] = q
    return out.numpy().astype(np.float64)


def _mode_search(w, mu, s, n_peaks: int, n_starts: int, n_iter: int) -> torch.Tensor:
    logc = (torch.log(w.clamp_min(1e-30)) - torch.log(s))[:, None, :]
    mu3, iv3 = mu[:, None, :], (s ** -2)[:, None, :]

    def log_terms(z):  # z (n, c) -> (n, c, K)
        return logc - 0.5 * (z[:, :, None] - mu3) ** 2 * iv3

    c = min(n_peaks, w.shape[1])
    z = mu.gather(1, torch.topk(logc[:, 0, :], c, dim=1).indices)
    z = z.gather(1, torch.topk(torch.logsumexp(log_terms(z), -1), min(n_starts, c), dim=1).indices)
    for _ in range(n_iter):
        r = torch.softmax(log_terms(z), dim=-1)
        u = (z[:, :, None] - mu3) * iv3                  # -(d/dz) of each component's log
        g = -(r * u).sum(-1)                              # d log p / dz
        h = (r * (u * u - iv3)).sum(-1) - g * g           # d2 log p / dz2
        prec = (r * iv3).sum(-1)                          # local 1/sigma^2
        newton = (-g / torch.where(h < 0, h, -1.0)).clamp(-prec.rsqrt(), prec.rsqrt())  # trust region
        z = z + torch.where(h < 0, newton, g / prec)      # mean-shift step where not concave
    return z.gather(1, torch.logsumexp(log_terms(z), -1).argmax(1, keepdim=True))[:, 0]


def mixture_mode(weights, means, stds, n_peaks: int = 8, n_starts: int = 3, n_iter: int = 6, keep: int = 16,
                 tolerance: float = 1e-3) -> np.ndarray:
    """Global mode of each mixture.

    The mixture density is evaluated at the means of the ``n_peaks`` components with the highest
    peaks (w / sigma); from the ``n_starts`` best of those, ``n_iter`` Newton steps on the log
    density are taken (limited to one local sigma; a mean-shift step wherever the log density is
    not concave, which always climbs); the end point of highest density wins. Newton converges
    quadratically near a mode, so a fixed number of steps reaches float32 precision and every row
    is computed the same way whatever else is in its chunk. For speed the search uses the ``keep``
    heaviest components; rows whose dropped weight exceeds ``tolerance`` are redone with all.
    """
    w, mu, s = _f32(weights, means, stds)
    out = torch.empty(w.shape[0], dtype=torch.float32)
    k = min(keep, w.shape[1])
    for sl in _blocks(w.shape[0]):
        wb, mub, sb = w[sl], mu[sl], s[sl]
        if k < w.shape[1]:
            wk, idx = torch.topk(wb, k, dim=1)
            z = _mode_search(wk, mub.gather(1, idx), sb.gather(1, idx), n_peaks, n_starts, n_iter)
            redo = (1 - wk.sum(1)) > tolerance
            if bool(redo.any()):
                z[redo] = _mode_search(wb[redo], mub[redo], sb[redo], n_peaks, n_starts, n_iter)
        else:
            z = _mode_search(wb, mub, sb, n_peaks, n_starts, n_iter)
        out[sl] = z
    return out.numpy().astype(np.float64)


POINT_ESTIMATES = ("zmode", "zmean", "zmedian", "zlo68", "zhi68")


def mixture_point_estimates(weights, means, stds, which=POINT_ESTIMATES) -> dict[str, np.ndarray]:
    """RAIL-style point estimates: ``zmode``, ``zmean``, ``zmedian`` and the central 68%
    interval ``zlo68``/``zhi68`` (16th and 84th percentiles); ``which`` selects a subset."""
    unknown = set(which) - set(POINT_ESTIMATES)
    if unknown:
        raise ValueError(f"unknown point estimate(s) {sorted(unknown)}; choose from {POINT_ESTIMATES}")
    out: dict[str, np.ndarray] = {}
    if "zmode" in which:
        out["zmode"] = mixture_mode(weights, means, stds)
    if "zmean" in which:
        out["zmean"] = np.sum(np.asarray(weights, dtype=np.float64) * np.asarray(means, dtype=np.float64), axis=1)
    probs = {"zmedian": 0.5, "zlo68": 0.16, "zhi68": 0.84}
    wanted = [k for k in probs if k in which]
    if wanted:
        q = mixture_quantiles(weights, means, stds, [probs[k] for k in wanted])
        out |= {k: q[:, j] for j, k in enumerate(wanted)}
    return out


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
