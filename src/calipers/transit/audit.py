"""The physics auditor of predicted transmission spectra (issue 20).

Per planet, from ``mu`` and ``sigma`` [K] alone (no truth), a record of the constraints a spectrum
must keep and how far it strays:

- ``smoothness``: the mean of ``(second difference of mu / sigma)^2`` (about 6 for pure noise of
  width sigma, near 0 for a smooth spectrum) with a ``violated`` flag above ``smoothness_threshold``,
  and the ``worst_bins`` (largest |second difference| / sigma);
- ``negative_depths``: the bins with ``mu < 0``;
- ``band_coherence``: per molecular band window (:func:`calipers.transit.model.band_windows`),
  the RMS of the part of ``mu`` inside the band that the band's own shape does not explain, in
  units of the band's median sigma;
- ``seams``: the jump across each seam beyond the neighbouring slopes, in sigma;
- ``loss_terms`` and ``loss_shares``: each physics term of :func:`calipers.transit.model.physics_terms`
  times its weight, and its share of their sum: which constraint drives the planet's physics loss.
"""
from __future__ import annotations

import numpy as np
import torch

from calipers.transit.model import LOSS_TERMS, SCALE, band_windows, physics_terms

__all__ = ["audit_spectra", "audit_summary"]


def audit_spectra(mu, sigma, wavelength, seams=(), smoothness_threshold: float = 2.0, worst: int = 3,
                  loss_weights: dict | None = None) -> list[dict]:
    """One record per planet (see the module docstring); ``mu``, ``sigma`` [N, K] in depth units."""
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.shape != sigma.shape or mu.ndim != 2:
        raise ValueError(f"audit_spectra: mu {mu.shape} and sigma {sigma.shape} must be [N, K] of one shape")
    windows = band_windows(wavelength)
    weights = {k: 1.0 for k in LOSS_TERMS} | dict(loss_weights or {})
    second = mu[:, 2:] - 2 * mu[:, 1:-1] + mu[:, :-2]
    s_mid = sigma[:, 1:-1]
    ratio = second / s_mid
    smooth = np.mean(ratio ** 2, axis=1)
    base = np.median(mu, axis=1)
    with torch.no_grad():
        terms = physics_terms(torch.from_numpy((mu - base[:, None]) / SCALE), torch.from_numpy(base), windows, seams)
    terms = {k: v.numpy() for k, v in terms.items()}
    records = []
    for i in range(mu.shape[0]):
        order = np.argsort(-np.abs(ratio[i]))[:worst]
        bands = []
        for w in windows:
            part = mu[i, w["bins"]] - mu[i, w["bins"]].mean()
            resid = part - (part @ w["template"]) * w["template"]
            bands.append({"molecule": w["molecule"], "centre_um": w["centre"],
                          "incoherence_sigma": float(np.sqrt(np.mean(resid ** 2)) / np.median(sigma[i, w["bins"]]))})
        seam_rows = []
        for s in seams:
            if 2 <= s <= mu.shape[1] - 2:
                predicted = 0.5 * ((mu[i, s - 1] - mu[i, s - 2]) + (mu[i, s + 1] - mu[i, s]))
                jump = mu[i, s] - mu[i, s - 1] - predicted
                seam_rows.append({"bin": int(s), "jump_sigma": float(jump / sigma[i, s])})
        weighted = {k: float(weights.get(k, 0.0) * terms[k][i]) for k in LOSS_TERMS}
        total = sum(weighted.values())
        records.append({
            "smoothness": {"score": float(smooth[i]), "violated": bool(smooth[i] > smoothness_threshold),
                           "worst_bins": [{"bin": int(b + 1), "second_difference_sigma": float(ratio[i, b])}
                                          for b in order]},
            "negative_depths": {"count": int(np.sum(mu[i] < 0)), "bins": np.flatnonzero(mu[i] < 0).tolist()},
            "band_coherence": bands,
            "seams": seam_rows,
            "loss_terms": weighted,
            "loss_shares": {k: (v / total if total > 0 else 0.0) for k, v in weighted.items()},
        })
    return records


def audit_summary(records: list[dict]) -> dict:
    """Fractions of planets violating each constraint and the mean scores, over ``records``."""
    n = len(records)
    if n == 0:
        return {"n_planets": 0}
    out = {"n_planets": n,
           "smoothness_violated_fraction": float(np.mean([r["smoothness"]["violated"] for r in records])),
           "smoothness_score_median": float(np.median([r["smoothness"]["score"] for r in records])),
           "negative_depth_fraction": float(np.mean([r["negative_depths"]["count"] > 0 for r in records])),
           "band_incoherence_median_sigma": float(np.median([b["incoherence_sigma"] for r in records
                                                             for b in r["band_coherence"]] or [0.0]))}
    if records[0]["seams"]:
        out["seam_jump_median_sigma"] = float(np.median([abs(s["jump_sigma"]) for r in records for s in r["seams"]]))
    for k in LOSS_TERMS:
        out[f"loss_share_{k}_mean"] = float(np.mean([r["loss_shares"][k] for r in records]))
    return out
