"""Baseline log g regressors that also give a distribution: ridge and LightGBM means, with a width model.

A point regressor becomes a Gaussian predictive distribution through :class:`LogResidualWidth`: on
a split the mean model was *not* fitted on, ``log r^2`` (r the residual) is regressed linearly on
``[1, log snr]``. For a Gaussian residual of variance sigma^2, E[log r^2] = log sigma^2 + psi(1/2)
+ log 2 = log sigma^2 - 1.2704 exactly (the mean of log chi^2_1), so
``sigma^2 = exp(prediction + 1.2704)``; a log-linear width in S/N is what noise-dominated errors
give (sigma ~ snr^-1 at high S/N, flattening to the prior width at low S/N is captured only in
part: the calibration stage corrects what is left).

- :class:`RidgeLogg`: ridge regression on the median-normalised flux.
- :class:`GBMLogg`: LightGBM on the median-normalised flux rebinned by ``rebin`` pixels (the
  trees cannot use 4,096 nearly collinear pixels efficiently; rebinning keeps the lines'
  equivalent widths).

Both have ``fit(flux, ivar, labels)`` and ``predict(flux, ivar) -> (mean, sigma)``, and split the
labelled spectra into a mean part and a width part by a seeded permutation; ``state()`` /
``from_state()`` turn a fitted model into plain values (arrays, JSON-able numbers, the LightGBM
booster's text format) and back, for model files that load without executing code.
Arrays in, arrays out; no file is opened here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.special import digamma

from calipers.spectra.model import ridge_fit, spectrum_features

log = logging.getLogger(__name__)

__all__ = ["LogResidualWidth", "RidgeLogg", "GBMLogg", "median_snr", "LOG_CHI2_1_MEAN"]

LOG_CHI2_1_MEAN = float(digamma(0.5) + np.log(2.0))  # E[log chi^2_1] = -1.2704


def median_snr(flux, ivar) -> np.ndarray:
    """Median per-pixel S/N of each spectrum, ``median(flux * sqrt(ivar))``."""
    return np.median(np.asarray(flux, dtype=float) * np.sqrt(np.asarray(ivar, dtype=float)), axis=1)


@dataclass
class LogResidualWidth:
    """sigma(snr) with ``log sigma^2 = c0 + c1 log snr``, fitted on held-out residuals."""

    coef: tuple[float, float] | None = None

    def fit(self, residuals, snr) -> "LogResidualWidth":
        r = np.asarray(residuals, dtype=float)
        s = np.asarray(snr, dtype=float)
        if r.shape != s.shape or r.ndim != 1 or r.size < 3:
            raise ValueError(f"LogResidualWidth.fit: residuals and snr must be 1-d of one length >= 3; got "
                             f"{r.shape} and {s.shape}")
        if np.any(s <= 0):
            raise ValueError(f"LogResidualWidth.fit: snr must be > 0 (first bad row {int(np.flatnonzero(s <= 0)[0])})")
        design = np.stack([np.ones_like(s), np.log(s)], axis=1)
        target = np.log(np.maximum(r ** 2, 1e-300)) - LOG_CHI2_1_MEAN
        self.coef = tuple(float(c) for c in np.linalg.lstsq(design, target, rcond=None)[0])
        return self

    def predict(self, snr) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError("LogResidualWidth.predict called before fit")
        s = np.asarray(snr, dtype=float)
        return np.exp(0.5 * (self.coef[0] + self.coef[1] * np.log(s)))


def _width_from(coef) -> LogResidualWidth:
    values = [float(c) for c in coef]
    if len(values) != 2 or not all(np.isfinite(values)):
        raise ValueError(f"width coefficients must be two finite numbers, got {coef!r}")
    return LogResidualWidth(coef=(values[0], values[1]))


def _split(n: int, width_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < width_fraction < 1:
        raise ValueError(f"width_fraction must be in (0, 1), got {width_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_width = max(int(round(width_fraction * n)), 3)
    return order[n_width:], order[:n_width]


@dataclass
class RidgeLogg:
    """Ridge regression of log g on the median-normalised flux, plus a :class:`LogResidualWidth`."""

    alpha: float = 1.0
    width_fraction: float = 0.2
    seed: int = 0
    weights: np.ndarray | None = None
    intercept: float | None = None
    width: LogResidualWidth = field(default_factory=LogResidualWidth)

    def _x(self, flux, ivar) -> np.ndarray:
        return spectrum_features(flux, ivar)[:, 0].astype(np.float64)

    def fit(self, flux, ivar, labels) -> "RidgeLogg":
        x, y = self._x(flux, ivar), np.asarray(labels, dtype=float)
        mean_rows, width_rows = _split(len(y), self.width_fraction, self.seed)
        self.weights, self.intercept = ridge_fit(x[mean_rows], y[mean_rows], self.alpha)
        resid = y[width_rows] - (x[width_rows] @ self.weights + self.intercept)
        self.width.fit(resid, median_snr(np.asarray(flux)[width_rows], np.asarray(ivar)[width_rows]))
        return self

    def predict(self, flux, ivar) -> tuple[np.ndarray, np.ndarray]:
        if self.weights is None:
            raise RuntimeError("RidgeLogg.predict called before fit")
        mean = self._x(flux, ivar) @ self.weights + self.intercept
        return mean, self.width.predict(median_snr(flux, ivar))

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)`` of a fitted model: JSON-able settings and width coefficients, and the
        ``weights`` (n_pix,) and ``intercept`` () as float64 arrays; :meth:`from_state` inverts it."""
        if self.weights is None or self.width.coef is None:
            raise RuntimeError("RidgeLogg.state called before fit")
        params = {"alpha": float(self.alpha), "width_fraction": float(self.width_fraction), "seed": int(self.seed),
                  "width_coef": [float(c) for c in self.width.coef]}
        return params, {"weights": np.asarray(self.weights, dtype=np.float64),
                        "intercept": np.asarray(self.intercept, dtype=np.float64)}

    @classmethod
    def from_state(cls, params: dict, arrays: dict) -> RidgeLogg:
        """The fitted model :meth:`state` describes (a ValueError when a value is missing or unusable)."""
        weights = np.asarray(arrays["weights"], dtype=np.float64)
        intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        if weights.ndim != 1 or intercept.shape != () or not (np.all(np.isfinite(weights))
                                                               and np.isfinite(intercept)):
            raise ValueError(f"RidgeLogg: weights must be a finite 1-d array and intercept a finite number; got "
                             f"shapes {weights.shape} and {intercept.shape}")
        return cls(alpha=float(params["alpha"]), width_fraction=float(params["width_fraction"]),
                   seed=int(params["seed"]), weights=weights, intercept=float(intercept),
                   width=_width_from(params["width_coef"]))


@dataclass
class GBMLogg:
    """LightGBM regression of log g on the rebinned normalised flux, plus a :class:`LogResidualWidth`."""

    rebin: int = 8
    n_estimators: int = 600
    learning_rate: float = 0.05
    num_leaves: int = 31
    width_fraction: float = 0.2
    seed: int = 0
    n_jobs: int = 2
    booster: object = None
    width: LogResidualWidth = field(default_factory=LogResidualWidth)

    def _x(self, flux, ivar) -> np.ndarray:
        x = spectrum_features(flux, ivar)[:, 0]
        n, p = x.shape
        usable = p - p % self.rebin
        return x[:, :usable].reshape(n, usable // self.rebin, self.rebin).mean(2)

    def fit(self, flux, ivar, labels) -> "GBMLogg":
        try:
            import lightgbm
        except ImportError as exc:  # an optional dependency: pip install "calipers[spectra]"
            raise ImportError("GBMLogg needs lightgbm: pip install 'calipers[spectra]'") from exc
        x, y = self._x(flux, ivar), np.asarray(labels, dtype=float)
        mean_rows, width_rows = _split(len(y), self.width_fraction, self.seed)
        params = {"objective": "regression", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
                  "bagging_fraction": 0.8, "bagging_freq": 1, "feature_fraction": 0.5, "seed": self.seed,
                  "num_threads": self.n_jobs, "deterministic": True, "force_row_wise": True, "verbosity": -1}
        model = lightgbm.train(params, lightgbm.Dataset(x[mean_rows], y[mean_rows]),
                               num_boost_round=self.n_estimators)
        self.booster = model  # a lightgbm.Booster: saved as text (model_to_string), never pickled
        resid = y[width_rows] - model.predict(x[width_rows])
        self.width.fit(resid, median_snr(np.asarray(flux)[width_rows], np.asarray(ivar)[width_rows]))
        return self

    def predict(self, flux, ivar) -> tuple[np.ndarray, np.ndarray]:
        if self.booster is None:
            raise RuntimeError("GBMLogg.predict called before fit")
        mean = self.booster.predict(self._x(flux, ivar), num_threads=self.n_jobs)
        return mean, self.width.predict(median_snr(flux, ivar))

    def state(self) -> tuple[dict, str]:
        """``(params, booster_text)`` of a fitted model: JSON-able settings and width coefficients, and the
        booster as LightGBM's text format (``model_to_string``; never a pickle); :meth:`from_state`
        inverts it."""
        if self.booster is None or self.width.coef is None:
            raise RuntimeError("GBMLogg.state called before fit")
        params = {"rebin": int(self.rebin), "n_estimators": int(self.n_estimators),
                  "learning_rate": float(self.learning_rate), "num_leaves": int(self.num_leaves),
                  "width_fraction": float(self.width_fraction), "seed": int(self.seed),
                  "width_coef": [float(c) for c in self.width.coef]}
        return params, self.booster.model_to_string()

    @classmethod
    def from_state(cls, params: dict, booster_text: str, n_jobs: int = 1) -> GBMLogg:
        """The fitted model :meth:`state` describes; the booster is parsed from its text
        (``lightgbm.Booster(model_str=...)``), which runs no code."""
        try:
            import lightgbm
        except ImportError as exc:  # an optional dependency: pip install "calipers[spectra]"
            raise ImportError("GBMLogg needs lightgbm: pip install 'calipers[spectra]'") from exc
        if not isinstance(booster_text, str) or not booster_text.startswith("tree"):
            raise ValueError("GBMLogg: the booster is not LightGBM's text model format (it should start with 'tree')")
        try:
            booster = lightgbm.Booster(model_str=booster_text)
        except lightgbm.basic.LightGBMError as err:
            raise ValueError(f"GBMLogg: LightGBM cannot parse the booster text ({err})") from err
        return cls(rebin=int(params["rebin"]), n_estimators=int(params["n_estimators"]),
                   learning_rate=float(params["learning_rate"]), num_leaves=int(params["num_leaves"]),
                   width_fraction=float(params["width_fraction"]), seed=int(params["seed"]), n_jobs=int(n_jobs),
                   booster=booster, width=_width_from(params["width_coef"]))
