"""Calibration of a binary classifier's logit: temperature scaling, then a prior shift.

- :class:`BinaryTemperatureScaling` - ``logit -> logit / T``, T by minimising the (optionally
  weighted) binary negative log-likelihood on a calibration set (Guo et al. 2017, two-class form).
- :class:`PriorShift` - Bayes' rule for a change of class prevalence: a probability calibrated on
  a sample with positive fraction pi_train becomes, at a deployment prevalence pi_deploy,
  ``logit -> logit + logit(pi_deploy) - logit(pi_train)`` (Saerens et al. 2002), exact when the
  class-conditional score distributions are the same in both samples.
- :class:`DeploymentAffine` - optional third step: ``logit -> a logit + b`` on the prior-shifted
  logit, (a, b) maximising the likelihood of the deployment mixture (positives weighted pi / N_pos,
  negatives (1 - pi) / N_neg). At a prevalence of 1e-3 that likelihood is ruled by the negatives'
  top tail, which a 1:3 calibration set hardly samples; a large natural-mix negative set can be
  pooled into the fit. (a, b) = (1, 0) is the plain prior shift.
- :class:`StackedFusion` - members' logits combined by weights fitted on the calibration set
  (L2-penalised logistic regression), with cross-fitted logits to judge it against plain fusions.
- :class:`ClassifierCalibrator` - the steps in sequence; the object a stage stores as JSON
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

__all__ = ["BinaryTemperatureScaling", "PriorShift", "DeploymentAffine", "StackedFusion", "ClassifierCalibrator"]


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

    With ``fit_bias=True`` the map is ``logit / T + bias`` (Platt scaling: temperature and offset
    by the same likelihood, a convex 2-parameter fit, see :class:`DeploymentAffine`). The offset
    is needed when the logit is shifted, not only too sharp or too soft: e.g. a network trained on
    another mix of negatives than the calibration set's (hard negatives enriched for training).
    """

    temperature: float | None = None
    bounds: tuple[float, float] = (0.05, 20.0)
    nll_before: float | None = None
    nll_after: float | None = None
    fit_bias: bool = False
    bias: float = 0.0

    def fit(self, logits, labels, weights=None) -> "BinaryTemperatureScaling":
        """Fit T (and the bias) on calibration ``logits`` (n,), 0/1 ``labels`` (n,) and optional ``weights`` (n,)."""
        z, y, w = _logits_labels("BinaryTemperatureScaling.fit", logits, labels, weights)
        lo, hi = self.bounds
        if not 0 < lo < 1 < hi:
            raise ValueError(f"BinaryTemperatureScaling: bounds must satisfy 0 < lo < 1 < hi, got {self.bounds}")
        self.nll_before = binary_nll_logits(z, y, w)
        if self.fit_bias:
            # the likelihood of the calibration sample is the 'deployment mixture' at its own prevalence
            prevalence = float(np.average(y, weights=w))
            if not 0 < prevalence < 1:
                raise ValueError("BinaryTemperatureScaling.fit: the calibration labels hold one class only")
            affine = DeploymentAffine(prevalence).fit(z, y, w)
            if not affine.slope > 0:
                raise ValueError(f"BinaryTemperatureScaling.fit: fitted slope {affine.slope:.4g} <= 0: the logits "
                                 f"do not rank positives above negatives")
            self.temperature = float(np.clip(1.0 / affine.slope, lo, hi))
            self.bias = float(affine.offset)
            self.nll_after = binary_nll_logits(self.transform(z), y, w)
        else:
            res = minimize_scalar(lambda log_t: binary_nll_logits(z / np.exp(log_t), y, w),
                                  bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-10})
            self.temperature, self.bias = float(np.exp(res.x)), 0.0
            self.nll_after = binary_nll_logits(z / self.temperature, y, w)
        if self.nll_after > self.nll_before:  # the optimiser missed the identity; keep the better one
            self.temperature, self.bias, self.nll_after = 1.0, 0.0, self.nll_before
        if np.isclose(self.temperature, lo, rtol=1e-3) or np.isclose(self.temperature, hi, rtol=1e-3):
            logger.warning("BinaryTemperatureScaling: T = %.4g is at a bound of %s; the logits may carry no "
                           "information about the labels", self.temperature, self.bounds)
        logger.info("BinaryTemperatureScaling: T = %.4g, bias %.4g, NLL %.5f -> %.5f", self.temperature, self.bias,
                    self.nll_before, self.nll_after)
        return self

    def transform(self, logits) -> np.ndarray:
        """Calibrated logits ``logits / T + bias``."""
        if self.temperature is None:
            raise RuntimeError("BinaryTemperatureScaling.transform called before fit")
        return np.asarray(logits, dtype=float) / self.temperature + self.bias

    def to_dict(self) -> dict:
        return {"kind": "BinaryTemperatureScaling", "temperature": self.temperature, "bounds": list(self.bounds),
                "nll_before": self.nll_before, "nll_after": self.nll_after, "fit_bias": self.fit_bias,
                "bias": self.bias}

    @classmethod
    def from_dict(cls, d: dict) -> "BinaryTemperatureScaling":
        _check_kind(d, "BinaryTemperatureScaling")
        return cls(temperature=d.get("temperature"), bounds=tuple(d.get("bounds", (0.05, 20.0))),
                   nll_before=d.get("nll_before"), nll_after=d.get("nll_after"),
                   fit_bias=bool(d.get("fit_bias", False)), bias=float(d.get("bias", 0.0)))


def _check_kind(d: dict, kind: str) -> None:
    if d.get("kind", kind) != kind:
        raise ValueError(f"{kind}.from_dict: the dict describes a {d.get('kind')!r}, not a {kind}")


def _check_prevalence(name: str, value) -> float:
    value = float(value)
    if not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1) (a fraction of positives), got {value}")
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
        self.deployment_prevalence = _check_prevalence("PriorShift: deployment_prevalence", self.deployment_prevalence)
        if self.train_prevalence is not None:
            self.train_prevalence = _check_prevalence("PriorShift: train_prevalence", self.train_prevalence)

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
class DeploymentAffine:
    """``logit -> a * logit + b``, fitted where the classifier is used: at a prevalence ``pi``.

    The fit minimises the binary NLL of the deployment mixture, in which the N_pos positives weigh
    pi / N_pos each and the N_neg negatives (1 - pi) / N_neg each (times per-object weights, when
    given, normalised within each class):

        L(a, b) = pi <softplus(-(a z + b))>_pos + (1 - pi) <softplus(a z + b)>_neg,

    convex in (a, b), minimised by Newton's method with a backtracking line search. When the
    class-conditional densities of z are Gaussians of equal variance, N(mu0, s) and N(mu1, s), the
    log-likelihood ratio is linear in z and the minimiser is its exact posterior logit at pi:
    a = (mu1 - mu0) / s^2, b = (mu0^2 - mu1^2) / (2 s^2) + logit(pi). On an input already
    calibrated at pi, (a, b) = (1, 0).
    ``nll_before`` / ``nll_after`` are L(1, 0) and L(a, b) (nats per deployed object).
    """

    prevalence: float
    slope: float | None = None
    offset: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    n_pos: int | None = None
    n_neg: int | None = None

    def __post_init__(self):
        self.prevalence = _check_prevalence("DeploymentAffine: prevalence", self.prevalence)

    def fit(self, logits, labels, weights=None, max_iter: int = 100, tol: float = 1e-12) -> "DeploymentAffine":
        """Fit (a, b) on ``logits`` (n,) at the deployment prevalence, 0/1 ``labels``, optional ``weights``."""
        z, y, w = _logits_labels("DeploymentAffine.fit", logits, labels, weights)
        w = np.ones_like(z) if w is None else w
        pos, neg = y == 1, y == 0
        if not (w[pos].sum() > 0 and w[neg].sum() > 0):
            raise ValueError(f"DeploymentAffine.fit: needs weighted positives and negatives; got {int(pos.sum())} "
                             f"positive(s) and {int(neg.sum())} negative(s)")
        pi = self.prevalence
        c = np.where(pos, pi * w / w[pos].sum(), (1 - pi) * w / w[neg].sum())  # sums to 1
        sign = np.where(pos, -1.0, 1.0)  # loss softplus(sign * (a z + b))
        x = np.stack([z, np.ones_like(z)], axis=1)

        def loss(theta):
            return float(np.sum(c * np.logaddexp(0.0, sign * (x @ theta))))

        theta = np.array([1.0, 0.0])
        before = f = loss(theta)
        for _ in range(int(max_iter)):
            t = x @ theta
            p = _expit(sign * t)  # d softplus(sign t) / d(sign t)
            grad = x.T @ (c * sign * p)
            hess = (x * (c * p * (1 - p))[:, None]).T @ x + 1e-12 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            lam = 1.0
            while lam > 1e-10:
                new = theta - lam * step
                f_new = loss(new)
                if f_new <= f:
                    break
                lam /= 2
            else:
                break
            done = f - f_new <= tol * max(1.0, abs(f))
            theta, f = new, f_new
            if done:
                break
        self.slope, self.offset = float(theta[0]), float(theta[1])
        self.nll_before, self.nll_after = before, f
        self.n_pos, self.n_neg = int(pos.sum()), int(neg.sum())
        if self.slope <= 0:
            logger.warning("DeploymentAffine: slope %.4g <= 0: the logits do not rank positives above negatives",
                           self.slope)
        logger.info("DeploymentAffine at pi = %.3g: a = %.4g, b = %.4g, NLL %.6f -> %.6f (%d positives, "
                    "%d negatives)", pi, self.slope, self.offset, before, f, self.n_pos, self.n_neg)
        return self

    def transform(self, logits) -> np.ndarray:
        """``a * logits + b``."""
        if self.slope is None:
            raise RuntimeError("DeploymentAffine.transform called before fit")
        return self.slope * np.asarray(logits, dtype=float) + self.offset

    def to_dict(self) -> dict:
        return {"kind": "DeploymentAffine", "prevalence": self.prevalence, "slope": self.slope,
                "offset": self.offset, "nll_before": self.nll_before, "nll_after": self.nll_after,
                "n_pos": self.n_pos, "n_neg": self.n_neg}

    @classmethod
    def from_dict(cls, d: dict) -> "DeploymentAffine":
        _check_kind(d, "DeploymentAffine")
        return cls(**{k: d.get(k) for k in ("prevalence", "slope", "offset", "nll_before", "nll_after",
                                            "n_pos", "n_neg")})


@dataclass
class StackedFusion:
    """Fuse M members' logits as ``sum_k w_k z_k + b``, (w, b) by L2-penalised logistic regression.

    The penalty ``l2`` (on w, not b; per object, i.e. the loss is mean NLL + l2/2 |w|^2) keeps the
    weights finite when members are nearly collinear. Fitted by Newton's method (the loss is
    strictly convex). Judge it against a plain mean with :meth:`cross_fitted`: out-of-fold logits,
    each object scored by weights fitted without it, so its AUROC is not flattered by the fit.
    """

    l2: float = 1e-4
    weights: list[float] | None = None
    intercept: float | None = None

    def _check(self, member_logits, labels=None):
        z = np.asarray(member_logits, dtype=float)
        if z.ndim != 2:
            raise ValueError(f"StackedFusion: member_logits must be [M, N], got shape {z.shape}")
        bad = np.argwhere(~np.isfinite(z))
        if bad.size:
            raise ValueError(f"StackedFusion: member logits not finite, first at member {bad[0, 0]}, row {bad[0, 1]}")
        if labels is None:
            return z, None
        y = _logits_labels("StackedFusion.fit", z[0], labels)[1]
        if y.min() == y.max():
            raise ValueError("StackedFusion.fit: the labels hold one class only")
        return z, y

    def fit(self, member_logits, labels, max_iter: int = 100) -> "StackedFusion":
        z, y = self._check(member_logits, labels)
        m, n = z.shape
        x = np.concatenate([z.T, np.ones((n, 1))], axis=1)
        penalty = np.full(m + 1, float(self.l2))
        penalty[-1] = 0.0
        theta = np.r_[np.full(m, 1.0 / m), 0.0]  # start at the mean

        def loss(t):
            u = x @ t
            return float(np.mean(np.logaddexp(0.0, u) - y * u) + 0.5 * np.sum(penalty * t * t))

        f = loss(theta)
        for _ in range(max_iter):
            p = _expit(x @ theta)
            grad = x.T @ (p - y) / n + penalty * theta
            hess = (x * (p * (1 - p))[:, None]).T @ x / n + np.diag(penalty) + 1e-12 * np.eye(m + 1)
            step = np.linalg.solve(hess, grad)
            lam = 1.0
            while lam > 1e-10 and loss(theta - lam * step) > f:
                lam /= 2
            new = theta - lam * step
            f_new = loss(new)
            done = f - f_new <= 1e-14 * max(1.0, abs(f))
            theta, f = new, f_new
            if done:
                break
        self.weights, self.intercept = [float(v) for v in theta[:m]], float(theta[m])
        logger.info("StackedFusion: weights %s, intercept %.4g", np.round(theta[:m], 4).tolist(), self.intercept)
        return self

    def transform(self, member_logits) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("StackedFusion.transform called before fit")
        z, _ = self._check(member_logits)
        if z.shape[0] != len(self.weights):
            raise ValueError(f"StackedFusion: fitted on {len(self.weights)} members, got {z.shape[0]}")
        return np.asarray(self.weights) @ z + self.intercept

    def cross_fitted(self, member_logits, labels, n_folds: int = 5, seed: int = 0) -> np.ndarray:
        """Out-of-fold fused logits: fold k is scored by weights fitted on the other folds."""
        z, y = self._check(member_logits, labels)
        folds = np.random.default_rng(seed).permutation(z.shape[1]) % int(n_folds)
        out = np.empty(z.shape[1])
        for k in range(int(n_folds)):
            part = StackedFusion(self.l2).fit(z[:, folds != k], y[folds != k])
            out[folds == k] = part.transform(z[:, folds == k])
        return out

    def to_dict(self) -> dict:
        return {"kind": "StackedFusion", "l2": self.l2, "weights": self.weights, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> "StackedFusion":
        _check_kind(d, "StackedFusion")
        return cls(l2=float(d["l2"]), weights=[float(v) for v in d["weights"]], intercept=float(d["intercept"]))


@dataclass
class ClassifierCalibrator:
    """Temperature scaling then a prior shift: raw logit -> calibrated logit at a chosen prevalence.

    ``transform(logits, prevalence="calibration")`` gives the temperature-scaled logit (honest at
    the calibration sample's prevalence); ``prevalence="deployment"`` adds the prior shift and,
    with ``deployment_fit="affine"``, the :class:`DeploymentAffine` step (honest at
    ``deployment_prevalence``: its probability is the predicted purity there).
    """

    temperature: BinaryTemperatureScaling = field(default_factory=BinaryTemperatureScaling)
    prior: PriorShift | None = None
    affine: DeploymentAffine | None = None

    def fit(self, logits, labels, deployment_prevalence: float, weights=None,
            train_prevalence: float | None = None, deployment_fit: str = "prior_shift",
            extra_negative_logits=None, fit_bias: bool = False) -> "ClassifierCalibrator":
        """Fit T on (logits, labels[, weights]); the calibration prevalence is ``train_prevalence``
        when given, else the (weighted) positive fraction of ``labels``.

        ``deployment_fit="affine"`` then fits :class:`DeploymentAffine` on the prior-shifted
        logits, pooled with ``extra_negative_logits`` (raw logits of further negatives, e.g. a large
        natural-mix set; weight 1 each, as are the calibration rows when ``weights`` is None).
        ``fit_bias`` adds an offset to the temperature (Platt scaling, see
        :class:`BinaryTemperatureScaling`)."""
        if deployment_fit not in ("prior_shift", "affine"):
            raise ValueError(f"ClassifierCalibrator.fit: deployment_fit must be 'prior_shift' or 'affine', "
                             f"got {deployment_fit!r}")
        if extra_negative_logits is not None and deployment_fit != "affine":
            raise ValueError("ClassifierCalibrator.fit: extra_negative_logits are used by deployment_fit='affine' "
                             "only")
        prior = PriorShift(deployment_prevalence, train_prevalence)  # validates before the fit
        self.temperature = BinaryTemperatureScaling(bounds=self.temperature.bounds, fit_bias=bool(fit_bias))
        self.temperature.fit(logits, labels, weights)
        self.prior = prior if train_prevalence is not None else prior.fit(labels, weights)
        self.affine = None
        if deployment_fit == "affine":
            z, y, w = _logits_labels("ClassifierCalibrator.fit", logits, labels, weights)
            if extra_negative_logits is not None:
                extra = _logits_labels("ClassifierCalibrator.fit extra_negative_logits", extra_negative_logits)[0]
                z, y = np.concatenate([z, extra]), np.concatenate([y, np.zeros(extra.size)])
                w = None if w is None else np.concatenate([w, np.ones(extra.size)])
            shifted = self.prior.transform(self.temperature.transform(z))
            self.affine = DeploymentAffine(deployment_prevalence).fit(shifted, y, w)
        return self

    def transform(self, logits, prevalence: str = "deployment") -> np.ndarray:
        """Calibrated logits at ``"calibration"`` or ``"deployment"`` prevalence."""
        if self.prior is None or self.temperature.temperature is None:
            raise RuntimeError("ClassifierCalibrator.transform called before fit")
        z = self.temperature.transform(_logits_labels("ClassifierCalibrator.transform", logits)[0])
        if prevalence == "calibration":
            return z
        if prevalence == "deployment":
            shifted = self.prior.transform(z)
            return shifted if self.affine is None else self.affine.transform(shifted)
        raise ValueError(f"ClassifierCalibrator.transform: prevalence must be 'calibration' or 'deployment', "
                         f"got {prevalence!r}")

    def probability(self, logits, prevalence: str = "deployment") -> np.ndarray:
        """Calibrated probability (the sigmoid of :meth:`transform`)."""
        return _expit(self.transform(logits, prevalence))

    def to_dict(self) -> dict:
        return {"kind": "ClassifierCalibrator", "version": 1, "temperature": self.temperature.to_dict(),
                "prior_shift": None if self.prior is None else self.prior.to_dict(),
                "deployment_affine": None if self.affine is None else self.affine.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierCalibrator":
        _check_kind(d, "ClassifierCalibrator")
        prior, affine = d.get("prior_shift"), d.get("deployment_affine")
        return cls(temperature=BinaryTemperatureScaling.from_dict(d["temperature"]),
                   prior=None if prior is None else PriorShift.from_dict(prior),
                   affine=None if affine is None else DeploymentAffine.from_dict(affine))
