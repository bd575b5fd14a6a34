"""A compact residual CNN lens finder, its seeded ensemble, and the scores a calibrator can trust.

The model sees three-band cutouts as signal-to-noise maps (:func:`preprocess_cutouts`), so that an
image's depth changes what is visible, not the scale of the numbers. Each member is a small
ResNet (:class:`LensCNN`): a strided 5x5 stem, four residual blocks down to 4x4 pixels, global
average pooling and a two-layer head with dropout, optionally joined by a metadata branch (PSF
size, depth, exposure count). Members differ in seed (initial weights, batch order,
augmentation, dropout draws, validation split) and optionally in a *specialisation*: a member may
up-weight one stratum of PSF FWHM or exposure count (the diversity experiment).

Training (:func:`train_member`) uses

- class weighting for imbalance (positives weighted by ``n_neg / n_pos``); the logit is then
  shifted back by ``-log(n_neg / n_pos)`` so that the stored logit is the log-odds at the training
  sample's prevalence (Bayes' rule: a class-weighted loss is a loss at another prior);
- negatives re-weighted to the lenses' exposure-count distribution
  (:func:`matched_weights`), the confound survey lens searches warn about: a finder that learns
  "deep image => lens" fails on the survey;
- a random dihedral transform (rotations by 90 degrees and flips) per image and batch;
- AdamW, early stopping on the validation AUROC (the best epoch's weights are kept).

Scoring (:func:`score_members`) averages each member's logit over the eight dihedral transforms
of the image, which makes the score exactly invariant to them (up to float summation order), and
runs ``mc_samples`` Monte-Carlo dropout passes through the head (the convolutional features are
computed once) to give a per-member logit mean and variance. :func:`fuse_members` combines
members by a plain mean or by inverse-variance weighting; which one a pipeline uses is decided on
held-out data (``ClassifierCalibrate``), not here.

Everything here takes and returns arrays and state dicts; files are written by
:mod:`calipers.core.lens_models`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

__all__ = ["LensCNNConfig", "LensTrainConfig", "LensCNN", "LensEnsemble", "preprocess_cutouts", "fused_for_inference",
           "dihedral_transforms", "matched_weights", "train_member", "train_ensemble", "score_members",
           "fuse_members", "ensemble_diversity", "specialisation_weights", "ImageShapeError"]


class ImageShapeError(ValueError):
    """Cutouts whose shape (bands, pixels) is not the one a model was trained on."""


@dataclass
class LensCNNConfig:
    """Architecture of one member.

    Parameters
    ----------
    n_bands, n_pix : input shape (bands, pixels per side) the network is built for
    widths : channels of the stem and of each residual block; every block after the first halves
        the resolution (64 px -> 32 (stem) -> 32, 16, 8, 4 with the default five widths)
    head_hidden : units of the hidden layer of the head
    dropout : dropout probability in the head (training and Monte-Carlo dropout at scoring)
    meta_columns : metadata columns fed to the head through a small branch (empty: no branch)
    asinh_softening : the S/N maps are compressed as ``asinh(snr / asinh_softening)``
    """

    n_bands: int = 3
    n_pix: int = 64
    widths: tuple[int, ...] = (16, 16, 32, 64, 64)
    head_hidden: int = 64
    dropout: float = 0.3
    meta_columns: tuple[str, ...] = ()
    asinh_softening: float = 3.0

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.meta_columns = tuple(self.meta_columns)
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"widths must hold at least two positive channel counts, got {self.widths}")
        if self.n_pix % (2 ** (len(self.widths) - 1)) != 0:
            raise ValueError(f"n_pix={self.n_pix} must be divisible by 2^{len(self.widths) - 1} for widths {self.widths}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.asinh_softening <= 0:
            raise ValueError(f"asinh_softening must be positive, got {self.asinh_softening}")

    def to_dict(self) -> dict:
        return asdict(self) | {"widths": list(self.widths), "meta_columns": list(self.meta_columns)}

    @classmethod
    def from_dict(cls, d: dict) -> "LensCNNConfig":
        return cls(**d)


@dataclass
class LensTrainConfig:
    """How members are trained.

    Parameters
    ----------
    n_members : ensemble size
    max_epochs, patience : early stopping on the validation AUROC
    batch_size, learning_rate, weight_decay : AdamW
    validation_fraction : part of the training images held out for early stopping (per member seed)
    class_weighting : weight positives by n_neg / n_pos
    match_exposures : re-weight negatives to the positives' exposure-count distribution
    augment : random dihedral transform per image
    specialise : None, "psf" or "depth": member k (k >= 1) up-weights the k-th quantile stratum of
        PSF FWHM (``psf_fwhm_r``) or exposure count (``n_exposures``) by ``specialist_weight``;
        member 0 stays a generalist
    """

    n_members: int = 5
    max_epochs: int = 15
    patience: int = 4
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    validation_fraction: float = 0.1
    class_weighting: bool = True
    match_exposures: bool = True
    augment: bool = True
    specialise: str | None = None
    specialist_weight: float = 3.0

    def __post_init__(self):
        if self.n_members < 1 or self.max_epochs < 1 or self.patience < 1 or self.batch_size < 2:
            raise ValueError("n_members, max_epochs and patience must be >= 1 and batch_size >= 2")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be in (0, 0.5), got {self.validation_fraction}")
        if self.specialise not in (None, "psf", "depth"):
            raise ValueError(f"specialise must be None, 'psf' or 'depth', got {self.specialise!r}")

    def to_dict(self) -> dict:
        return asdict(self)


SPECIALISATION_COLUMNS = {"psf": "psf_fwhm_r", "depth": "n_exposures"}


# ----------------------------------------------------------------------------- inputs

def preprocess_cutouts(data: np.ndarray, ivar: np.ndarray, asinh_softening: float = 3.0,
                       expected_shape: tuple[int, int] | None = None, row_offset: int = 0) -> np.ndarray:
    """Turn cutouts into the network's input: per-band S/N maps, asinh-compressed.

    ``snr = data / sigma_sky`` with ``sigma_sky`` the median per-pixel noise of the band in the
    cutout (``1 / sqrt(median ivar)``, sky dominated), then ``asinh(snr / asinh_softening)``.

    Parameters
    ----------
    data, ivar : (N, bands, n_pix, n_pix) flux (any linear unit) and inverse variance
    expected_shape : (bands, n_pix) a model was trained on; a mismatch raises ImageShapeError
    row_offset : index of the first row in its file, for error messages

    Returns
    -------
    (N, bands, n_pix, n_pix) float32
    """
    data = np.asarray(data)
    ivar = np.asarray(ivar)
    if data.ndim != 4 or data.shape[-1] != data.shape[-2]:
        raise ImageShapeError(f"cutouts must have shape (N, bands, n_pix, n_pix), got {data.shape}")
    if ivar.shape != data.shape:
        raise ImageShapeError(f"ivar shape {ivar.shape} differs from data shape {data.shape}")
    if expected_shape is not None and tuple(data.shape[1:3]) != tuple(expected_shape):
        raise ImageShapeError(f"cutouts have {data.shape[1]} bands of {data.shape[2]}x{data.shape[3]} pixels; "
                              f"the model was trained on {expected_shape[0]} bands of "
                              f"{expected_shape[1]}x{expected_shape[1]} pixels")
    finite = np.isfinite(data).all(axis=(1, 2, 3)) & np.isfinite(ivar).all(axis=(1, 2, 3))
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"cutout at row {bad + row_offset} has NaN/inf pixels in data or ivar")
    med = np.median(ivar.reshape(len(ivar), ivar.shape[1], -1), axis=2)
    if np.any(med <= 0):
        n, b = np.argwhere(med <= 0)[0]
        raise ValueError(f"cutout at row {n + row_offset}, band {b}: median ivar is not positive (no noise model)")
    sigma = (1.0 / np.sqrt(med))[:, :, None, None]
    return np.arcsinh(data / (sigma * asinh_softening)).astype(np.float32)


def dihedral_transforms(x: torch.Tensor) -> list[torch.Tensor]:
    """The eight images of the dihedral group D4 acting on the last two axes (4 rotations x flip)."""
    out = []
    for flipped in (x, torch.flip(x, dims=(-1,))):
        for k in range(4):
            out.append(torch.rot90(flipped, k, dims=(-2, -1)))
    return out


def matched_weights(values: np.ndarray, labels: np.ndarray, bins) -> np.ndarray:
    """Weights for the negatives that give them the positives' histogram of ``values``.

    Positives get weight 1; a negative in bin b gets ``p_pos(b) / p_neg(b)`` rescaled so that the
    negatives' weights sum to their count. A bin with negatives but no positives gets weight 0; a
    bin with positives but no negatives cannot be matched and is logged.

    Parameters
    ----------
    values : (n,) the confounding variable (e.g. exposure count)
    labels : (n,) 1 for positives, 0 for negatives
    bins : bin edges (as numpy.histogram)
    """
    values = np.asarray(values, dtype=float)
    labels = np.asarray(labels).astype(bool)
    edges = np.asarray(bins, dtype=float)
    idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    n_bins = len(edges) - 1
    pos = np.bincount(idx[labels], minlength=n_bins).astype(float)
    neg = np.bincount(idx[~labels], minlength=n_bins).astype(float)
    if pos.sum() == 0 or neg.sum() == 0:
        raise ValueError("matched_weights needs both positives and negatives")
    unmatched = (pos > 0) & (neg == 0)
    if unmatched.any():
        log.warning("%d bin(s) hold positives but no negatives: they cannot be matched", int(unmatched.sum()))
    ratio = np.divide(pos / pos.sum(), neg / neg.sum(), out=np.zeros(n_bins), where=neg > 0)
    weights = np.ones(len(values))
    weights[~labels] = ratio[idx[~labels]]
    weights[~labels] *= (~labels).sum() / weights[~labels].sum()
    return weights


def specialisation_weights(meta: dict, member: int, n_members: int, mode: str | None, weight: float) -> np.ndarray | None:
    """Sample weights that make member ``member`` a specialist of one stratum (None for a generalist).

    Members 1..n-1 split the column ``SPECIALISATION_COLUMNS[mode]`` into n-1 quantile strata;
    member k weights its own stratum by ``weight`` and the rest by 1. Member 0 is a generalist.
    """
    if mode is None or member == 0 or n_members < 2:
        return None
    column = SPECIALISATION_COLUMNS[mode]
    if column not in meta:
        raise KeyError(f"specialise={mode!r} needs the metadata column {column!r}; have {sorted(meta)}")
    values = np.asarray(meta[column], dtype=float)
    edges = np.quantile(values, np.linspace(0, 1, n_members))
    stratum = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_members - 2)
    return np.where(stratum == member - 1, weight, 1.0)


# ----------------------------------------------------------------------------- network

class _ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = None
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout with an explicit generator (reproducible without touching the global RNG)."""
    if p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


class LensCNN(nn.Module):
    """One member: convolutional features, then a dropout head (optionally with metadata)."""

    def __init__(self, config: LensCNNConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Sequential(nn.Conv2d(config.n_bands, w[0], 5, 2, 2, bias=False), nn.BatchNorm2d(w[0]),
                                  nn.ReLU())
        blocks = [_ResidualBlock(w[0], w[1], 1)]
        blocks += [_ResidualBlock(w[i], w[i + 1], 2) for i in range(1, len(w) - 1)]
        self.blocks = nn.Sequential(*blocks)
        n_meta = len(config.meta_columns)
        self.meta_branch = nn.Sequential(nn.Linear(n_meta, 16), nn.ReLU()) if n_meta else None
        self.hidden = nn.Linear(w[-1] + (16 if n_meta else 0), config.head_hidden)
        self.out = nn.Linear(config.head_hidden, 1)
        # standardisation of the metadata (set from the training set, stored with the weights)
        self.register_buffer("meta_mean", torch.zeros(n_meta))
        self.register_buffer("meta_scale", torch.ones(n_meta))
        # log-odds shift undoing the class weighting (see the module docstring)
        self.register_buffer("logit_offset", torch.zeros(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)

    def head(self, features: torch.Tensor, meta: torch.Tensor | None = None, dropout: bool = False,
             generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.config.dropout if dropout else 0.0
        h = features
        if self.meta_branch is not None:
            if meta is None:
                raise ValueError(f"this model has a metadata branch: it needs {list(self.config.meta_columns)}")
            h = torch.cat([h, self.meta_branch((meta - self.meta_mean) / self.meta_scale)], dim=1)
        h = _dropout(h, p, generator)
        h = _dropout(F.relu(self.hidden(h)), p, generator)
        return self.out(h).squeeze(1) + self.logit_offset

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic logit (no dropout): the graph exported to ONNX."""
        return self.head(self.features(x), meta)


def _meta_matrix(meta: dict | None, columns: tuple[str, ...], n: int) -> np.ndarray | None:
    if not columns:
        return None
    if meta is None:
        raise KeyError(f"the model needs metadata columns {list(columns)}")
    missing = [c for c in columns if c not in meta]
    if missing:
        raise KeyError(f"metadata column(s) {missing} missing; have {sorted(meta)}")
    m = np.stack([np.asarray(meta[c], dtype=np.float32) for c in columns], axis=1)
    if m.shape[0] != n:
        raise ValueError(f"metadata has {m.shape[0]} rows for {n} images")
    bad = ~np.isfinite(m)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"metadata column {columns[c]!r} is not finite at row {r}")
    return m


# ----------------------------------------------------------------------------- metrics used in training

def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties counted one half (training-time monitor)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ----------------------------------------------------------------------------- training

@dataclass
class MemberHistory:
    """What happened while one member trained."""

    seed: int
    epochs: int = 0
    best_epoch: int = 0
    best_val_auroc: float = float("nan")
    train_loss: list = field(default_factory=list)
    val_auroc: list = field(default_factory=list)
    seconds: float = 0.0
    specialisation: str | None = None


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random dihedral transform per image (8 groups, exact)."""
    choice = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for k, xt in enumerate(dihedral_transforms(x)):
        sel = choice == k
        if sel.any():
            out[sel] = xt[sel]
    return out


def _predict_logits(model: LensCNN, x: np.ndarray, meta: np.ndarray | None, device: str, batch: int = 256) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            xb = torch.from_numpy(x[s:s + batch]).to(device)
            mb = None if meta is None else torch.from_numpy(meta[s:s + batch]).to(device)
            out.append(model(xb, mb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def train_member(x: np.ndarray, labels: np.ndarray, meta: dict | None, cnn: LensCNNConfig, train: LensTrainConfig,
                 seed: int, sample_weights: np.ndarray | None = None, device: str = "cpu",
                 progress: bool = False) -> tuple[dict, MemberHistory]:
    """Train one member on preprocessed inputs ``x`` (see :func:`preprocess_cutouts`).

    Returns the state dict of the best epoch (by validation AUROC) and its history. The global
    torch RNG is left untouched: initial weights come from a forked RNG seeded with ``seed``, and
    batch order, augmentation and dropout from generators seeded with it.
    """
    import time

    labels = np.asarray(labels).astype(np.float32)
    n = len(labels)
    if x.shape[0] != n:
        raise ValueError(f"{x.shape[0]} images for {n} labels")
    if x.shape[1:] != (cnn.n_bands, cnn.n_pix, cnn.n_pix):
        raise ImageShapeError(f"inputs have shape {x.shape[1:]}, the network expects "
                              f"{(cnn.n_bands, cnn.n_pix, cnn.n_pix)}")
    if labels.min() == labels.max():
        raise ValueError("training needs both lenses and non-lenses")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = max(int(round(train.validation_fraction * n)), 2)
    val, fit = order[:n_val], order[n_val:]
    if labels[val].min() == labels[val].max():
        raise ValueError("the validation split holds one class only: give more images")
    meta_m = _meta_matrix(meta, cnn.meta_columns, n)

    weights = np.ones(n) if sample_weights is None else np.asarray(sample_weights, dtype=float).copy()
    if train.match_exposures and meta is not None and "n_exposures" in meta:
        ne = np.asarray(meta["n_exposures"], dtype=float)
        edges = np.arange(np.floor(ne.min()), np.ceil(ne.max()) + 2) - 0.5
        weights *= matched_weights(ne, labels, edges)
    n_pos = labels[fit].sum()
    n_neg = len(fit) - n_pos
    pos_weight = float(n_neg / n_pos) if train.class_weighting else 1.0
    weights = np.where(labels == 1, weights * pos_weight, weights)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LensCNN(cnn)
    if meta_m is not None:
        model.meta_mean.copy_(torch.from_numpy(meta_m[fit].mean(0)))
        model.meta_scale.copy_(torch.from_numpy(meta_m[fit].std(0) + 1e-6))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    steps_per_epoch = math.ceil(len(fit) / train.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train.learning_rate, pct_start=0.15,
                                                total_steps=steps_per_epoch * train.max_epochs)
    gen = torch.Generator().manual_seed(seed + 1)
    hist = MemberHistory(seed=seed)
    best_state, since_best = None, 0
    epochs = range(train.max_epochs)
    bar = tqdm(epochs, desc=f"member seed {seed}", disable=not progress, leave=False)
    w_t = torch.from_numpy(weights.astype(np.float32))
    y_t = torch.from_numpy(labels)
    for epoch in bar:
        model.train()
        perm = fit[rng.permutation(len(fit))]
        total, count = 0.0, 0
        for s in range(0, len(perm), train.batch_size):
            idx = np.sort(perm[s:s + train.batch_size])
            if len(idx) < 2:
                continue
            xb = torch.from_numpy(x[idx])
            if train.augment:
                xb = _augment(xb, gen)
            xb = xb.to(device)
            mb = None if meta_m is None else torch.from_numpy(meta_m[idx]).to(device)
            logit = model.head(model.features(xb), mb, dropout=True, generator=gen_dev(gen, device))
            # the loss sees the class-weighted log-odds (offset is zero while training)
            loss_each = F.binary_cross_entropy_with_logits(logit, y_t[idx].to(device), reduction="none")
            wb = w_t[idx].to(device)
            loss = (loss_each * wb).sum() / wb.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        val_scores = _predict_logits(model, x[val], None if meta_m is None else meta_m[val], device)
        auc = _auroc(val_scores, labels[val])
        hist.train_loss.append(total / max(count, 1))
        hist.val_auroc.append(auc)
        hist.epochs = epoch + 1
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}", val_auroc=f"{auc:.4f}")
        if best_state is None or auc > hist.best_val_auroc:
            hist.best_val_auroc, hist.best_epoch, since_best = auc, epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= train.patience:
                break
    best_state["logit_offset"] = torch.tensor(-math.log(pos_weight), dtype=torch.float32)
    hist.seconds = time.perf_counter() - t0
    log.info("member seed %d: best val AUROC %.4f at epoch %d of %d (%.0f s)", seed, hist.best_val_auroc,
             hist.best_epoch, hist.epochs, hist.seconds)
    return best_state, hist


def gen_dev(generator: torch.Generator, device: str) -> torch.Generator | None:
    """The CPU generator drives dropout masks on the CPU; on a GPU masks come from a device generator
    seeded from it (still reproducible)."""
    if str(device).startswith("cpu"):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class LensEnsemble:
    """A trained ensemble: architecture, training settings, member state dicts and histories."""

    cnn: LensCNNConfig
    train: LensTrainConfig
    states: list[dict]
    seeds: list[int]
    histories: list[MemberHistory] = field(default_factory=list)

    @property
    def n_members(self) -> int:
        return len(self.states)

    def member(self, k: int, device: str = "cpu") -> LensCNN:
        model = LensCNN(self.cnn)
        model.load_state_dict(self.states[k])
        return model.to(device).eval()

    def metadata(self) -> dict:
        return {"kind": "calipers.lens.ensemble", "cnn": self.cnn.to_dict(), "train": self.train.to_dict(),
                "seeds": list(self.seeds), "histories": [asdict(h) for h in self.histories]}

    def state_dicts(self) -> dict:
        return {f"member_{k}": s for k, s in enumerate(self.states)}

    @classmethod
    def from_parts(cls, meta: dict, states: dict) -> "LensEnsemble":
        if meta.get("kind") != "calipers.lens.ensemble":
            raise ValueError(f"not a lens ensemble (kind={meta.get('kind')!r})")
        seeds = list(meta["seeds"])
        missing = [f"member_{k}" for k in range(len(seeds)) if f"member_{k}" not in states]
        if missing:
            raise ValueError(f"weights for {missing} are missing")
        cnn = LensCNNConfig.from_dict(meta["cnn"])
        train = LensTrainConfig(**meta["train"])
        hist = [MemberHistory(**h) for h in meta.get("histories", [])]
        ens = cls(cnn, train, [states[f"member_{k}"] for k in range(len(seeds))], seeds, hist)
        for k in range(ens.n_members):  # fail now, not at scoring, on shapes that do not fit
            ens.member(k)
        return ens


def train_ensemble(data: np.ndarray, ivar: np.ndarray, labels: np.ndarray, meta: dict | None,
                   cnn: LensCNNConfig | None = None, train: LensTrainConfig | None = None, seed: int = 0,
                   device: str = "cpu", members: list[int] | None = None, progress: bool = False) -> LensEnsemble:
    """Train ``train.n_members`` members (or the subset ``members``, e.g. one MPI rank's share).

    Member k uses seed ``seed * 1000 + k``; a member trained alone equals the same member trained
    with the others.
    """
    cnn = cnn or LensCNNConfig(n_bands=data.shape[1], n_pix=data.shape[-1])
    train = train or LensTrainConfig()
    x = preprocess_cutouts(data, ivar, cnn.asinh_softening, expected_shape=(cnn.n_bands, cnn.n_pix))
    ks = list(range(train.n_members)) if members is None else list(members)
    states, seeds, hists = [], [], []
    for k in ks:
        member_seed = seed * 1000 + k
        sw = specialisation_weights(meta or {}, k, train.n_members, train.specialise, train.specialist_weight)
        state, hist = train_member(x, labels, meta, cnn, train, member_seed, sample_weights=sw, device=device,
                                   progress=progress)
        hist.specialisation = None if sw is None else f"{train.specialise}:{k}"
        states.append(state)
        seeds.append(member_seed)
        hists.append(hist)
    return LensEnsemble(cnn, train, states, seeds, hists)


# ----------------------------------------------------------------------------- scoring

@dataclass
class MemberScores:
    """Per-member dihedral-averaged logits (mean over MC-dropout passes) and their MC variance."""

    logit: np.ndarray       # (M, N)
    variance: np.ndarray    # (M, N) Monte-Carlo dropout variance of the logit
    deterministic: np.ndarray  # (M, N) dihedral-averaged logit without dropout
    single_view: np.ndarray  # (M, N) logit of the untransformed image without dropout (the baseline)


def fused_for_inference(model: LensCNN) -> LensCNN:
    """A copy of an evaluation-mode member with every batch normalisation folded into the convolution
    before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``): the same function up to float rounding
    (~1e-8 relative), about 1.5x faster on a CPU."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    fused.stem[0] = fuse_conv_bn_eval(fused.stem[0], fused.stem[1])
    fused.stem[1] = nn.Identity()
    for block in fused.blocks:
        block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), nn.Identity()
        block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), nn.Identity()
        if block.skip is not None:
            block.skip = fuse_conv_bn_eval(block.skip[0], block.skip[1])
    return fused


def score_members(ensemble: LensEnsemble, data: np.ndarray, ivar: np.ndarray, meta: dict | None = None,
                  mc_samples: int = 16, seed: int = 0, device: str = "cpu", batch_size: int = 128,
                  row_offset: int = 0, dihedral: bool = True, view_batch: int = 64) -> MemberScores:
    """Score cutouts with every member.

    For each member the convolutional features of the (eight dihedral transforms of the) image
    are computed once; the head then runs once without dropout and ``mc_samples`` times with
    dropout (masks from a generator seeded with ``seed`` and the member, so scores are
    reproducible and independent of batching only through the seed and row: each batch derives
    its masks from ``(seed, member, first row)``). Logits are averaged over the transforms.
    Convolutions run on members with their batch normalisations folded in
    (:func:`fused_for_inference`), ``view_batch`` images at a time: on a CPU small batches are
    faster per image than large ones (0.46 against 1.6 ms per view at 64 and 1024 views, one
    thread).
    """
    cnn = ensemble.cnn
    x = preprocess_cutouts(data, ivar, cnn.asinh_softening, expected_shape=(cnn.n_bands, cnn.n_pix),
                           row_offset=row_offset)
    meta_m = _meta_matrix(meta, cnn.meta_columns, len(x))
    n, m = len(x), ensemble.n_members
    logit = np.zeros((m, n), np.float64)
    var = np.zeros((m, n), np.float64)
    det = np.zeros((m, n), np.float64)
    single = np.zeros((m, n), np.float64)
    for k in range(m):
        model = fused_for_inference(ensemble.member(k, device))
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                xb = torch.from_numpy(x[s:s + batch_size]).to(device)
                nb = xb.shape[0]
                mb = None if meta_m is None else torch.from_numpy(meta_m[s:s + batch_size]).to(device)
                views = torch.cat(dihedral_transforms(xb) if dihedral else [xb], dim=0)
                feats = torch.cat([model.features(views[v:v + view_batch])
                                   for v in range(0, len(views), view_batch)]).double()  # (V*nb, F)
                n_views = len(views) // nb
                mv = None if mb is None else mb.repeat(n_views, 1)
                d = model.head(feats.float(), mv).double().reshape(n_views, nb)
                det[k, s:s + nb] = d.mean(0).cpu().numpy()
                single[k, s:s + nb] = d[0].cpu().numpy()
                gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, k, s + row_offset])
                                                        .generate_state(1)[0]))
                draws = torch.stack([model.head(feats.float(), mv, dropout=True, generator=gen_dev(gen, device))
                                     .double().reshape(n_views, nb).mean(0) for _ in range(mc_samples)])
                logit[k, s:s + nb] = draws.mean(0).cpu().numpy()
                var[k, s:s + nb] = draws.var(0, unbiased=True).cpu().numpy() if mc_samples > 1 else 0.0
    return MemberScores(logit, var, det, single)


def fuse_members(logits: np.ndarray, variances: np.ndarray | None = None, method: str = "mean") -> np.ndarray:
    """Combine member logits (M, N): ``mean`` or ``inverse_variance`` (weights 1 / MC variance per
    object, normalised; a member with zero variance would dominate, so variances are floored at
    1e-6 of the object's mean variance)."""
    logits = np.asarray(logits, dtype=float)
    if method == "mean":
        return logits.mean(axis=0)
    if method != "inverse_variance":
        raise ValueError(f"fusion method must be 'mean' or 'inverse_variance', got {method!r}")
    if variances is None:
        raise ValueError("inverse-variance fusion needs the members' variances")
    v = np.asarray(variances, dtype=float)
    v = np.maximum(v, 1e-6 * v.mean(axis=0, keepdims=True) + 1e-12)
    w = 1.0 / v
    return (w * logits).sum(axis=0) / w.sum(axis=0)


def ensemble_diversity(member_logits: np.ndarray, threshold: float | None = None, window: float = 1.0) -> dict:
    """How different the members are.

    Returns the mean off-diagonal Pearson correlation of member logits and, given a logit
    ``threshold``, the disagreement near it: among objects whose fused (mean) logit lies within
    ``window`` of the threshold, the fraction on which members do not all agree on the side.
    """
    z = np.asarray(member_logits, dtype=float)
    m = z.shape[0]
    out = {"n_members": int(m)}
    if m > 1:
        c = np.corrcoef(z)
        out["mean_correlation"] = float(c[~np.eye(m, dtype=bool)].mean())
        out["min_correlation"] = float(c[~np.eye(m, dtype=bool)].min())
    if threshold is not None and m > 1:
        fused = z.mean(axis=0)
        near = np.abs(fused - threshold) <= window
        side = z[:, near] > threshold
        out["n_near_threshold"] = int(near.sum())
        out["disagreement_near_threshold"] = float(np.mean(side.any(0) & ~side.all(0))) if near.any() else float("nan")
    return out
