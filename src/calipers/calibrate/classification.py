"""Calibration of a binary classifier's logit: temperature scaling, then a prior shift.

- :class:`BinaryTemperatureScaling` - ``logit -> logit / T``, T by minimising the (optionally
  weighted) binary negative log-likelihood on a calibration set (Guo et al. 2017, two-class form).
- :class:`PriorShift` - Bayes' rule for a change of class prevalence: a probability calibrated on
  a sample with positive fraction pi_train becomes, at a deployment prevalence pi_deploy,
  ``logit -> logit + logit(pi_deploy) - logit(pi_train)`` (Saerens et al. 2002), exact when the
  class-conditional score distributions are the same in both samples.
- :class:`ClassifierCalibrator` - the two in sequence; the object a stage stores as JSON
  (``to_dict`` / ``from_dict``, no pickles).

A lens finder is trained and calibrated on a balanced (or 1:3) sample but used where lenses are
about 1 in 1000: temperature scaling makes its probability honest at the calibration prevalence
and the prior shift carries it to the deployment prevalence, where it predicts the purity.
Arrays in, arrays out; no file is opened here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit as _expit
from scipy.special import logit as _logit

logger = logging.getLogger(__name__)

__all__ = ["BinaryTemperatureScaling", "PriorShift", "ClassifierCalibrator"]


def _logits_labels(name: str, logits, labels=None, weights=None):
    z = np.asarray(logits, dtype=float)
    if z.ndim != 1:
        raise ValueError(f"{name}: logits must be 1-d (one logit per object), got shape {z.shape}")
    bad = np.flatnonzero(~np.isfinite(z))
    if bad.size:
        raise ValueError(f"{name}: logits not finite in {bad.size} row(s), first at row {bad[0]}")
    if labels is None:
        return z, None, None
    y = np.asarray(labels)
    if y.shape != z.shape:
        raise ValueError(f"{name}: logits and labels differ in length: {z.size} vs {y.size}")
    yf = y.astype(float)
    bad = np.flatnonzero((yf != 0) & (yf != 1))
    if bad.size:
        raise ValueError(f"{name}: labels must be 0 or 1; {bad.size} are not, first at row {bad[0]} "
                         f"(value {y[bad[0]]!r})")
    w = _weights(name, weights, z.size)
    return z, yf, w


def _weights(name: str, weights, n: int):
    if weights is None:
        return None
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"{name}: weights must have one value per object ({n}), got shape {w.shape}")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(f"{name}: weights must be finite and >= 0; {bad.size} are not, first at row {bad[0]}")
    if not w.sum() > 0:
        raise ValueError(f"{name}: the weights sum to zero")
    return w


def binary_nll_logits(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean binary NLL (nats per object) of 0/1 labels given logits: softplus(l) - y l, overflow-free."""
    per = np.logaddexp(0.0, logits) - labels * logits
    return float(np.average(per, weights=weights))


@dataclass
class BinaryTemperatureScaling:
    """Divide a binary classifier's logit by the temperature T that minimises the calibration NLL.

    T > 1 softens an over-confident classifier, T < 1 sharpens an under-confident one. The
    search is a bounded 1-d minimisation over log T within ``bounds`` (the NLL is convex in 1/T);
    a fit that ends on a bound is logged as a warning. ``fit`` records ``nll_before`` (T = 1) and
    ``nll_after`` (nats per object, weighted when weights are given).
    """

    temperature: float | None = None
    bounds: tuple[float, float] = (0.05, 20.0)
    nll_before: float | None = None
    nll_after: float | None = None

    def fit(self, logits, labels, weights=None) -> "BinaryTemperatureScaling":
        """Fit T on calibration ``logits`` (n,), 0/1 ``labels`` (n,) and optional ``weights`` (n,)."""
        z, y, w = _logits_labels("BinaryTemperatureScaling.fit", logits, labels, weights)
        lo, hi = self.bounds
        if not 0 < lo < 1 < hi:
            raise ValueError(f"BinaryTemperatureScaling: bounds must satisfy 0 < lo < 1 < hi, got {self.bounds}")
        res = minimize_scalar(lambda log_t: binary_nll_logits(z / np.exp(log_t), y, w),
                              bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-10})
        self.temperature = float(np.exp(res.x))
        self.nll_before = binary_nll_logits(z, y, w)
        self.nll_after = binary_nll_logits(z / self.temperature, y, w)
        if self.nll_after > self.nll_before:  # the optimiser missed T = 1; keep the better one
            self.temperature, self.nll_after = 1.0, self.nll_before
        if np.isclose(self.temperature, lo, rtol=1e-3) or np.isclose(self.temperature, hi, rtol=1e-3):
            logger.warning("BinaryTemperatureScaling: T = %.4g is at a bound of %s; the logits may carry no "
                           "information about the labels", self.temperature, self.bounds)
        logger.info("BinaryTemperatureScaling: T = %.4g, NLL %.5f -> %.5f", self.temperature, self.nll_before,
                    self.nll_after)
        return self

    def transform(self, logits) -> np.ndarray:
        """Calibrated logits ``logits / T``."""
        if self.temperature is None:
            raise RuntimeError("BinaryTemperatureScaling.transform called before fit")
        return np.asarray(logits, dtype=float) / self.temperature

    def to_dict(self) -> dict:
        return {"kind": "BinaryTemperatureScaling", "temperature": self.temperature, "bounds": list(self.bounds),
                "nll_before": self.nll_before, "nll_after": self.nll_after}

    @classmethod
    def from_dict(cls, d: dict) -> "BinaryTemperatureScaling":
        _check_kind(d, "BinaryTemperatureScaling")
        return cls(temperature=d.get("temperature"), bounds=tuple(d.get("bounds", (0.05, 20.0))),
                   nll_before=d.get("nll_before"), nll_after=d.get("nll_after"))


def _check_kind(d: dict, kind: str) -> None:
    if d.get("kind", kind) != kind:
        raise ValueError(f"{kind}.from_dict: the dict describes a {d.get('kind')!r}, not a {kind}")


def _check_prevalence(name: str, value) -> float:
    value = float(value)
    if not 0 < value < 1:
        raise ValueError(f"PriorShift: {name} must be in (0, 1) (a fraction of positives), got {value}")
    return value


@dataclass
class PriorShift:
    """Move a calibrated logit from the prevalence it was calibrated at to a deployment prevalence.

    Bayes' rule with unchanged class-conditional densities: posterior odds scale with prior odds,
    so ``logit -> logit + logit(deployment_prevalence) - logit(train_prevalence)``.
    ``train_prevalence`` is the (weighted) positive fraction of the calibration labels
    (:meth:`fit`) or given explicitly; both prevalences lie in (0, 1).
    """

    deployment_prevalence: float
    train_prevalence: float | None = None

    def __post_init__(self):
        self.deployment_prevalence = _check_prevalence("deployment_prevalence", self.deployment_prevalence)
        if self.train_prevalence is not None:
            self.train_prevalence = _check_prevalence("train_prevalence", self.train_prevalence)

    def fit(self, labels, weights=None) -> "PriorShift":
        """Set ``train_prevalence`` to the (weighted) fraction of positives among ``labels``."""
        y = np.asarray(labels)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"PriorShift.fit: labels must be a non-empty 1-d array, got shape {y.shape}")
        yf = y.astype(float)
        bad = np.flatnonzero((yf != 0) & (yf != 1))
        if bad.size:
            raise ValueError(f"PriorShift.fit: labels must be 0 or 1; {bad.size} are not, first at row {bad[0]}")
        w = _weights("PriorShift.fit", weights, y.size)
        frac = float(np.average(yf, weights=w))
        if not 0 < frac < 1:
            raise ValueError(f"PriorShift.fit: the calibration labels hold only one class (positive fraction {frac})")
        self.train_prevalence = frac
        return self

    @property
    def shift(self) -> float:
        """The additive logit shift logit(pi_deploy) - logit(pi_train)."""
        if self.train_prevalence is None:
            raise RuntimeError("PriorShift: train_prevalence unknown; call fit(labels) or give it")
        return float(_logit(self.deployment_prevalence) - _logit(self.train_prevalence))

    def transform(self, logits) -> np.ndarray:
        """Logits at the deployment prevalence."""
        return np.asarray(logits, dtype=float) + self.shift

    def to_dict(self) -> dict:
        return {"kind": "PriorShift", "deployment_prevalence": self.deployment_prevalence,
                "train_prevalence": self.train_prevalence}

    @classmethod
    def from_dict(cls, d: dict) -> "PriorShift":
        _check_kind(d, "PriorShift")
        return cls(deployment_prevalence=d["deployment_prevalence"], train_prevalence=d.get("train_prevalence"))


@dataclass
class ClassifierCalibrator:
    """Temperature scaling then a prior shift: raw logit -> calibrated logit at a chosen prevalence.

    ``transform(logits, prevalence="calibration")`` gives the temperature-scaled logit (honest at
    the calibration sample's prevalence); ``prevalence="deployment"`` adds the prior shift
    (honest at ``deployment_prevalence``: its probability is the predicted purity there).
    """

    temperature: BinaryTemperatureScaling = field(default_factory=BinaryTemperatureScaling)
    prior: PriorShift | None = None

    def fit(self, logits, labels, deployment_prevalence: float, weights=None,
            train_prevalence: float | None = None) -> "ClassifierCalibrator":
        """Fit T on (logits, labels[, weights]); the calibration prevalence is ``train_prevalence``
        when given, else the (weighted) positive fraction of ``labels``."""
        prior = PriorShift(deployment_prevalence, train_prevalence)  # validates before the fit
        self.temperature.fit(logits, labels, weights)
        self.prior = prior if train_prevalence is not None else prior.fit(labels, weights)
        return self

    def transform(self, logits, prevalence: str = "deployment") -> np.ndarray:
        """Calibrated logits at ``"calibration"`` or ``"deployment"`` prevalence."""
        if self.prior is None or self.temperature.temperature is None:
            raise RuntimeError("ClassifierCalibrator.transform called before fit")
        z = self.temperature.transform(_logits_labels("ClassifierCalibrator.transform", logits)[0])
        if prevalence == "calibration":
            return z
        if prevalence == "deployment":
            return self.prior.transform(z)
        raise ValueError(f"ClassifierCalibrator.transform: prevalence must be 'calibration' or 'deployment', "
                         f"got {prevalence!r}")

    def probability(self, logits, prevalence: str = "deployment") -> np.ndarray:
        """Calibrated probability (the sigmoid of :meth:`transform`)."""
        return _expit(self.transform(logits, prevalence))

    def to_dict(self) -> dict:
        return {"kind": "ClassifierCalibrator", "version": 1, "temperature": self.temperature.to_dict(),
                "prior_shift": None if self.prior is None else self.prior.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierCalibrator":
        _check_kind(d, "ClassifierCalibrator")
        prior = d.get("prior_shift")
        return cls(temperature=BinaryTemperatureScaling.from_dict(d["temperature"]),
                   prior=None if prior is None else PriorShift.from_dict(prior))
