"""Compiled (numba) per-object kernels for Gaussian-mixture point estimates.

Each object is handled independently (``prange`` over rows, so results do not depend on the
chunking or the number of threads), in float64, on its heaviest components that together leave
out at most ``w_min`` of the weight (which moves a CDF by no more than that). The normal CDF
uses the Abramowitz & Stegun 7.1.26 form of erfc (absolute error < 1.5e-7) so that the CDF and
the density of a component share one exponential and the loops vectorise.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_FAST = {"fastmath": True, "cache": True}


@njit(cache=True, inline="always")
def _keep(w, mu, s, w_min, kw, km, ks):
    """Copy the heaviest components into kw, km, ks until the weight left out is <= w_min."""
    order = np.argsort(-w)
    left = 0.0
    for j in range(w.shape[0]):
        left += w[j]
    k = 0
    for j in order:
        if left <= w_min and k > 0:
            break
        kw[k] = w[j]
        km[k] = mu[j]
        ks[k] = s[j]
        left -= w[j]
        k += 1
    return k


@njit(**_FAST)
def _cdf_pdf(z, kw, km, iks, k):
    """Mixture CDF and density at z (iks = 1 / sigma)."""
    f = 0.0
    d = 0.0
    for j in range(k):
        u = (z - km[j]) * iks[j]
        e = math.exp(-0.5 * u * u)
        x = abs(u) * _INV_SQRT2
        t = 1.0 / (1.0 + 0.3275911 * x)
        tail = 0.5 * t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) * e
        f += kw[j] * (1.0 - tail if u > 0 else tail)
        d += kw[j] * iks[j] * e
    return f, d * _INV_SQRT_2PI


@njit(parallel=True, **_FAST)
def quantiles_kernel(w, mu, s, probs, w_min, tol):
    """Quantiles (n, len(probs)) by safeguarded Newton on the analytic CDF (bisection fallback)."""
    n, kk = w.shape
    nq = probs.shape[0]
    out = np.empty((n, nq))
    probits = np.empty(nq)
    for q in range(nq):  # standard-normal quantiles, the starting guesses' shape
        x = 0.0
        for _ in range(60):
            x -= (0.5 * math.erfc(-x * _INV_SQRT2) - probs[q]) / (_INV_SQRT_2PI * math.exp(-0.5 * x * x))
        probits[q] = x
    for i in prange(n):
        kw = np.empty(kk)
        km = np.empty(kk)
        ks = np.empty(kk)
        k = _keep(w[i], mu[i], s[i], w_min, kw, km, ks)
        iks = np.empty(k)
        total = 0.0
        mean = 0.0
        second = 0.0
        lo0 = np.inf
        hi0 = -np.inf
        for j in range(k):
            iks[j] = 1.0 / ks[j]
            total += kw[j]
            mean += kw[j] * km[j]
            second += kw[j] * (km[j] * km[j] + ks[j] * ks[j])
            lo0 = min(lo0, km[j] - 10.0 * ks[j])
            hi0 = max(hi0, km[j] + 10.0 * ks[j])
        mean /= total
        sd = math.sqrt(max(second / total - mean * mean, 0.0))
        for q in range(nq):
            target = probs[q] * total
            lo, hi = lo0, hi0
            z = min(max(mean + sd * probits[q], lo), hi)  # the Gaussian guess
            for _ in range(100):
                f, d = _cdf_pdf(z, kw, km, iks, k)
                g = f - target
                if abs(g) <= tol * total:
                    break
                if g < 0:
                    lo = z
                else:
                    hi = z
                if hi - lo <= 1e-12 * max(1.0, abs(z)):
                    break
                step = z - g / d if d > 0 else 0.5 * (lo + hi)
                z = step if lo < step < hi else 0.5 * (lo + hi)
            out[i, q] = z
    return out


@njit(**_FAST)
def _density(z, c, km, iv, k):
    """sum_j c_j exp(-(z - m_j)^2 iv_j / 2) (c = w / sigma; the mixture density times sqrt(2 pi))."""
    acc = 0.0
    for j in range(k):
        dz = z - km[j]
        acc += c[j] * math.exp(-0.5 * dz * dz * iv[j])
    return acc


@njit(parallel=True, **_FAST)
def mode_kernel(w, mu, s, w_min, n_peaks, n_starts, max_iter):
    """Global mode: Newton on log p from the best of the sharpest peaks, see mixture_mode."""
    n, kk = w.shape
    out = np.empty(n)
    for i in prange(n):
        kw = np.empty(kk)
        km = np.empty(kk)
        ks = np.empty(kk)
        k = _keep(w[i], mu[i], s[i], w_min, kw, km, ks)
        c = np.empty(k)
        iv = np.empty(k)
        for j in range(k):
            c[j] = kw[j] / ks[j]
            iv[j] = 1.0 / (ks[j] * ks[j])
        # candidate starts: the means of the n_peaks components with the highest peaks w / s
        order = np.argsort(-c)
        nc = min(n_peaks, k)
        dens = np.empty(nc)
        for j in range(nc):
            dens[j] = _density(km[order[j]], c, km, iv, k)
        starts = np.argsort(-dens)[: min(n_starts, nc)]
        best_z = km[order[starts[0]]]
        best_p = -1.0
        for st in starts:
            z = km[order[st]]
            for _ in range(max_iter):
                p = 0.0
                g = 0.0
                h = 0.0
                prec = 0.0
                for j in range(k):
                    dz = z - km[j]
                    r = c[j] * math.exp(-0.5 * dz * dz * iv[j])
                    u = dz * iv[j]
                    p += r
                    g -= r * u
                    h += r * (u * u - iv[j])
                    prec += r * iv[j]
                if p <= 0:
                    break
                g /= p                      # d log p / dz
                h = h / p - g * g           # d2 log p / dz2
                prec /= p                   # local 1 / sigma^2
                lim = 1.0 / math.sqrt(prec)
                if h < 0:
                    step = min(max(-g / h, -lim), lim)  # Newton, within one local sigma
                else:
                    step = g / prec                      # mean-shift where log p is not concave
                z += step
                if abs(step) <= 1e-10 * max(1.0, abs(z)):
                    break
            p = _density(z, c, km, iv, k)
            if p > best_p:
                best_p, best_z = p, z
        out[i] = best_z
    return out
