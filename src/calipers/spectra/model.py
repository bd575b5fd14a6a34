"""A 1-D CNN deep ensemble that outputs a Gaussian for log g from a spectrum and its inverse variance.

Inputs (:func:`spectrum_features`) are two channels per pixel: the flux divided by its median (a
crude continuum normalisation that leaves the scale out) and the per-pixel noise sigma
``1 / sqrt(ivar)`` divided by the same median, so the network sees how noisy each pixel is. The
sigma channel must come from the *observed* (noisy) flux, as a pipeline's ivar does: a sigma
computed from the noise-free flux carries the true spectrum into the network (the leakage found
when this family was prototyped), and the network would read the answer off it.

Each member (:class:`SpectrumNet`) is a stack of strided 1-D convolutions, a dense layer and a
Gaussian head ``(mu, sigma)`` with ``sigma = softplus(.) + sigma_floor``. With
``residual_on_linear`` the mean is a frozen ridge regression of log g on the normalised flux plus
the network's correction (the map from spectrum to log g is nearly linear at high S/N, so the
network only learns what the linear model misses). Training (:func:`train_member`) minimises
the Gaussian negative log-likelihood of the standardised label, redraws the noise of every
training spectrum every epoch at an S/N drawn log-uniformly in ``snr_range`` (the noise-free
spectra are simulated once; ``noise_fn`` draws noisy flux and its ivar), keeps a fixed noisy
validation split and stops early on its NLL. Members differ in seed (weights, split, batch order,
noise draws). :func:`predict_members` gives each member's mean and sigma; the ensemble is the
equal-weight mixture of its members' Gaussians (:func:`mixture_moments` gives its mean and
standard deviation).

Arrays in, arrays and state dicts out; no file is opened here.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

__all__ = ["SpectrumNetConfig", "SpectrumTrainConfig", "SpectrumNet", "MemberHistory", "spectrum_features",
           "ridge_fit", "train_member", "train_ensemble", "predict_members", "mixture_moments",
           "gaussian_nll", "SpectrumShapeError"]

NoiseFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class SpectrumShapeError(ValueError):
    """Spectra whose pixel count is not the one a model was built for."""


def _known_keys(cls, values: dict) -> dict:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(names)}")
    return dict(values)


def spectrum_features(flux, ivar) -> np.ndarray:
    """Network inputs ``[N, 2, n_pix]`` (float32): flux / median(flux) and sigma / median(flux).

    ``ivar`` is the inverse variance of the observed flux (> 0 everywhere); a row whose median
    flux is not positive, or a non-finite or non-positive ivar, is an error naming the row.
    """
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.ndim != 2 or ivar.shape != flux.shape:
        raise SpectrumShapeError(f"flux and ivar must both be [N, n_pix]; got {flux.shape} and {ivar.shape}")
    for name, a, ok in (("flux", flux, np.isfinite(flux)), ("ivar", ivar, np.isfinite(ivar) & (ivar > 0))):
        bad = np.argwhere(~ok)
        if bad.size:
            raise ValueError(f"{name} is not finite{' and positive' if name == 'ivar' else ''} at {len(bad)} "
                             f"pixel(s), first at row {bad[0, 0]}, pixel {bad[0, 1]} (value {a[bad[0, 0], bad[0, 1]]!r})")
    scale = np.median(flux, axis=1, keepdims=True)
    bad = np.flatnonzero(scale[:, 0] <= 0)
    if bad.size:
        raise ValueError(f"the median flux of {bad.size} spectrum(s) is not positive, first at row {bad[0]}")
    out = np.empty((flux.shape[0], 2, flux.shape[1]), dtype=np.float32)
    out[:, 0] = flux / scale
    out[:, 1] = 1.0 / np.sqrt(ivar) / scale
    return out


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge regression ``y ~ x @ w + b`` (intercept not penalised), solved in the dual or primal
    form, whichever is smaller. Returns ``(w, b)``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"ridge_fit: x must be [N, P] and y [N]; got {x.shape} and {y.shape}")
    if not alpha > 0:
        raise ValueError(f"ridge_fit: alpha must be > 0, got {alpha}")
    xm, ym = x.mean(0), y.mean()
    xc, yc = x - xm, y - ym
    n, p = xc.shape
    if p <= n:
        w = np.linalg.solve(xc.T @ xc + alpha * np.eye(p), xc.T @ yc)
    else:
        w = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(n), yc)
    return w, float(ym - xm @ w)


@dataclass
class SpectrumNetConfig:
    """Architecture of one member.

    Parameters
    ----------
    n_pix : pixels per spectrum the network is built for
    channels : output channels of each strided convolution (each halves the length after the
        first, which has stride ``stem_stride``)
    kernel_size : convolution kernel (odd)
    stem_stride : stride of the first convolution
    hidden : units of the dense layer
    dropout : dropout before the head
    sigma_floor : smallest sigma, in units of the standardised label
    residual_on_linear : mean = frozen ridge prediction + network correction
    n_aux : auxiliary labels (e.g. Teff and [M/H]) predicted by extra Gaussian heads; they share
        the network and are trained with weight ``SpectrumTrainConfig.aux_weight`` (multi-task),
        so that a calibrator can condition on the model's own estimate of the star's metallicity
    """

    n_pix: int = 4096
    channels: tuple[int, ...] = (16, 32, 32, 64, 64)
    kernel_size: int = 7
    stem_stride: int = 4
    hidden: int = 64
    dropout: float = 0.1
    sigma_floor: float = 1e-3
    residual_on_linear: bool = False
    n_aux: int = 0

    def __post_init__(self):
        if self.n_aux < 0:
            raise ValueError(f"SpectrumNetConfig.n_aux must be >= 0, got {self.n_aux}")
        self.channels = tuple(int(c) for c in self.channels)
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"SpectrumNetConfig.channels must be positive integers, got {self.channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"SpectrumNetConfig.kernel_size must be odd and positive, got {self.kernel_size}")
        if self.out_length < 1:
            raise ValueError(f"SpectrumNetConfig: {self.n_pix} pixels are too few for stride {self.stem_stride} "
                             f"and {len(self.channels)} convolutions")

    @property
    def out_length(self) -> int:
        length = self.n_pix
        for i in range(len(self.channels)):
            stride = self.stem_stride if i == 0 else 2
            length = (length + 2 * (self.kernel_size // 2) - self.kernel_size) // stride + 1
        return length

    def to_dict(self) -> dict:
        """A JSON-able dict (the channels as a list)."""
        return asdict(self) | {"channels": list(self.channels)}

    @classmethod
    def from_dict(cls, values: dict) -> SpectrumNetConfig:
        """The config a :meth:`to_dict` dict describes; unknown keys are an error."""
        return cls(**_known_keys(cls, values))


class SpectrumNet(nn.Module):
    """One member: strided 1-D convolutions (batch norm, SiLU), a dense layer, a Gaussian head.

    ``forward(x)`` takes :func:`spectrum_features` (as a tensor) and returns ``(mu, sigma)`` of the
    *standardised* label; the standardisation (``label_mean``, ``label_std``) and, with
    ``residual_on_linear``, the ridge weights are buffers, so the state dict holds the whole model.
    :meth:`forward_all` also returns the ``n_aux`` auxiliary labels' Gaussians (standardised by the
    buffers ``aux_mean``, ``aux_std``) as columns 1.. of ``(mu, sigma)`` [B, 1 + n_aux].
    """

    def __init__(self, config: SpectrumNetConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 2
        for i, c_out in enumerate(config.channels):
            stride = config.stem_stride if i == 0 else 2
            layers += [nn.Conv1d(c_in, c_out, config.kernel_size, stride=stride, padding=config.kernel_size // 2,
                                 bias=False), nn.BatchNorm1d(c_out), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.dense = nn.Linear(c_in * config.out_length, config.hidden)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, 2 * (1 + config.n_aux))
        self.register_buffer("label_mean", torch.zeros(()))
        self.register_buffer("label_std", torch.ones(()))
        self.register_buffer("ridge_w", torch.zeros(config.n_pix))
        self.register_buffer("ridge_b", torch.zeros(()))
        if config.n_aux:
            self.register_buffer("aux_mean", torch.zeros(config.n_aux))
            self.register_buffer("aux_std", torch.ones(config.n_aux))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)`` [B, 1 + n_aux] of the standardised label (column 0) and the auxiliary ones."""
        if x.shape[1:] != (2, self.config.n_pix):
            raise SpectrumShapeError(f"inputs have shape {tuple(x.shape[1:])}, the network expects "
                                     f"{(2, self.config.n_pix)}")
        h = self.features(x).flatten(1)
        out = self.head(self.drop(F.silu(self.dense(h))))
        k = 1 + self.config.n_aux
        mu, sigma = out[:, :k], F.softplus(out[:, k:]) + self.config.sigma_floor
        if self.config.residual_on_linear:  # the ridge predicts the standardised label from the flux
            mu = torch.cat([mu[:, :1] + (x[:, 0] @ self.ridge_w + self.ridge_b)[:, None], mu[:, 1:]], dim=1)
        return mu, sigma

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, sigma = self.forward_all(x)
        return mu[:, 0], sigma[:, 0]


def gaussian_nll(mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian negative log-likelihood (nats, including the 0.5 log 2 pi constant)."""
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean() + 0.5 * math.log(2 * math.pi)


@dataclass
class SpectrumTrainConfig:
    """Training of one member.

    Parameters
    ----------
    max_epochs, patience : epoch cap; epochs without a better validation NLL before stopping
    batch_size, learning_rate, weight_decay : AdamW with a one-cycle schedule
    validation_fraction : part of the spectra held out (with one fixed noise draw) for early stopping
    snr_range : median S/N per pixel of the training noise, drawn log-uniformly per spectrum and epoch
    ridge_alpha : ridge penalty of the linear part (``residual_on_linear``), on standardised inputs
    aux_weight : weight of the auxiliary labels' mean NLL in the loss (``SpectrumNetConfig.n_aux``);
        early stopping watches the main label's validation NLL alone
    """

    max_epochs: int = 30
    patience: int = 5
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    validation_fraction: float = 0.1
    snr_range: tuple[float, float] = (3.0, 20.0)
    ridge_alpha: float = 1.0
    aux_weight: float = 0.5

    def __post_init__(self):
        if not self.aux_weight >= 0:
            raise ValueError(f"SpectrumTrainConfig.aux_weight must be >= 0, got {self.aux_weight}")
        self.snr_range = tuple(float(v) for v in self.snr_range)
        if not 0 < self.snr_range[0] <= self.snr_range[1]:
            raise ValueError(f"SpectrumTrainConfig.snr_range must be 0 < low <= high, got {self.snr_range}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"SpectrumTrainConfig.validation_fraction must be in (0, 1), got "
                             f"{self.validation_fraction}")

    def to_dict(self) -> dict:
        """A JSON-able dict (the S/N range as a list)."""
        return asdict(self) | {"snr_range": list(self.snr_range)}

    @classmethod
    def from_dict(cls, values: dict) -> SpectrumTrainConfig:
        """The config a :meth:`to_dict` dict describes; unknown keys are an error."""
        return cls(**_known_keys(cls, values))


@dataclass
class MemberHistory:
    """Per-epoch training loss and validation NLL of one member, its best epoch and wall time."""

    train_loss: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0


_INIT_LOCK = threading.Lock()


def _rng_devices(device: str) -> list[int]:
    dev = torch.device(device)
    return [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []


def _draw_snr(rng: np.random.Generator, n: int, snr_range: tuple[float, float]) -> np.ndarray:
    lo, hi = snr_range
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def train_member(clean_flux: np.ndarray, labels: np.ndarray, noise_fn: NoiseFn, net: SpectrumNetConfig,
                 train: SpectrumTrainConfig, seed: int, device: str = "cpu",
                 progress: bool = False) -> tuple[dict, MemberHistory]:
    """Train one member on noise-free spectra ``clean_flux`` [N, n_pix] and labels (log g) [N], or
    [N, 1 + n_aux] with the auxiliary labels of a multi-task network in columns 1.. .

    ``noise_fn(clean, snr, rng) -> (flux, ivar)`` draws the observed spectra at median S/N ``snr``
    (one per row); its ivar must be the pipeline's (from the noisy flux). Returns the state dict of
    the epoch with the best validation NLL, and the history. The result depends on ``seed`` alone
    (weights, split, batch order, noise draws and dropout); the global torch RNG is untouched.
    """
    clean_flux = np.asarray(clean_flux, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    n = y.shape[0]
    if y.ndim != 2 or y.shape[1] != 1 + net.n_aux:
        raise SpectrumShapeError(f"labels have shape {np.shape(labels)}; the network predicts {1 + net.n_aux} "
                                 f"label(s), so expected ({n},{' ' + str(1 + net.n_aux) if net.n_aux else ''})")
    if clean_flux.shape != (n, net.n_pix):
        raise SpectrumShapeError(f"clean_flux has shape {clean_flux.shape}, expected ({n}, {net.n_pix})")
    if not np.all(np.isfinite(y)):
        row, col = np.argwhere(~np.isfinite(y))[0]
        raise ValueError(f"labels are not finite at row {int(row)}, column {int(col)}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(int(round(train.validation_fraction * n)), 2)
    val, fit = order[:n_val], order[n_val:]
    mean, std = y[fit].mean(0), y[fit].std(0)
    if not np.all(std > 0):
        raise ValueError(f"the training labels of column {int(np.flatnonzero(~(std > 0))[0])} are all equal")
    ys = ((y - mean) / std).astype(np.float32)
    vf, vi = noise_fn(clean_flux[val], _draw_snr(rng, n_val, train.snr_range), rng)
    x_val = torch.from_numpy(spectrum_features(vf, vi)).to(device)
    y_val = torch.from_numpy(ys[val, 0]).to(device)

    with _INIT_LOCK, torch.random.fork_rng(devices=[]):  # the lock: members trained in threads
        torch.manual_seed(seed)
        model = SpectrumNet(net)
    model.label_mean.fill_(float(mean[0]))
    model.label_std.fill_(float(std[0]))
    if net.n_aux:
        model.aux_mean.copy_(torch.from_numpy(mean[1:].astype(np.float32)))
        model.aux_std.copy_(torch.from_numpy(std[1:].astype(np.float32)))
    if net.residual_on_linear:
        f0, i0 = noise_fn(clean_flux[fit], _draw_snr(rng, fit.size, train.snr_range), rng)
        w, b = ridge_fit(spectrum_features(f0, i0)[:, 0], ys[fit, 0], train.ridge_alpha)
        model.ridge_w.copy_(torch.from_numpy(w.astype(np.float32)))
        model.ridge_b.fill_(b)
    # dropout draws from torch's global generator: seed a private fork of it, so that a member
    # depends on its seed alone and the caller's generator is left as it was
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(seed)
        model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
        steps = math.ceil(fit.size / train.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train.learning_rate, epochs=train.max_epochs,
                                                    steps_per_epoch=steps)
        gen = torch.Generator().manual_seed(seed)
        hist, best, best_state, stale = MemberHistory(), math.inf, None, 0
        bar = tqdm(range(train.max_epochs), desc=f"member seed {seed}", disable=not progress, leave=False)
        for epoch in bar:
            noisy, ivar = noise_fn(clean_flux[fit], _draw_snr(rng, fit.size, train.snr_range), rng)
            x_fit = torch.from_numpy(spectrum_features(noisy, ivar))
            perm = torch.randperm(fit.size, generator=gen)
            model.train()
            total = 0.0
            for k in range(steps):
                idx = perm[k * train.batch_size:(k + 1) * train.batch_size]
                xb, yb = x_fit[idx].to(device), torch.from_numpy(ys[fit][idx.numpy()]).to(device)
                mu, sigma = model.forward_all(xb)
                loss = gaussian_nll(mu[:, 0], sigma[:, 0], yb[:, 0])
                if net.n_aux:
                    loss = loss + train.aux_weight * gaussian_nll(mu[:, 1:], sigma[:, 1:], yb[:, 1:])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            hist.train_loss.append(total / fit.size)
            model.eval()
            with torch.no_grad():
                mu, sigma = _batched(model, x_val, 512)
                val_nll = float(gaussian_nll(mu[:, 0], sigma[:, 0], y_val))
            hist.val_nll.append(val_nll)
            bar.set_postfix(loss=f"{hist.train_loss[-1]:.4f}", val_nll=f"{val_nll:.4f}")
            if val_nll < best:
                best, stale, hist.best_epoch = val_nll, 0, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= train.patience:
                    break
    hist.seconds = time.perf_counter() - t0
    log.info("member seed %d: best epoch %d, validation NLL %.4f, %.1f s", seed, hist.best_epoch, best,
             hist.seconds)
    return best_state, hist


def train_ensemble(clean_flux, labels, noise_fn: NoiseFn, net: SpectrumNetConfig, train: SpectrumTrainConfig,
                   seeds, device: str = "cpu", progress: bool = False) -> tuple[list[dict], list[MemberHistory]]:
    """Train one member per seed (see :func:`train_member`)."""
    states, hists = [], []
    for seed in seeds:
        s, h = train_member(clean_flux, labels, noise_fn, net, train, int(seed), device=device, progress=progress)
        states.append(s)
        hists.append(h)
    return states, hists


def _batched(model: SpectrumNet, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.forward_all`` over ``x`` in batches: ``(mu, sigma)`` [N, 1 + n_aux]."""
    mus, sigmas = [], []
    for k in range(0, x.shape[0], batch):
        mu, sigma = model.forward_all(x[k:k + batch])
        mus.append(mu)
        sigmas.append(sigma)
    return torch.cat(mus), torch.cat(sigmas)


def predict_members(states: list[dict], net: SpectrumNetConfig, flux, ivar, device: str = "cpu",
                    batch_size: int = 512, aux: bool = False):
    """Each member's Gaussian for log g: ``(means, sigmas)``, both [M, N], in label units; with
    ``aux=True`` also the auxiliary labels' means ``aux_means`` [M, N, n_aux] (label units) as a
    third element."""
    x = torch.from_numpy(spectrum_features(flux, ivar)).to(device)
    if x.shape[2] != net.n_pix:
        raise SpectrumShapeError(f"spectra have {x.shape[2]} pixels, the model was built for {net.n_pix}")
    means, sigmas, aux_means = [], [], []
    for state in states:
        model = SpectrumNet(net)
        model.load_state_dict(state)
        model.to(device).eval()
        with torch.no_grad():
            mu, sigma = _batched(model, x, batch_size)
        means.append((mu[:, 0] * model.label_std + model.label_mean).cpu().numpy().astype(np.float64))
        sigmas.append((sigma[:, 0] * model.label_std).cpu().numpy().astype(np.float64))
        if net.n_aux:
            aux_means.append((mu[:, 1:] * model.aux_std + model.aux_mean).cpu().numpy().astype(np.float64))
        else:
            aux_means.append(np.zeros((x.shape[0], 0)))
    if aux:
        return np.stack(means), np.stack(sigmas), np.stack(aux_means)
    return np.stack(means), np.stack(sigmas)


def mixture_moments(means, sigmas) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the equal-weight mixture of the members' Gaussians [M, N]:
    mean = <mu>, variance = <sigma^2> + <mu^2> - <mu>^2 (aleatoric plus epistemic)."""
    means = np.asarray(means, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if means.shape != sigmas.shape or means.ndim != 2:
        raise ValueError(f"means and sigmas must both be [M, N]; got {means.shape} and {sigmas.shape}")
    m = means.mean(0)
    var = (sigmas ** 2).mean(0) + (means ** 2).mean(0) - m ** 2
    return m, np.sqrt(np.maximum(var, 0.0))
