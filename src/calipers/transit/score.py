"""The Ariel Data Challenge score of transmission spectra (issue 20).

``score = (GLL - GLL_naive) / (GLL_ideal - GLL_naive)``, each GLL the Gaussian log-likelihood of
the true spectra summed over planets and bins: ``GLL`` under the predicted ``(mu, sigma)``,
``GLL_naive`` under one mean and one sigma for everything (the mean and standard deviation of the
training set's true depths), ``GLL_ideal`` under ``mu = y`` with ``sigma_true`` (1e-5 for the AIRS
bins in the challenge). 0 is the naive predictor, 1 the ideal; the challenge clips to [0, 1].
"""
from __future__ import annotations

import math

import numpy as np

from calipers.checks import gaussian_vectors

__all__ = ["NaivePredictor", "ariel_score"]

SIGMA_TRUE = 1e-5


class NaivePredictor(tuple):
    """``(mean, sigma)`` of all true depths of a training set: ``NaivePredictor.fit(depth)``."""

    @classmethod
    def fit(cls, depth) -> NaivePredictor:
        d = np.asarray(depth, dtype=np.float64)
        if d.size < 2 or not np.all(np.isfinite(d)):
            raise ValueError("NaivePredictor.fit: needs at least two finite depths")
        return cls((float(d.mean()), float(d.std())))


def ariel_score(y, mu, sigma, naive: tuple[float, float], sigma_true: float = SIGMA_TRUE, clip: bool = True) -> float:
    """The challenge's score of predictions ``mu``, ``sigma`` [N, K] of the true spectra ``y``
    [N, K], against the naive ``(mean, sigma)`` of the training set (:class:`NaivePredictor`)."""
    mu, sigma, y = gaussian_vectors(mu, sigma, y, "ariel_score")
    mean, spread = naive
    if not (math.isfinite(mean) and spread > 0 and sigma_true > 0):
        raise ValueError(f"ariel_score: the naive (mean, sigma) {naive} and sigma_true {sigma_true} must be finite, "
                         "sigma > 0")

    def gll(m, s):  # summed log N(y; m, s)
        return float(np.sum(-0.5 * (math.log(2 * math.pi) + 2 * np.log(s) + ((y - m) / s) ** 2)))

    gll_ideal = float(y.size * -0.5 * (math.log(2 * math.pi) + 2 * math.log(sigma_true)))
    gll_naive = gll(mean, spread)
    score = (gll(mu, sigma) - gll_naive) / (gll_ideal - gll_naive)
    return float(np.clip(score, 0.0, 1.0)) if clip else float(score)
