"""Shear estimators that output a Gaussian over each galaxy's ellipticity (issue 21).

The network reads a stamp (divided by its pixel-noise sigma) and its PSF image, and returns the mean
``eps = (eps1, eps2)`` of the galaxy's sheared ellipticity and a 2x2 covariance
``C = s^2 I + u u^T``: ``s`` an invariant scalar, ``u`` a spin-2 vector, so that the covariance's
principal axes turn with the image (any positive-definite 2x2 matrix has this form, with
``|u|^2 = lambda_1 - lambda_2`` along the major axis). The mean is squashed into the unit disc,
``eps = eps_raw tanh(|eps_raw|) / |eps_raw|``, so no output has ``|eps| >= 1``; a penalty on
``|eps_raw| > 1`` keeps the raw output where that map is close to the identity.

- :class:`EquivariantShearNet` (**e2cnn**, C_N-steerable convolutions): the image and PSF are scalar
  fields, the hidden layers regular fields of C_N, the output one trivial field (``log s``) and two
  frequency-2 fields (``eps`` and ``u``), read out by a convolution over the whole remaining map. It
  is exactly equivariant under rotations by multiples of ``360 / N`` degrees that the pixel grid
  realises (90 degrees on odd stamps) and close to it under any other rotation.
- :class:`PlainShearNet`: an ordinary CNN of similar size with the same heads, trained with random
  90-degree rotations and flips of its inputs and targets (the baseline).

Orientation: GalSim's image arrays are ``[y, x]`` with y up; e2cnn's are ``[-y, x]``. Stamps are
flipped in y before the network, so a counter-clockwise rotation on the sky is one in e2cnn's frame,
and the frequency-2 output ``(a, b)`` is ``(eps1, eps2)``: tested against GalSim-rotated renders.
Escnn (the maintained successor) is not used: its ``lie_learn`` dependency ships wheels built for
numpy 1 that fail to import under numpy 2 (measured), while e2cnn 0.2 installs and runs.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

OUT_DIM = 5  # eps_raw (2), u (2), log s (1)
SIGMA_FLOOR = 1e-3


@dataclass
class ShearNetConfig:
    """``kind`` ``equivariant`` or ``plain``; ``channels`` per stage (regular fields of C_N for the
    equivariant network, so its feature maps have ``N`` times as many channels); stamp size, odd.
    The plain network's widths are ``plain_channels``, or, when that is empty, ``N`` times
    ``channels`` (the equivariant network's feature-map sizes, with about 17 times its parameters:
    steerable filters are constrained). ``plain_channels=(6, 12, 12)`` matches the default
    equivariant network's parameter count (10.8k against 10.9k)."""

    kind: str = "equivariant"
    stamp_size: int = 33
    rotation_order: int = 8
    channels: tuple = (4, 8, 8)
    kernel_size: int = 5
    plain_channels: tuple = ()

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.plain_channels = tuple(int(c) for c in (self.plain_channels or ()))
        if self.plain_channels and (len(self.plain_channels) != len(self.channels) or min(self.plain_channels) < 1):
            raise ValueError(f"ShearNetConfig.plain_channels must give one positive width per stage "
                             f"({len(self.channels)}), got {self.plain_channels}")
        if self.kind not in ("equivariant", "plain"):
            raise ValueError(f"ShearNetConfig.kind must be 'equivariant' or 'plain', got {self.kind!r}")
        if self.stamp_size < 5 or self.stamp_size % 2 == 0:
            raise ValueError(f"ShearNetConfig.stamp_size must be odd (exact 90-degree rotations about the central "
                             f"pixel), got {self.stamp_size}")
        if self.rotation_order < 5 or self.rotation_order % 4:
            raise ValueError(f"ShearNetConfig.rotation_order must be a multiple of 4 and >= 8 (a 2-D "
                             f"frequency-2 field and exact 90-degree rotations), got {self.rotation_order}")
        if len(self.channels) < 1 or min(self.channels) < 1 or self.kernel_size % 2 == 0:
            raise ValueError("ShearNetConfig: channels must be positive and kernel_size odd")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["plain_channels"] = list(self.plain_channels)
        return d

    @classmethod
    def from_dict(cls, values: dict) -> ShearNetConfig:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"ShearNetConfig: unknown key(s) {unknown}")
        return cls(**values)


def _sizes(stamp: int, n_stages: int) -> list[int]:
    sizes = [stamp]
    for _ in range(n_stages - 1):
        sizes.append((sizes[-1] - 1) // 2 + 1)  # stride-2 pooling of an odd map keeps it odd and centred
    return sizes


class EquivariantShearNet(nn.Module):
    def __init__(self, config: ShearNetConfig):
        super().__init__()
        from e2cnn import gspaces
        from e2cnn import nn as enn

        self.config = config
        gs = gspaces.Rot2dOnR2(N=config.rotation_order)
        self.in_type = enn.FieldType(gs, [gs.trivial_repr] * 2)
        k = config.kernel_size
        layers = [enn.MaskModule(self.in_type, config.stamp_size, margin=1)]
        cur = self.in_type
        sizes = _sizes(config.stamp_size, len(config.channels))
        for i, c in enumerate(config.channels):
            out = enn.FieldType(gs, [gs.regular_repr] * c)
            layers += [enn.R2Conv(cur, out, k, padding=k // 2), enn.InnerBatchNorm(out), enn.ReLU(out, inplace=True)]
            if i < len(config.channels) - 1:
                layers.append(enn.PointwiseAvgPoolAntialiased(out, sigma=0.66, stride=2))
            cur = out
        self.body = enn.SequentialModule(*layers)
        self.out_type = enn.FieldType(gs, [gs.irrep(2), gs.irrep(2), gs.trivial_repr])
        self.head = enn.R2Conv(cur, self.out_type, sizes[-1], padding=0)
        self._enn = enn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self._enn.GeometricTensor(x, self.in_type)
        y = self.head(self.body(t)).tensor
        return y.reshape(y.shape[0], OUT_DIM)


class PlainShearNet(nn.Module):
    def __init__(self, config: ShearNetConfig):
        super().__init__()
        self.config = config
        k = config.kernel_size
        layers, cur = [], 2
        widths = config.plain_channels or tuple(c * config.rotation_order for c in config.channels)
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(cur, width, k, padding=k // 2), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i < len(config.channels) - 1:
                layers.append(nn.AvgPool2d(3, stride=2, padding=1))
            cur = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(cur, OUT_DIM, _sizes(config.stamp_size, len(config.channels))[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).reshape(x.shape[0], OUT_DIM)


def build_network(config: ShearNetConfig) -> nn.Module:
    return EquivariantShearNet(config) if config.kind == "equivariant" else PlainShearNet(config)


def network_inputs(images: np.ndarray, noise_sigma: np.ndarray, psf_images: np.ndarray) -> np.ndarray:
    """``[n, 2, N, N]`` float32: the stamp over its noise sigma and the PSF over its peak, both flipped
    in y (GalSim's ``[y, x]`` with y up to e2cnn's ``[-y, x]``)."""
    images = np.asarray(images, dtype=np.float32)
    sig = np.asarray(noise_sigma, dtype=np.float32).reshape(-1, 1, 1)
    psf = np.asarray(psf_images, dtype=np.float32)
    if psf.ndim == 2:
        psf = np.broadcast_to(psf, images.shape)
    psf = psf / psf.max(axis=(1, 2), keepdims=True)
    return np.ascontiguousarray(np.stack([images / sig, psf], axis=1)[:, :, ::-1, :])


def _head_parts(out: torch.Tensor):
    raw = out[:, 0:2]
    norm = torch.sqrt((raw ** 2).sum(1) + 1e-12)
    eps = raw * (torch.tanh(norm) / norm)[:, None]
    s2 = nn.functional.softplus(out[:, 4]) ** 2 + SIGMA_FLOOR ** 2
    return eps, out[:, 2:4], s2, norm


def gaussian_head(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(eps[n, 2], cov[n, 2, 2], eps_raw_norm[n])`` from the network's five outputs."""
    eps, u, s2, norm = _head_parts(out)
    eye = torch.eye(2, dtype=out.dtype, device=out.device)
    cov = s2[:, None, None] * eye + u[:, :, None] * u[:, None, :]
    return eps, cov, norm


def head_nll(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`gaussian_nll_2d` of the head's Gaussian, in the form that cannot cancel in float32:
    ``det C = s^2 (s^2 + |u|^2)`` and ``r^T C^-1 r = (|r|^2 - (u.r)^2 / (s^2 + |u|^2)) / s^2``."""
    eps, u, s2, _ = _head_parts(out)
    r = target - eps
    big = s2 + (u ** 2).sum(1)
    quad = ((r ** 2).sum(1) - (u * r).sum(1) ** 2 / big) / s2
    return 0.5 * (torch.log(s2) + torch.log(big) + quad) + math.log(2 * math.pi)


def gaussian_nll_2d(eps: torch.Tensor, cov: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per object ``0.5 (log det C + r^T C^-1 r) + log 2 pi``."""
    r = target - eps
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
    quad = (cov[:, 1, 1] * r[:, 0] ** 2 - 2 * cov[:, 0, 1] * r[:, 0] * r[:, 1] + cov[:, 0, 0] * r[:, 1] ** 2) / det
    return 0.5 * (torch.log(det) + quad) + math.log(2 * math.pi)


def shear_loss(out: torch.Tensor, target: torch.Tensor, penalty: float) -> tuple[torch.Tensor, dict]:
    norm = _head_parts(out)[3]
    nll = head_nll(out, target).mean()
    phys = (torch.relu(norm - 1.0) ** 2).mean()
    return nll + penalty * phys, {"nll": float(nll.detach()), "norm_penalty": float(phys.detach())}


def _augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 90-degree rotations and flips of stamps (in the network's frame) and the matching
    transformation of their ellipticities: a quarter turn maps eps to -eps; a flip of the x axis
    maps (eps1, eps2) to (eps1, -eps2)."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    flip = bool(torch.randint(0, 2, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    y = y * (-1.0 if k % 2 else 1.0)
    if flip:
        x = torch.flip(x, dims=(3,))
        y = y * torch.tensor([1.0, -1.0], dtype=y.dtype)
    return x, y


@dataclass
class ShearTrainConfig:
    max_epochs: int = 10
    patience: int = 3
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    norm_penalty: float = 10.0
    clip_grad_norm: float = 5.0
    augment: bool | None = None  # None: augment the plain network only

    def __post_init__(self):
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("ShearTrainConfig: max_epochs, patience, batch_size and learning_rate must be positive")
        if self.norm_penalty < 0:
            raise ValueError("ShearTrainConfig.norm_penalty must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def train_shear_model(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                      net: ShearNetConfig, cfg: ShearTrainConfig, seed: int, device: str = "cpu",
                      progress: bool = False) -> tuple[dict, dict]:
    """Train on inputs ``x[n, 2, N, N]`` (:func:`network_inputs`) and ellipticities ``y[n, 2]``, early
    stopping on the NLL of the validation set. Returns the best state dict and the history."""
    from tqdm.auto import tqdm

    augment = cfg.augment if cfg.augment is not None else net.kind == "plain"
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y_train, dtype=np.float32))
    xv = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32))
    yv = torch.from_numpy(np.asarray(y_val, dtype=np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(net).to(device)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        steps = cfg.max_epochs * max(1, math.ceil(len(xt) / cfg.batch_size))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=steps)
        hist = {"train_loss": [], "val_nll": [], "best_epoch": -1, "samples_per_s": []}
        best, best_state, stale, t0 = math.inf, None, 0, time.perf_counter()
        bar = tqdm(range(cfg.max_epochs), desc=f"shear net ({net.kind})", disable=not progress, leave=False)
        for epoch in bar:
            model.train()
            perm = torch.randperm(len(xt), generator=gen)
            total, t_ep = 0.0, time.perf_counter()
            for s in range(0, len(xt), cfg.batch_size):
                idx = perm[s:s + cfg.batch_size]
                xb, yb = xt[idx], yt[idx]
                if augment:
                    xb, yb = _augment(xb, yb, gen)
                loss, _ = shear_loss(model(xb.to(device)), yb.to(device), cfg.norm_penalty)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                opt.step()
                sched.step()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"shear net ({net.kind}): the loss became {float(loss)} in epoch {epoch}; "
                                             f"lower learning_rate ({cfg.learning_rate})")
                total += float(loss.detach()) * len(idx)
            hist["samples_per_s"].append(len(xt) / (time.perf_counter() - t_ep))
            val = evaluate_nll(model, xv, yv, device)
            hist["train_loss"].append(total / len(xt))
            hist["val_nll"].append(val)
            bar.set_postfix(loss=f"{hist['train_loss'][-1]:.3f}", val_nll=f"{val:.3f}")
            if val < best:
                best, stale, hist["best_epoch"] = val, 0, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        hist["seconds"] = time.perf_counter() - t0
    log.info("shear net (%s): best epoch %d, validation NLL %.4f, %.1f s", net.kind, hist["best_epoch"], best,
             hist["seconds"])
    return best_state, hist


def evaluate_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str = "cpu", batch: int = 1024) -> float:
    model.eval()
    tot = 0.0
    with torch.no_grad():
        for s in range(0, len(x), batch):
            tot += float(head_nll(model(x[s:s + batch].to(device)), y[s:s + batch].to(device)).sum())
    return tot / max(len(x), 1)


def load_network(state: dict, net: ShearNetConfig, device: str = "cpu") -> nn.Module:
    model = build_network(net)
    model.load_state_dict(state)
    return model.to(device).eval()


def predict(model: nn.Module, x: np.ndarray, device: str = "cpu", batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(eps[n, 2], cov[n, 2, 2])`` float64 for inputs ``x[n, 2, N, N]``."""
    eps_out, cov_out = [], []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], dtype=np.float32)).to(device)
            eps, cov, _ = gaussian_head(model(xb))
            eps_out.append(eps.cpu().numpy().astype(np.float64))
            cov_out.append(cov.cpu().numpy().astype(np.float64))
    if not eps_out:
        return np.zeros((0, 2)), np.zeros((0, 2, 2))
    return np.concatenate(eps_out), np.concatenate(cov_out)


def rotate_spin2(v: np.ndarray, degrees) -> np.ndarray:
    """Spin-2 vectors ``v[..., 2]`` after the image turns counter-clockwise by ``degrees``: by twice that."""
    a = np.deg2rad(2 * np.asarray(degrees, dtype=float))
    c, s = np.cos(a), np.sin(a)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def equivariance_check(model, cfg, n: int, rng: np.random.Generator, snr: float = 50.0,
                       operators: dict | None = None) -> dict:
    """Errors of the estimator's mean under rotations of ``n`` noise-free GalSim renders (galaxies
    and angles from ``rng``; inputs scaled by the noise sigma of S/N ``snr``): exact 90-degree pixel
    rotations (max), and arbitrary angles ``|eps(theta) - R(2 theta) eps(0)|`` (mean, max). With
    ``operators`` (:class:`~calipers.shear.metacal.MetacalOperators` per PSF index) the network reads
    the renders' metacal ``noshear`` images and the reconvolution PSF, as the estimator does."""
    from .simulate import draw_galaxies, psf_image, render

    gal = draw_galaxies(cfg, n, rng)
    angles = rng.uniform(0.0, 360.0, n)
    args = [(gal["sersic_n"][i], gal["hlr"][i], gal["e1"][i], gal["e2"][i], 0.0, 0.0, gal["psf_fwhm"][i])
            for i in range(n)]
    base = np.stack([render(cfg, *a) for a in args])
    turned = np.stack([render(cfg, *a, rotate_deg=t) for a, t in zip(args, angles)])
    sig = np.sqrt((base ** 2).sum((1, 2))) / snr
    psf = np.stack([psf_image(cfg, f) for f in gal["psf_fwhm"]])
    if operators is not None:
        for p in np.unique(gal["psf_index"]):
            sel = gal["psf_index"] == p
            base[sel] = operators[int(p)].apply(base[sel], "noshear")
            turned[sel] = operators[int(p)].apply(turned[sel], "noshear")
            psf[sel] = operators[int(p)].reconv_psf_image
    x0 = network_inputs(base, sig, psf)
    e0, _ = predict(model, x0)
    et, _ = predict(model, network_inputs(turned, sig, psf))
    e90, _ = predict(model, np.ascontiguousarray(np.rot90(x0, 1, axes=(2, 3))))
    err = np.hypot(*(et - rotate_spin2(e0, angles)).T)
    return {"n": int(n), "snr_scale": snr, "exact_90_max_error": float(np.abs(e90 + e0).max()),
            "arbitrary_mean_error": float(err.mean()), "arbitrary_max_error": float(err.max()),
            "mean_abs_eps": float(np.hypot(*e0.T).mean())}
