"""Neural posterior / likelihood / ratio estimation through ``sbi``: training, posteriors, and
the state a model file is made of (arrays only; the files are written and read by
:mod:`calipers.core.models`, which loads them without executing code).

The nets sbi returns are ``torch.nn.Module``s whose z-scoring statistics are buffers of the state
dict, so an estimator's state is the builder's configuration, a few (theta, x) rows to rebuild
the architecture with, and the state dict; :func:`estimator_from_state` rebuilds the net with
the builder and loads the weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

METHODS = ("npe", "nle", "nre")


@dataclass
class SBIConfig:
    method: str = "npe"                 # npe (neural spline flow posterior), nle (+ MCMC), nre (+ MCMC)
    model: str = "nsf"                  # flow for npe/nle (nsf, maf, mdn, ...); classifier for nre (resnet, mlp)
    hidden_features: int = 50
    num_transforms: int = 5
    training_batch_size: int = 200
    learning_rate: float = 5e-4
    validation_fraction: float = 0.1
    stop_after_epochs: int = 20
    max_num_epochs: int = 1000
    sampler: str = "mcmc"               # nle/nre posteriors: mcmc (slice sampling) or sir (importance resampling)
    mcmc_chains: int = 20               # nle/nre posteriors: slice-sampling chains
    mcmc_warmup: int = 100
    sir_proposals: int = 20000          # nle/nre with sampler=sir: prior draws weighted per sample call
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.sampler not in ("mcmc", "sir"):
            raise ValueError(f"sampler must be mcmc or sir, got {self.sampler!r}")
        if self.method == "nre" and self.model in ("nsf", "maf", "mdn", "made", "maf_rqs"):
            self.model = "resnet"


def _builder(c: SBIConfig):
    from sbi.neural_nets import classifier_nn, likelihood_nn, posterior_nn

    if c.method == "nre":
        return classifier_nn(model=c.model, hidden_features=c.hidden_features)
    make = posterior_nn if c.method == "npe" else likelihood_nn
    return make(model=c.model, hidden_features=c.hidden_features, num_transforms=c.num_transforms)


class _NoTracker:
    """sbi's tracker protocol, doing nothing: sbi would otherwise write TensorBoard logs into
    ./sbi-logs of whatever directory a stage runs in. Training history goes into the model
    metadata instead."""

    log_dir = None

    def log_metric(self, name, value, step=None):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_params(self, params):
        pass

    def add_figure(self, name, figure, step=None):
        pass

    def flush(self):
        pass


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


def train_estimator(theta: np.ndarray, x: np.ndarray, prior, config: SBIConfig, device: str = "cpu",
                    progress: bool = False):
    """Train an estimator on simulations; returns (net, training summary dict)."""
    from sbi.inference import NLE, NPE, NRE

    torch.manual_seed(config.seed)
    theta_t, x_t = _tensor(theta), _tensor(x)
    cls = {"npe": NPE, "nle": NLE, "nre": NRE}[config.method]
    kw = {"classifier": _builder(config)} if config.method == "nre" else {"density_estimator": _builder(config)}
    inference = cls(prior=prior, device=device, show_progress_bars=progress, tracker=_NoTracker(), **kw)
    net = inference.append_simulations(theta_t, x_t).train(
        training_batch_size=config.training_batch_size, learning_rate=config.learning_rate,
        validation_fraction=config.validation_fraction, stop_after_epochs=config.stop_after_epochs,
        max_num_epochs=config.max_num_epochs, show_train_summary=progress)
    s = inference.summary
    summary = {"epochs_trained": int(np.ravel(s["epochs_trained"])[-1]),
               "best_validation_loss": float(np.ravel(s["best_validation_loss"])[-1]),
               "validation_loss": [float(v) for v in s["validation_loss"]]}
    return net.to("cpu").eval(), summary


def build_posterior(net, prior, config: SBIConfig, x_o=None):
    """A posterior object: direct for npe; slice-sampling MCMC on the learned likelihood (nle) or
    ratio (nre) potential, which needs the observation ``x_o``."""
    from sbi.inference import (DirectPosterior, MCMCPosterior, likelihood_estimator_based_potential,
                               ratio_estimator_based_potential)

    if config.method == "npe":
        post = DirectPosterior(posterior_estimator=net, prior=prior)
        if x_o is not None:
            post.set_default_x(_tensor(np.atleast_2d(x_o)))
        return post
    if x_o is None:
        raise ValueError(f"a {config.method} posterior needs the observation x_o")
    potential = likelihood_estimator_based_potential if config.method == "nle" else ratio_estimator_based_potential
    pot, transform = potential(net, prior, x_o=_tensor(np.atleast_2d(x_o)))
    if config.sampler == "sir":
        return SIRPosterior(pot, prior, config.sir_proposals)
    return MCMCPosterior(potential_fn=pot, proposal=prior, theta_transform=transform, method="slice_np_vectorized",
                         num_chains=config.mcmc_chains, thin=1, warmup_steps=config.mcmc_warmup)


SBI_MODEL_FORMAT = "calipers-sbi-1"


def estimator_state(net, config: SBIConfig, theta_rows: np.ndarray, x_rows: np.ndarray,
                    extra: dict | None = None) -> tuple[dict, dict]:
    """(JSON-able metadata: config, rows to rebuild the architecture, ``extra``; state dict)."""
    meta = {"format": SBI_MODEL_FORMAT, "config": asdict(config),
            "theta_rows": np.asarray(theta_rows[:10]).tolist(), "x_rows": np.asarray(x_rows[:10]).tolist()}
    return meta | (extra or {}), net.state_dict()


def estimator_from_state(meta: dict, state: dict):
    """(net, config, metadata) rebuilt from :func:`estimator_state` output."""
    if meta.get("format") != SBI_MODEL_FORMAT:
        raise ValueError(f"format {meta.get('format')!r}, expected {SBI_MODEL_FORMAT!r}")
    config = SBIConfig(**meta["config"])
    torch.manual_seed(config.seed)
    net = _builder(config)(_tensor(meta["theta_rows"]), _tensor(meta["x_rows"]))
    net.load_state_dict(state)
    return net.eval(), config, meta


class SIRPosterior:
    """Sampling-importance-resampling from the prior with a learned potential (log likelihood or
    log ratio, plus log prior, as sbi's potential functions return). Fast and exact as the
    number of proposals grows; good when the posterior is not much narrower than the prior
    (low dimensions); MCMC is the general choice."""

    def __init__(self, potential_fn, prior, n_proposals: int = 20000):
        self.potential_fn, self.prior, self.n_proposals = potential_fn, prior, n_proposals

    @torch.no_grad()
    def sample(self, sample_shape=(1,), x=None, show_progress_bars: bool = False) -> torch.Tensor:
        n = int(np.prod(sample_shape))
        theta = self.prior.sample((self.n_proposals,))
        logw = self.potential_fn(theta) - self.prior.log_prob(theta)
        w = torch.softmax(logw - logw.max(), dim=0)
        idx = torch.multinomial(w, n, replacement=True)
        return theta[idx].reshape(*sample_shape, -1)

    def effective_sample_size(self) -> float:
        theta = self.prior.sample((self.n_proposals,))
        with torch.no_grad():
            w = torch.softmax(self.potential_fn(theta) - self.prior.log_prob(theta), dim=0)
        return float(1.0 / (w ** 2).sum())
