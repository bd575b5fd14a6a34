"""A network from extracted transit depths to a mean and a sigma per wavelength bin (issue 20).

Inputs per planet, along the bins (channels of a 1-D convolution): the extracted depth relative to
the planet's own median depth, in units of ``scale`` (1e-3: a few hundred ppm is a spectral feature),
its log formal error, the residual RMS and the jitter coefficient of the bin's fit, and the
wavelength; per planet (broadcast to every bin): the median depth, the white-light depth and the log
of their errors. Output per bin: ``mu = median depth + scale * a`` and ``sigma = scale *
(softplus(b) + floor)``.

Loss (:func:`transit_loss`): the Gaussian negative log-likelihood plus the **physics losses**:

- ``smoothness``: the mean squared second difference of ``mu`` along wavelength (in ``scale``
  units), which the scale-height-limited features of a transmission spectrum keep small;
- ``positivity``: the mean squared negative part of ``mu`` (a transit depth is >= 0);
- ``band_coherence``: within each molecular band window (:func:`band_windows`), the part of ``mu``
  that the band's own shape (the log of its cross-section profile) does not explain, so that the
  bins of one band move together;
- ``seam``: the squared jump of ``mu`` across each seam of the bin layout beyond the jump the
  neighbouring slopes predict (no seam in the AIRS-CH0 default layout: the term is then 0).

Early stopping watches the NLL on held-out planets (the sigma head over-fits without it).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SCALE = 1e-3
N_BIN_CHANNELS = 5
N_GLOBAL = 4
LOSS_TERMS = ("smoothness", "positivity", "band_coherence", "seam")

__all__ = ["LOSS_TERMS", "TransitNet", "TransitNetConfig", "TransitTrainConfig", "band_windows", "physics_terms",
           "predict", "predict_ensemble", "transit_features", "transit_loss", "train_transit_model"]


def band_windows(wavelength, min_strength: float = 1e-25, half_widths: float = 2.0) -> list[dict]:
    """The molecular band windows inside the bins: each band of :data:`calipers.transit.simulate.BANDS`
    with its centre inside the wavelength range and peak cross-section >= ``min_strength``; its bins
    (within ``half_widths`` Gaussian widths of the centre) and its template, the log of the band's
    profile (floored at 1% of the peak) on those bins, centred and normalised."""
    from calipers.transit.simulate import BANDS

    lam = np.asarray(wavelength, dtype=np.float64)
    out = []
    for mol, bands in BANDS.items():
        for centre, width, strength in bands:
            if not (lam[0] <= centre <= lam[-1]) or strength < min_strength:
                continue
            idx = np.flatnonzero(np.abs(lam - centre) <= half_widths * width)
            if idx.size < 3:
                continue
            t = np.log(np.exp(-0.5 * ((lam[idx] - centre) / width) ** 2) + 0.01)
            t = t - t.mean()
            out.append({"molecule": mol, "centre": centre, "bins": idx, "template": t / np.linalg.norm(t)})
    return out


def transit_features(fit: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x_bins [n, 5, K] float32, x_global [n, 4] float32, base [n])`` from the extractor's output
    (:func:`calipers.transit.extract.extract_depths`): per bin the depth relative to the planet's
    median (``/ SCALE``), log of the formal sigma, residual RMS and jitter coefficient, and a
    wavelength ramp; per planet the median depth, the white-light depth (``/ SCALE``, centred at
    10) and the log median formal sigma and white-light sigma. ``base`` is the median depth."""
    d = np.asarray(fit["d_hat"], dtype=np.float64)
    n, k = d.shape
    base = np.median(d, axis=1)
    ramp = np.broadcast_to(np.linspace(-1, 1, k), (n, k))
    x_bins = np.stack([(d - base[:, None]) / SCALE, np.log(np.asarray(fit["sigma_hat"]) / SCALE),
                       np.log(np.asarray(fit["rms"]) / SCALE), np.asarray(fit["beta"]) - 1.0, ramp], axis=1)
    x_global = np.stack([base / SCALE - 10.0, np.asarray(fit["white_depth"]) / SCALE - 10.0,
                         np.log(np.median(np.asarray(fit["sigma_hat"]), axis=1) / SCALE),
                         np.log(np.asarray(fit["white_sigma"]) / SCALE)], axis=1)
    for name, arr in (("x_bins", x_bins), ("x_global", x_global)):
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"transit_features: {name} not finite for planet {bad[0][0]} (a sigma <= 0 or a "
                             "non-finite extraction)")
    return x_bins.astype(np.float32), x_global.astype(np.float32), base


@dataclass
class TransitNetConfig:
    """Architecture: ``n_bins`` bins, ``channels`` per residual block of 1-D convolutions (kernel
    ``kernel_size``, dilations ``dilations``), a global branch of ``hidden`` units, and the sigma floor
    (in ``SCALE`` units)."""

    n_bins: int = 283
    channels: int = 32
    kernel_size: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    hidden: int = 32
    sigma_floor: float = 0.01

    def __post_init__(self):
        self.dilations = tuple(int(v) for v in self.dilations)
        if self.n_bins < 1 or self.channels < 1 or self.hidden < 1 or not self.dilations:
            raise ValueError(f"TransitNetConfig: sizes must be positive, got {asdict(self)}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"TransitNetConfig.kernel_size must be odd, got {self.kernel_size}")

    def to_dict(self) -> dict:
        return asdict(self) | {"dilations": list(self.dilations)}

    @classmethod
    def from_dict(cls, values: dict) -> TransitNetConfig:
        return cls(**values)


class TransitNet(nn.Module):
    """Residual dilated 1-D convolutions along wavelength, conditioned on per-planet features;
    ``forward(x_bins, x_global) -> (a, sigma)`` in ``SCALE`` units ([B, K] each)."""

    def __init__(self, config: TransitNetConfig):
        super().__init__()
        self.config = config
        c, k = config.channels, config.kernel_size
        self.inp = nn.Conv1d(N_BIN_CHANNELS, c, 1)
        self.glob = nn.Sequential(nn.Linear(N_GLOBAL, config.hidden), nn.SiLU(), nn.Linear(config.hidden, c))
        self.blocks = nn.ModuleList([nn.Conv1d(c, c, k, padding=d * (k // 2), dilation=d) for d in config.dilations])
        self.norms = nn.ModuleList([nn.GroupNorm(1, c) for _ in config.dilations])
        self.out = nn.Conv1d(c, 2, 1)

    def forward(self, x_bins: torch.Tensor, x_global: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x_bins.shape[1:] != (N_BIN_CHANNELS, self.config.n_bins):
            raise ValueError(f"TransitNet: inputs have shape {tuple(x_bins.shape[1:])}, the network expects "
                             f"{(N_BIN_CHANNELS, self.config.n_bins)} ({self.config.n_bins} bins)")
        h = self.inp(x_bins) + self.glob(x_global)[:, :, None]
        for conv, norm in zip(self.blocks, self.norms):
            h = h + conv(F.silu(norm(h)))
        out = self.out(F.silu(h))
        return out[:, 0], F.softplus(out[:, 1]) + self.config.sigma_floor


def physics_terms(a: torch.Tensor, base: torch.Tensor, windows: list[dict], seams=()) -> dict[str, torch.Tensor]:
    """Per planet [B], each physics term of the predicted spectra ``mu = base + SCALE a`` (in
    ``SCALE`` units): smoothness, positivity, band coherence and seam (see the module docstring)."""
    second = a[:, 2:] - 2 * a[:, 1:-1] + a[:, :-2]
    mu_scaled = base[:, None] / SCALE + a
    terms = {"smoothness": (second ** 2).mean(1), "positivity": (F.relu(-mu_scaled) ** 2).mean(1)}
    coherence = torch.zeros_like(base)
    for w in windows:
        idx = torch.as_tensor(w["bins"], device=a.device)
        t = torch.as_tensor(w["template"], dtype=a.dtype, device=a.device)
        part = a[:, idx] - a[:, idx].mean(1, keepdim=True)
        resid = part - (part @ t)[:, None] * t[None, :]
        coherence = coherence + (resid ** 2).mean(1)
    terms["band_coherence"] = coherence / max(len(windows), 1)
    seam = torch.zeros_like(base)
    for s in seams:
        if 2 <= s <= a.shape[1] - 2:
            predicted = 0.5 * ((a[:, s - 1] - a[:, s - 2]) + (a[:, s + 1] - a[:, s]))
            seam = seam + (a[:, s] - a[:, s - 1] - predicted) ** 2
    terms["seam"] = seam
    return terms


def transit_loss(a, sigma, y_scaled, base, weights: dict, windows, seams=()) -> tuple[torch.Tensor, dict]:
    """Mean Gaussian NLL of ``y_scaled`` (the true depth minus ``base``, / SCALE) plus the weighted
    physics terms; returns the loss and each term's batch mean (floats)."""
    nll = (torch.log(sigma) + 0.5 * ((y_scaled - a) / sigma) ** 2).mean() + 0.5 * math.log(2 * math.pi)
    terms = physics_terms(a, base, windows, seams)
    loss = nll
    for name, value in terms.items():
        loss = loss + weights.get(name, 0.0) * value.mean()
    return loss, {"nll": float(nll.detach())} | {k: float(v.detach().mean()) for k, v in terms.items()}


@dataclass
class TransitTrainConfig:
    """Training: AdamW with a cosine schedule over at most ``max_epochs``, early stopping after
    ``patience`` epochs without a better held-out NLL, and the physics-loss weights."""

    max_epochs: int = 60
    patience: int = 8
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    loss_weights: dict = field(default_factory=lambda: {"smoothness": 0.1, "positivity": 1.0,
                                                        "band_coherence": 0.1, "seam": 1.0})

    def __post_init__(self):
        unknown = sorted(set(self.loss_weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"TransitTrainConfig.loss_weights: unknown term(s) {unknown}; known: {list(LOSS_TERMS)}")
        if any(not (v >= 0) for v in self.loss_weights.values()):
            raise ValueError(f"TransitTrainConfig.loss_weights must be >= 0, got {self.loss_weights}")
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("TransitTrainConfig: max_epochs, patience, batch_size and learning_rate must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


def _tensors(x_bins, x_global, base, y=None):
    out = [torch.from_numpy(np.ascontiguousarray(x_bins)), torch.from_numpy(np.ascontiguousarray(x_global)),
           torch.from_numpy(np.asarray(base, dtype=np.float32))]
    if y is not None:
        out.append(torch.from_numpy(((np.asarray(y) - np.asarray(base)[:, None]) / SCALE).astype(np.float32)))
    return out


def train_transit_model(train: tuple, held_out: tuple, net: TransitNetConfig, cfg: TransitTrainConfig,
                        wavelength, seed: int, seams=(), device: str = "cpu", progress: bool = False):
    """Train on ``train = (x_bins, x_global, base, depth)`` and stop on the NLL of ``held_out`` (the
    same four). Returns the best state dict and the history (per epoch: train loss, held-out NLL and
    the mean of each physics term on the held-out planets)."""
    windows = band_windows(wavelength)
    xb, xg, b, y = _tensors(*train)
    vb, vg, vbase, vy = [t.to(device) for t in _tensors(*held_out)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TransitNet(net).to(device)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.max_epochs)
        hist = {"train_loss": [], "held_out_nll": [], "held_out_terms": [], "best_epoch": -1}
        best, best_state, stale, t0 = math.inf, None, 0, time.perf_counter()
        bar = tqdm(range(cfg.max_epochs), desc="transit net", disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            perm = torch.randperm(xb.shape[0], generator=gen)
            total = 0.0
            for s in range(0, xb.shape[0], cfg.batch_size):
                idx = perm[s:s + cfg.batch_size]
                a, sigma = model(xb[idx].to(device), xg[idx].to(device))
                loss, _ = transit_loss(a, sigma, y[idx].to(device), b[idx].to(device), cfg.loss_weights, windows,
                                       seams)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            model.eval()
            with torch.no_grad():
                a, sigma = model(vb, vg)
                _, parts = transit_loss(a, sigma, vy, vbase, cfg.loss_weights, windows, seams)
            hist["train_loss"].append(total / xb.shape[0])
            hist["held_out_nll"].append(parts["nll"])
            hist["held_out_terms"].append({k: parts[k] for k in LOSS_TERMS})
            bar.set_postfix(loss=f"{hist['train_loss'][-1]:.3f}", held_out_nll=f"{parts['nll']:.3f}")
            if parts["nll"] < best:
                best, stale, hist["best_epoch"] = parts["nll"], 0, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        hist["seconds"] = time.perf_counter() - t0
    log.info("transit net: best epoch %d, held-out NLL %.4f, %.1f s", hist["best_epoch"], best, hist["seconds"])
    return best_state, hist


def predict(state: dict, net: TransitNetConfig, x_bins, x_global, base, device: str = "cpu",
            batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` [n, K] in depth units."""
    model = TransitNet(net)
    model.load_state_dict(state)
    model.to(device).eval()
    xb, xg, b = _tensors(x_bins, x_global, base)
    mus, sigmas = [], []
    with torch.no_grad():
        for s in range(0, xb.shape[0], batch_size):
            a, sigma = model(xb[s:s + batch_size].to(device), xg[s:s + batch_size].to(device))
            mus.append(a.cpu().numpy().astype(np.float64))
            sigmas.append(sigma.cpu().numpy().astype(np.float64))
    a = np.concatenate(mus) if mus else np.zeros((0, net.n_bins))
    sig = np.concatenate(sigmas) if sigmas else np.zeros((0, net.n_bins))
    return np.asarray(base)[:, None] + SCALE * a, SCALE * sig


def predict_ensemble(states: list[dict], net: TransitNetConfig, x_bins, x_global, base, device: str = "cpu",
                     batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The deep ensemble's Gaussian per bin: the moments of the equal-weight mixture of the members'
    Gaussians, ``mu = <mu_m>`` and ``sigma^2 = <sigma_m^2> + <mu_m^2> - <mu_m>^2`` [n, K]."""
    if not states:
        raise ValueError("predict_ensemble: no member states")
    parts = [predict(s, net, x_bins, x_global, base, device, batch_size) for s in states]
    mus = np.stack([p[0] for p in parts])
    sigmas = np.stack([p[1] for p in parts])
    mu = mus.mean(0)
    var = (sigmas ** 2).mean(0) + ((mus - mu) ** 2).mean(0)
    return mu, np.sqrt(var)
