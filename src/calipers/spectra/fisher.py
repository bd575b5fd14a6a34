"""The information ceiling of a spectral regression of surface gravity: Fisher matrices, the marginal
Cramer-Rao bound (CRLB) of log g, its prior-aware (Bayesian) form, and the largest R^2 they allow.

For a star with noise-free spectrum f(theta) and Gaussian noise of inverse variance w per pixel, the
Fisher matrix of the parameters is F = J^T diag(w) J with J = d f / d theta (:func:`jacobian`, by
forward-mode autograd through :class:`calipers.spectra.simulate.SpectrumModel`). Nuisance parameters
(a free continuum scale s and tilt t, f -> f (s + t (lambda - lambda_mid) / (lambda_max - lambda_min)) at
s = 1, t = 0) add the columns f and f (lambda - lambda_mid) / range (:func:`continuum_nuisance_jacobian`).

- Marginal CRLB: sigma^2 = [F^-1]_gg, the Schur complement 1 / (F_gg - F_go F_oo^-1 F_og) over the other
  parameters (Teff, [M/H], and the nuisances when included): the smallest variance of any unbiased
  estimator of log g when the others are unknown too. :func:`marginal_crlb` computes it stably: F is
  scaled to unit diagonal (the bound is invariant to rescaling parameters, so this is the same as
  measuring each in its own natural unit) and factored by Cholesky; a star whose scaled matrix is
  numerically singular in the log g direction gets an infinite bound (and a log message).
- Plain R^2_max = 1 - mean(sigma^2_CRLB) / Var(log g) (:func:`r2_ceiling`). It is a bound for unbiased
  estimators only; at low S/N the CRLB exceeds the prior variance and this R^2_max goes negative: it
  is then not a bound on what a (biased, prior-shrinking) regression can reach.
- Bayesian form (:func:`bayesian_crlb`): the posterior variance [(F + J_prior)^-1]_gg of the locally
  linearised model with a Gaussian prior of information J_prior. Default (``prior="gaussian"``): a
  Gaussian of the same variance as the uniform prior on each label, J = 12 / width^2. The uniform
  prior itself has infinite Fisher information (its density jumps at the edges), so the van Trees
  inequality with it is empty; among priors of a given variance the Gaussian has the least
  information (1 / variance), so this is the least prior-informed smooth version of the survey's
  prior, and for a model linear in theta it is exactly the Bayes-optimal mean squared error. It is an
  approximation, not a strict bound, for the uniform prior. ``prior="cosine"`` uses the van Trees
  bound with the smooth cos^2 prior on the same interval (information 4 pi^2 / width^2), which is a
  strict lower bound on the MSE for that (narrower, variance width^2 (1/12 - 1/(2 pi^2))) prior.
  Nuisance parameters get no prior information. R^2_max (Bayesian) = 1 - mean(posterior variance) /
  Var(log g); it tends to 0 as the spectra carry no information, never below.

The noise is the EXPECTED inverse variance at the S/N (:meth:`SpectrumModel.expected_ivar`), not a noisy
draw's estimate.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

LOGG_INDEX = 1


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def jacobian(model, theta: torch.Tensor | np.ndarray, chunk_size: int | None = None, allow_outside: bool = False,
             return_flux: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """d flux / d theta per star by forward-mode autograd (``torch.func.jvp``, one pass per label).

    Parameters
    ----------
    model : an object with ``flux(theta, allow_outside=...)`` (N, P) -> (N, n_pix) and
        ``check_labels(theta, allow_outside)``, e.g. :class:`calipers.spectra.simulate.SpectrumModel`.
    theta : (N, P) labels (numpy input is taken as float64); the dtype sets the precision.
    chunk_size : stars per evaluation (default: the model config's ``chunk_size``, else all).
    allow_outside : passed to the model (labels beyond the configured ranges).
    return_flux : also return the noise-free flux.

    Returns
    -------
    jac : (N, n_pix, P) tensor in the dtype of ``theta``; with ``return_flux``, ``(flux, jac)``.
    """
    theta = model.check_labels(theta, allow_outside)
    if chunk_size is None:
        config = getattr(model, "config", None)
        chunk_size = getattr(config, "chunk_size", theta.shape[0]) or theta.shape[0]
    if int(chunk_size) < 1:
        raise ValueError(f"jacobian: chunk_size must be >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)

    def forward(t: torch.Tensor) -> torch.Tensor:
        return model.flux(t, allow_outside=True)

    fluxes, jacs = [], []
    for i in range(0, theta.shape[0], chunk_size):
        part = theta[i:i + chunk_size].detach()
        cols = []
        primal = None
        for k in range(part.shape[1]):
            tangent = torch.zeros_like(part)
            tangent[:, k] = 1.0
            primal, col = torch.func.jvp(forward, (part,), (tangent,))
            cols.append(col)
        jacs.append(torch.stack(cols, dim=-1))
        fluxes.append(primal)
    if not jacs:
        raise ValueError("jacobian: no stars given (theta has 0 rows)")
    jac = torch.cat(jacs)
    return (torch.cat(fluxes), jac) if return_flux else jac


def continuum_nuisance_jacobian(flux: np.ndarray | torch.Tensor, wavelength: np.ndarray) -> np.ndarray:
    """(N, n_pix, 2) Jacobian columns of a free continuum scale and tilt at their fiducial values:
    ``flux`` and ``flux * (lambda - lambda_mid) / (lambda_max - lambda_min)``."""
    flux = _as_float64(flux)
    lam = np.asarray(wavelength, dtype=np.float64)
    if flux.ndim != 2 or lam.shape != (flux.shape[1],):
        raise ValueError(f"continuum_nuisance_jacobian: flux {flux.shape} and wavelength {lam.shape} must be "
                         "(N, n_pix) and (n_pix,)")
    tilt = (lam - 0.5 * (lam[0] + lam[-1])) / (lam[-1] - lam[0])
    return np.stack([flux, flux * tilt[None]], axis=-1)


def fisher_matrix(jac: np.ndarray | torch.Tensor, ivar: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-star Fisher matrices F = J^T diag(ivar) J, float64 (N, P, P).

    Parameters
    ----------
    jac : (N, n_pix, P) Jacobian of the noise-free flux.
    ivar : (N, n_pix) expected inverse noise variance (>= 0; 0 masks a pixel).
    """
    jac = _as_float64(jac)
    ivar = _as_float64(ivar)
    if jac.ndim != 3 or ivar.shape != jac.shape[:2]:
        raise ValueError(f"fisher_matrix: jac {jac.shape} must be (N, n_pix, P) and ivar {ivar.shape} (N, n_pix)")
    if not np.all(np.isfinite(ivar)) or np.any(ivar < 0):
        raise ValueError("fisher_matrix: ivar must be finite and >= 0")
    if not np.all(np.isfinite(jac)):
        raise ValueError("fisher_matrix: the Jacobian has non-finite entries")
    return np.einsum("npi,np,npj->nij", jac, ivar, jac, optimize=True)


def marginal_crlb(fisher: np.ndarray, index: int = LOGG_INDEX) -> np.ndarray:
    """Marginal Cramer-Rao variance [F^-1]_(index, index) of each star (float64, (N,)), with every other
    parameter of F free (the Schur complement), computed by Cholesky on the unit-diagonal scaled matrix.
    Stars with a matrix singular in that direction get ``inf``."""
    fisher = np.asarray(fisher, dtype=np.float64)
    if fisher.ndim != 3 or fisher.shape[1] != fisher.shape[2]:
        raise ValueError(f"marginal_crlb: fisher must be (N, P, P), got {fisher.shape}")
    n, p, _ = fisher.shape
    if not 0 <= index < p:
        raise ValueError(f"marginal_crlb: index {index} out of range for {p} parameters")
    if not np.all(np.isfinite(fisher)):
        raise ValueError("marginal_crlb: the Fisher matrices have non-finite entries")
    fisher = 0.5 * (fisher + np.swapaxes(fisher, 1, 2))
    diag = np.einsum("nii->ni", fisher)
    out = np.full(n, np.inf)
    ok = diag[:, index] > 0
    # a parameter with zero information elsewhere makes the matrix singular; it cannot help log g
    scale = np.sqrt(np.where(diag > 0, diag, 1.0))
    scaled = fisher / (scale[:, :, None] * scale[:, None, :])
    unit = np.zeros(p)
    unit[index] = 1.0
    n_singular = 0
    for i in np.nonzero(ok)[0]:
        m = scaled[i]
        try:
            chol = np.linalg.cholesky(m)
            cond_ok = np.min(np.diag(chol)) ** 2 > 1e-13
        except np.linalg.LinAlgError:
            cond_ok = False
        if cond_ok:
            y = np.linalg.solve(chol, unit)
            out[i] = float(y @ y) / diag[i, index]  # e^T M^-1 e = |L^-1 e|^2
        else:
            n_singular += 1
    if n_singular:
        logger.info("marginal_crlb: %d of %d Fisher matrices are numerically singular; their bound is inf",
                    n_singular, n)
    return out


def prior_information(ranges: np.ndarray | Sequence[Sequence[float]], kind: str = "gaussian",
                      n_nuisance: int = 0) -> np.ndarray:
    """Diagonal prior information (P,) of uniform priors on ``ranges`` ((K, 2) low/high per label), for
    :func:`bayesian_crlb`: ``"gaussian"``, 12 / width^2 (a Gaussian of the same variance); ``"cosine"``,
    4 pi^2 / width^2 (the cos^2 prior on the same interval, van Trees). ``n_nuisance`` zeros are appended
    (nuisance parameters without prior information)."""
    ranges = np.asarray(ranges, dtype=np.float64)
    if ranges.ndim != 2 or ranges.shape[1] != 2 or np.any(ranges[:, 1] <= ranges[:, 0]):
        raise ValueError(f"prior_information: ranges must be (K, 2) with low < high, got {ranges.tolist()}")
    width2 = (ranges[:, 1] - ranges[:, 0]) ** 2
    if kind == "gaussian":
        info = 12.0 / width2
    elif kind == "cosine":
        info = 4.0 * math.pi ** 2 / width2
    else:
        raise ValueError(f"prior_information: kind must be 'gaussian' or 'cosine', got {kind!r}")
    return np.concatenate([info, np.zeros(int(n_nuisance))])


def bayesian_crlb(fisher: np.ndarray, prior_info: np.ndarray, index: int = LOGG_INDEX) -> np.ndarray:
    """Posterior variance [(F + diag(prior_info))^-1]_(index, index) per star (float64, (N,)): the
    Bayes-optimal MSE of the locally linearised model with a Gaussian prior (see the module docstring).

    Parameters
    ----------
    fisher : (N, P, P) Fisher matrices.
    prior_info : (P,) diagonal prior information (:func:`prior_information`) or a (P, P) matrix.
    index : the parameter (log g: 1).
    """
    fisher = np.asarray(fisher, dtype=np.float64)
    prior = np.asarray(prior_info, dtype=np.float64)
    p = fisher.shape[-1]
    if prior.shape == (p,):
        prior = np.diag(prior)
    if prior.shape != (p, p) or not np.all(np.isfinite(prior)):
        raise ValueError(f"bayesian_crlb: prior_info must be ({p},) or ({p}, {p}) and finite, got {prior.shape}")
    return marginal_crlb(fisher + prior[None], index)


def r2_ceiling(sigma2: np.ndarray, labels: np.ndarray) -> float:
    """1 - mean(sigma2) / Var(labels): the largest R^2 a regression of ``labels`` can reach if its
    per-object mean squared error is ``sigma2`` (population variance, ddof = 0)."""
    sigma2 = np.asarray(sigma2, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if sigma2.shape != labels.shape or labels.size < 2:
        raise ValueError(f"r2_ceiling: sigma2 ({sigma2.size}) and labels ({labels.size}) must have the same "
                         "length >= 2")
    var = float(np.var(labels))
    if var <= 0:
        raise ValueError("r2_ceiling: the labels have zero variance")
    return 1.0 - float(np.mean(sigma2)) / var


def ceiling_table(model, theta: torch.Tensor | np.ndarray, snrs: Sequence[float], prior: str = "gaussian",
                  jac: torch.Tensor | np.ndarray | None = None, flux: torch.Tensor | np.ndarray | None = None,
                  chunk_size: int | None = None) -> list[dict]:
    """The log g ceiling per S/N for the stars ``theta``.

    Parameters
    ----------
    model : a :class:`calipers.spectra.simulate.SpectrumModel` (its ``expected_ivar``, ``wavelength`` and
        ``config.label_ranges`` are used).
    theta : (N, 3) labels, e.g. drawn from the prior.
    snrs : median per-pixel S/N values.
    prior : ``"gaussian"`` or ``"cosine"`` (:func:`prior_information`).
    jac, flux : a precomputed Jacobian (N, n_pix, 3) and noise-free flux (else computed here, float64).
    chunk_size : stars per Jacobian evaluation.

    Returns
    -------
    One dict per S/N: ``snr``, ``n``, ``sigma_crlb_median`` (median marginal sigma_CRLB of log g, dex),
    ``r2_crlb`` (plain), ``r2_bayes`` (prior-aware), and the same three with ``_continuum`` appended when
    a free continuum scale and tilt are marginalised too.
    """
    theta = model.check_labels(theta)
    if jac is None or flux is None:
        flux, jac = jacobian(model, theta.to(torch.float64), chunk_size=chunk_size, return_flux=True)
    jac = _as_float64(jac)
    flux = _as_float64(flux)
    labels = _as_float64(theta)
    logg = labels[:, LOGG_INDEX]
    jac_cont = np.concatenate([jac, continuum_nuisance_jacobian(flux, model.wavelength)], axis=-1)
    ranges = model.config.label_ranges
    rows = []
    for snr in snrs:
        ivar = model.expected_ivar(flux, float(snr))
        row: dict = {"snr": float(snr), "n": int(len(logg))}
        for suffix, j, n_nuis in (("", jac, 0), ("_continuum", jac_cont, 2)):
            fisher = fisher_matrix(j, ivar)
            crlb = marginal_crlb(fisher)
            bayes = bayesian_crlb(fisher, prior_information(ranges, prior, n_nuis))
            row[f"sigma_crlb_median{suffix}"] = float(np.median(np.sqrt(crlb)))
            row[f"r2_crlb{suffix}"] = r2_ceiling(crlb, logg)
            row[f"r2_bayes{suffix}"] = r2_ceiling(bayes, logg)
        rows.append(row)
    return rows


__all__ = ["LOGG_INDEX", "bayesian_crlb", "ceiling_table", "continuum_nuisance_jacobian", "fisher_matrix",
           "jacobian", "marginal_crlb", "prior_information", "r2_ceiling"]
