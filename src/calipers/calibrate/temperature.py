"""Temperature / width scaling: one scalar fitted by maximum likelihood on a calibration set.

- :class:`GaussianWidthScaling` - ``sigma -> T * sigma`` for Gaussian (mu, sigma) predictions
  (closed form: ``T^2 = mean(((z - mu) / sigma)^2)``).
- :class:`TemperatureScaling` - ``logits -> logits / T`` for classifiers (Guo et al. 2017),
  T found by minimising the negative log-likelihood (1-d bounded optimisation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax


def _finite(name: str, *arrays) -> None:
    for a in arrays:
        bad = np.flatnonzero(~np.all(np.isfinite(np.reshape(a, (len(a), -1))), axis=1))
        if bad.size:
            raise ValueError(f"{name}: not finite in {bad.size} row(s), first at row {bad[0]}")


@dataclass
class GaussianWidthScaling:
    """Rescale predicted Gaussian widths by the maximum-likelihood factor T."""

    temperature: float | None = None

    def fit(self, mu: np.ndarray, sigma: np.ndarray, z: np.ndarray) -> "GaussianWidthScaling":
        _finite("GaussianWidthScaling.fit", mu, sigma, z)
        if np.any(np.asarray(sigma) <= 0):
            raise ValueError("GaussianWidthScaling.fit: sigma must be positive")
        self.temperature = float(np.sqrt(np.mean(((np.asarray(z) - mu) / sigma) ** 2)))
        return self

    def transform(self, sigma: np.ndarray) -> np.ndarray:
        if self.temperature is None:
            raise RuntimeError("GaussianWidthScaling.transform called before fit")
        return np.asarray(sigma) * self.temperature


@dataclass
class TemperatureScaling:
    """Divide classifier logits by the temperature that minimises the calibration-set NLL."""

    temperature: float | None = None
    bounds: tuple[float, float] = (0.05, 20.0)

    @staticmethod
    def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
        lp = log_softmax(np.asarray(logits) / temperature, axis=1)
        return float(-np.mean(lp[np.arange(len(labels)), labels]))

    def fit(self, logits: np.ndarray, labels: np.ndarray) -> "TemperatureScaling":
        _finite("TemperatureScaling.fit", logits)
        labels = np.asarray(labels, dtype=int)
        res = minimize_scalar(lambda t: self.nll(logits, labels, t), bounds=self.bounds, method="bounded",
                              options={"xatol": 1e-6})
        self.temperature = float(res.x)
        return self

    def transform(self, logits: np.ndarray) -> np.ndarray:
        if self.temperature is None:
            raise RuntimeError("TemperatureScaling.transform called before fit")
        return np.asarray(logits) / self.temperature
