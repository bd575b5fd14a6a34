"""Per-bin transit depths by least squares (issue 20).

For each planet the white-light channel is fitted first with a quadratic baseline in time and the
transit shape; its residual is the common-mode jitter (plus the channel's own white noise), and it
enters every bin's fit as a regressor. Each bin is then fitted with

    flux_b(t) = c0 + c1 tau + c2 tau^2 - d_b S_b(t) + beta_b r_white(t),

``tau`` the time scaled to [-1, 1] and ``S_b`` the transit of unit depth with the bin's limb darkening
(batman, at the white-light radius ratio, then once more at the bin's own first-pass radius ratio). ``d_hat`` is the least-squares depth and ``sigma_hat``
its formal error ``s sqrt((X^T X)^-1_dd)`` with ``s^2 = RSS / (T - 5)``: the right error for white
noise, too small when the residuals are correlated (the AR(1) jitter left over after the white-light
regressor, the drifts' mis-fit), by a factor the benchmark reports.

The ephemeris (period, a/Rs, inclination) and the limb-darkening coefficients are taken as known,
as the challenge's auxiliary data give them; a full pipeline would fit them on the white light.
"""
from __future__ import annotations

import numpy as np

__all__ = ["DepthFit", "extract_depths", "unit_depth_shapes", "unit_depth_shapes_per_bin"]


class DepthFit(dict):
    """What :func:`extract_depths` returns (a dict of arrays): ``d_hat``, ``sigma_hat``, ``rms``
    (residual RMS per bin), ``beta`` (jitter coefficient per bin) [n, K]; ``white_depth``,
    ``white_sigma``, ``white_rms`` [n]."""


def unit_depth_shapes(time, radius_ratio, ld, period, a_rs, inclination) -> np.ndarray:
    """Transit shapes of unit depth [n, K, T]: ``(1 - batman light curve) / radius_ratio^2`` for
    planet i at ``time[i]`` with radius ratio ``radius_ratio[i]`` and limb darkening ``ld[i, j]`` [n, K, 2]."""
    ratio = np.asarray(radius_ratio, dtype=np.float64)
    return unit_depth_shapes_per_bin(time, np.repeat(ratio[:, None], np.shape(ld)[1], axis=1), ld, period, a_rs,
                                     inclination)


def unit_depth_shapes_per_bin(time, radius_ratio, ld, period, a_rs, inclination) -> np.ndarray:
    """As :func:`unit_depth_shapes`, with a radius ratio per planet and bin ``radius_ratio`` [n, K]."""
    import batman

    time = np.asarray(time, dtype=np.float64)
    n, n_bins = ld.shape[:2]
    out = np.empty((n, n_bins, time.shape[1]))
    params = batman.TransitParams()
    params.t0, params.ecc, params.w, params.limb_dark = 0.0, 0.0, 90.0, "quadratic"
    for i in range(n):
        params.per, params.a, params.inc = float(period[i]), float(a_rs[i]), float(inclination[i])
        params.rp, params.u = float(radius_ratio[i, 0]), [float(v) for v in ld[i, 0]]
        model = batman.TransitModel(params, time[i])
        for j in range(n_bins):
            params.rp, params.u = float(radius_ratio[i, j]), [float(ld[i, j, 0]), float(ld[i, j, 1])]
            out[i, j] = (1.0 - model.light_curve(params)) / radius_ratio[i, j] ** 2
    return out


def _fit_bins(shared: np.ndarray, shapes: np.ndarray, flux: np.ndarray):
    """Every bin's least-squares fit ``flux = shared @ c - d * shape`` by Frisch-Waugh-Lovell: the
    columns every bin of a planet shares (``shared`` [n, T, 4]: baseline and jitter regressor) are
    projected out once per planet, leaving one column per bin. Exactly the full five-column fit's
    ``d``, its formal error ``s sqrt((X^T X)^-1_dd)`` with ``s^2 = RSS / (T - 5)``, ``s`` and the
    jitter coefficient (the last shared column), without building [n, K, T, 5] design matrices."""
    st = np.swapaxes(shared, 1, 2)  # [n, 4, T]
    proj = np.linalg.solve(st @ shared, st)  # (Q^T Q)^-1 Q^T, [n, 4, T]

    def residual(v):  # v [n, K, T] minus its projection on the shared columns
        return v - (v @ np.swapaxes(proj, 1, 2)) @ st

    y_res, s_res = residual(flux), residual(shapes)
    ss = np.sum(s_res * s_res, axis=-1)
    d = -np.sum(s_res * y_res, axis=-1) / ss
    resid = y_res + d[..., None] * s_res
    s2 = np.sum(resid ** 2, axis=-1) / (flux.shape[-1] - shared.shape[-1] - 1)
    coef = (flux + d[..., None] * shapes) @ np.swapaxes(proj, 1, 2)  # the shared columns' coefficients
    return d, np.sqrt(s2 / ss), np.sqrt(s2), coef[..., 3]


def _solve(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched least squares: x [..., T, P], y [..., T] -> coefficients [..., P], residuals [..., T],
    (X^T X)^-1 [..., P, P]."""
    xt = np.swapaxes(x, -1, -2)
    inv = np.linalg.inv(xt @ x)
    coef = (inv @ (xt @ y[..., None]))[..., 0]
    resid = y - (x @ coef[..., None])[..., 0]
    return coef, resid, inv


def extract_depths(time, flux, white, ld, ld_white, period, a_rs, inclination) -> DepthFit:
    """Least-squares depths of every bin of every planet.

    Parameters
    ----------
    time : [n, T] days from mid-transit
    flux : [n, K, T] normalised light curves; ``white`` [n, T] the white-light channel
    ld : [n, K, 2] quadratic limb darkening per bin; ``ld_white`` [n, 2]
    period, a_rs, inclination : [n] the (known) ephemeris, days and degrees

    Raises
    ------
    ValueError naming the planet, bin and time index of the first non-finite point.
    """
    flux = np.asarray(flux, dtype=np.float64)
    white = np.asarray(white, dtype=np.float64)
    time = np.asarray(time, dtype=np.float64)
    n, n_bins, n_t = flux.shape
    if white.shape != (n, n_t) or time.shape != (n, n_t):
        raise ValueError(f"extract_depths: flux {flux.shape}, white {white.shape} and time {time.shape} disagree")
    for name, arr in (("flux", flux), ("white", white), ("time", time)):
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            where = ", ".join(f"{k} {v}" for k, v in zip(("planet", "bin", "time index")
                                                          if arr.ndim == 3 else ("planet", "time index"), bad[0]))
            raise ValueError(f"extract_depths: {name} is not finite at {where} ({len(bad)} point(s) in all)")
    tau = time / np.abs(time).max(axis=1, keepdims=True)
    ones = np.ones_like(tau)
    # the white-light channel: baseline + transit, its depth and the jitter proxy
    # the shape depends weakly on the radius ratio: start at 0.1, refit at the fitted one twice more
    radius = np.full(n, 0.1)
    for _ in range(3):
        s_white = unit_depth_shapes(time, radius, np.asarray(ld_white)[:, None, :], period, a_rs, inclination)[:, 0]
        coef_w, resid_w, inv_w = _solve(np.stack([ones, tau, tau ** 2, -s_white], axis=-1), white)
        radius = np.sqrt(np.clip(coef_w[:, 3], 1e-6, None))
    white_rms = np.sqrt(np.sum(resid_w ** 2, axis=1) / (n_t - 4))
    shapes = unit_depth_shapes(time, np.sqrt(np.clip(coef_w[:, 3], 1e-6, None)), np.asarray(ld), period, a_rs,
                               inclination)
    shared = np.stack([ones, tau, tau ** 2, resid_w], axis=-1)  # [n, T, 4]: the columns every bin shares
    d_hat, sigma_hat, rms, beta = _fit_bins(shared, shapes, flux)
    # once more with each bin's shape at its own radius ratio (the ingress and egress lengthen with
    # it; the white-light shape biased the deepest bins by up to 0.4% of their depth)
    shapes = unit_depth_shapes_per_bin(time, np.sqrt(np.clip(d_hat, 1e-6, None)), np.asarray(ld), period,
                                       a_rs, inclination)
    d_hat, sigma_hat, rms, beta = _fit_bins(shared, shapes, flux)
    return DepthFit(d_hat=d_hat, sigma_hat=sigma_hat, rms=rms, beta=beta,
                    white_depth=coef_w[:, 3], white_sigma=white_rms * np.sqrt(inv_w[:, 3, 3]), white_rms=white_rms)
