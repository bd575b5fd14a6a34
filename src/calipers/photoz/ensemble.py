"""Deep ensembles of mixture density networks (Lakshminarayanan et al. 2017).

Each member is trained from its own seed on its own random train/validation split, with early
stopping on the validation negative log-likelihood. The ensemble's p(z) is the equal-weight
mixture of the members' mixtures, so it carries both the aleatoric width each member learns
and the epistemic spread between members.

Two guards keep unusual inputs from producing absurd p(z):

- **band dropout** (``EnsembleConfig.band_dropout``): during training, each detected magnitude
  is, with that probability, given the non-detection treatment of its band (fill magnitude,
  non-detection error, flag 1), so the network has seen every band missing even when the
  training catalog has no non-detections in it;
- **a redshift range**: the ensemble records the training redshift range (or the configured
  ``zmin``/``zmax``) and every component mean is clamped into it, so no p(z) is centred at a
  redshift the model never saw.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from calipers.photoz.mdn import MixtureDensityNetwork, mixture_scores, photometry_features
from calipers.photoz.mixture import in_threads, mixture_point_estimates
from calipers.photoz.preprocess import PhotometryPreprocessor

log = logging.getLogger(__name__)

MODEL_FORMAT = "calipers.photoz.DeepEnsemble/2"
# written before band dropout, the redshift range and the unscaled flags: still loadable (see from_state)
LEGACY_FORMATS = ("calipers.photoz.DeepEnsemble/1",)


class BandMismatchError(ValueError):
    """A photo-z model is applied to other bands than it was trained on."""


class ModelStateError(ValueError):
    """Saved ensemble metadata or weights are unusable (wrong format, invalid values, or weights
    that do not match the metadata)."""


def _silu_(h: torch.Tensor) -> torch.Tensor:
    """SiLU in place with the compiled float32 kernel (see calipers.photoz._kernels.silu_)."""
    from calipers.photoz._kernels import silu_

    silu_(h.view(-1).numpy())
    return h


# the hidden-layer non-linearities of MixtureDensityNetwork.ACTIVATIONS at estimation time, in place
# where possible (h: a contiguous float32 block of activations)
_INPLACE_ACTIVATIONS = {
    "silu": _silu_,
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "gelu": torch.nn.functional.gelu,
}


def drop_bands(mags: torch.Tensor, errs: torch.Tensor, flags: torch.Tensor, probability: float,
               fill: torch.Tensor, nondetection_err: float, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Band-dropout augmentation: each detected magnitude (flag 0) is, with ``probability``,
    given its band's non-detection treatment - magnitude ``fill`` (n_bands,) or (1, n_bands),
    error ``nondetection_err``, flag 1 - as :class:`PhotometryPreprocessor` treats a real
    non-detection. Returns new (mags, errs, flags); the draws come from ``generator``."""
    drop = (torch.rand(mags.shape, generator=generator, device=mags.device) < probability) & (flags == 0)
    return (torch.where(drop, fill.reshape(1, -1).to(mags.dtype), mags),
            torch.where(drop, torch.full_like(errs, nondetection_err), errs),
            torch.where(drop, torch.ones_like(flags), flags))


def _check_weights(weights, n: int) -> np.ndarray:
    """Training-row weights as a float64 array, or ValueError naming the first bad row."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must be 1-d with one value per training row ({n}), got shape {w.shape}")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise ValueError(f"weights must be finite and >= 0: {bad.size} row(s) are not, first at row {bad[0]} "
                         f"(weight {w[bad[0]]})")
    if not w.sum() > 0:
        raise ValueError("every training weight is 0")
    return w


def _pad_rows(rows: torch.Tensor) -> torch.Tensor:
    """A (members, rows, ...) tensor padded along the rows with copies of each member's first
    row up to a multiple of :data:`ALIGN` rows (the padding rows are left out of the loss)."""
    pad = -rows.shape[1] % ALIGN
    return torch.cat([rows, rows[:, :1].expand(-1, pad, *rows.shape[2:])], dim=1) if pad else rows


_FUNCTIONAL_ACTIVATIONS = {"silu": torch.nn.functional.silu, "relu": torch.relu, "tanh": torch.tanh,
                           "gelu": torch.nn.functional.gelu}


# Members' blocks in every batched tensor start at multiples of this many float32 (64 bytes): the
# CPU matrix kernels round differently for a block that starts elsewhere, so a member's results
# would depend on its position in the stack (see _MemberStack)
ALIGN = 16


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _MemberStack:
    """The members of an ensemble in training, as one batched model.

    Every member's weights live in one row of a flat ``(members, parameters)`` leaf tensor
    (each layer: W transposed to (in, out), then b, each starting at a multiple of
    :data:`ALIGN` floats, zeros between), so the forward pass is one batched matrix product per
    layer over all members (``baddbmm`` on views of the rows), and the optimiser, the weight
    average and the best-state copies each cost one operation for the whole ensemble.

    A member's output depends only on its own row and its own inputs, and not on its position in
    the stack: BLAS kernels round a matrix product differently when its output block starts at
    another 64-byte alignment, so every per-member block is made a multiple of :data:`ALIGN`
    floats - rows of a batch are padded to a multiple of ALIGN (the padding rows are left out of
    the loss), and the weights' gradient blocks (in x out) are multiples of it when the hidden
    width is (the default 64 is). Then members trained together, alone or in any subset (MPI
    ranks) are bit-for-bit the same; with another hidden width they agree to float32 rounding.
    """

    def __init__(self, nets: list[MixtureDensityNetwork], device):
        first = nets[0]
        self.colours, self.k, self.z_range = first.colours, first.n_components, first.z_range
        self.act = _FUNCTIONAL_ACTIVATIONS[next(a for a, cls in MixtureDensityNetwork.ACTIVATIONS.items()
                                                if isinstance(first.net[1], cls))]
        self.shapes = [(mod.in_features, mod.out_features) for mod in first.net if isinstance(mod, torch.nn.Linear)]
        self.offsets, at = [], 0  # (weight start, bias start) of each layer, aligned
        for n_in, n_out in self.shapes:
            bias_at = _aligned(at + n_in * n_out)
            self.offsets.append((at, bias_at))
            at = _aligned(bias_at + n_out)
        self.size = at
        self.flat = torch.stack([self.flatten(net) for net in nets]).to(device).requires_grad_(True)
        self.mean = torch.stack([net.feature_mean for net in nets])[:, None, :].to(device)
        self.std = torch.stack([net.feature_std for net in nets])[:, None, :].to(device)

    def _linears(self, net: MixtureDensityNetwork):
        return zip([mod for mod in net.net if isinstance(mod, torch.nn.Linear)], self.offsets)

    def flatten(self, net: MixtureDensityNetwork) -> torch.Tensor:
        row = torch.zeros(self.size, dtype=torch.float32)
        for mod, (w_at, b_at) in self._linears(net):
            row[w_at:w_at + mod.weight.numel()] = mod.weight.detach().t().reshape(-1)
            row[b_at:b_at + mod.bias.numel()] = mod.bias.detach()
        return row

    @torch.no_grad()
    def unflatten_into(self, net: MixtureDensityNetwork, row: torch.Tensor) -> None:
        for mod, (w_at, b_at) in self._linears(net):
            n_in, n_out = mod.in_features, mod.out_features
            mod.weight.copy_(row[w_at:w_at + n_in * n_out].view(n_in, n_out).t())
            mod.bias.copy_(row[b_at:b_at + n_out])

    def forward(self, flat: torch.Tensor, mags, errs, flags):
        """(log weights, means, log sigmas), each (members, rows, K), of inputs (members, rows, bands)."""
        n_m, n_rows, n_bands = mags.shape
        x = photometry_features(mags.reshape(-1, n_bands), errs.reshape(-1, n_bands), flags.reshape(-1, n_bands),
                                self.colours).view(n_m, n_rows, -1)
        h = (x - self.mean) / self.std
        for i, ((n_in, n_out), (w_at, b_at)) in enumerate(zip(self.shapes, self.offsets)):
            weight = flat[:, w_at:w_at + n_in * n_out].view(n_m, n_in, n_out)
            h = torch.baddbmm(flat[:, b_at:b_at + n_out].view(n_m, 1, n_out), h, weight)
            if i < len(self.shapes) - 1:
                h = self.act(h)
        logits, means, log_sigma = h.split(self.k, dim=-1)
        if self.z_range is not None:
            means = means.clamp(*self.z_range)
        return (torch.log_softmax(logits, dim=-1), means,
                log_sigma.clamp(MixtureDensityNetwork.LOG_SIGMA_MIN, MixtureDensityNetwork.LOG_SIGMA_MAX))

    def keep(self, rows: list[int]) -> None:
        """Drop every member but those at positions ``rows`` (members that stopped early)."""
        self.flat = self.flat.detach()[rows].clone().requires_grad_(True)
        self.mean, self.std = self.mean[rows], self.std[rows]


class _StackedAdamW:
    """AdamW (Loshchilov & Hutter 2019, torch's update rule: decoupled weight decay, bias-corrected
    moments) on a ``(members, parameters)`` tensor with one learning rate per member, so each
    member's learning-rate schedule stays its own."""

    def __init__(self, flat: torch.Tensor, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.flat, self.weight_decay, self.betas, self.eps = flat, weight_decay, betas, eps
        self.lr = [float(lr)] * flat.shape[0]
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat)
        self.t = 0

    def zero_grad(self) -> None:
        self.flat.grad = None

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        grad, p = self.flat.grad, self.flat
        lr = torch.tensor(self.lr, dtype=p.dtype, device=p.device)[:, None]
        p.mul_(1 - lr * self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(self.eps)
        p.sub_(self.exp_avg / denom * (lr / (1 - b1 ** self.t)))

    def keep(self, rows: list[int], flat: torch.Tensor) -> None:
        self.flat = flat
        self.lr = [self.lr[j] for j in rows]
        self.exp_avg, self.exp_avg_sq = self.exp_avg[rows].clone(), self.exp_avg_sq[rows].clone()


class _Plateau:
    """torch's ``ReduceLROnPlateau(mode="min", factor=0.5, patience)`` for one member: halve the
    learning rate after more than ``patience`` epochs without a relative improvement of 1e-4."""

    def __init__(self, patience: int):
        self.patience, self.best, self.bad = patience, float("inf"), 0

    def step(self, value: float, lr: float) -> float:
        if value < self.best * (1 - 1e-4):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.bad > self.patience:
            self.bad = 0
            if lr - 0.5 * lr > 1e-8:
                lr *= 0.5
        return lr


@dataclass
class EnsembleConfig:
    """Hyper-parameters of a :class:`DeepEnsemble` (all have working defaults).

    Among them: ``band_dropout`` - during training, the probability per band and row that a
    detected magnitude is given its band's non-detection treatment (0 disables it; see
    :func:`drop_bands`); ``zmin``, ``zmax`` - the model's redshift range, into which every
    component mean is clamped (None: the lowest / highest training redshift).
    """

    n_members: int = 5
    n_components: int = 10
    hidden: int = 128
    n_layers: int = 3
    activation: str = "silu"
    colours: str = "all"
    cde_weight: float = 0.0
    crps_weight: float = 0.0
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 500
    patience: int = 40
    lr_patience: int = 10
    val_fraction: float = 0.1
    augment: bool = False
    band_dropout: float = 0.03
    ema: float = 0.999
    zmin: float | None = None
    zmax: float | None = None
    seed: int = 0

    _INTS = ("n_members", "n_components", "hidden", "n_layers", "batch_size", "max_epochs", "patience",
             "lr_patience", "seed")
    _FLOATS = ("cde_weight", "crps_weight", "learning_rate", "weight_decay", "val_fraction", "band_dropout", "ema")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first unusable setting."""
        for name in self._INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in self._FLOATS + ("zmin", "zmax"):
            value = getattr(self, name)
            if value is None and name in ("zmin", "zmax"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment must be true or false, got {self.augment!r}")
        if self.activation not in MixtureDensityNetwork.ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(MixtureDensityNetwork.ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.n_members < 1 or self.n_components < 1 or self.hidden < 1 or self.n_layers < 1:
            raise ValueError(f"n_members, n_components, hidden and n_layers must be positive: {self}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.max_epochs < 1 or self.batch_size < 1 or self.patience < 0 or self.lr_patience < 0:
            raise ValueError(f"need max_epochs >= 1, batch_size >= 1, patience >= 0, lr_patience >= 0: {self}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.cde_weight < 0 or self.crps_weight < 0:
            raise ValueError(f"need learning_rate > 0 and weight_decay, cde_weight, crps_weight >= 0: {self}")
        if self.colours not in ("adjacent", "all"):
            raise ValueError(f"colours must be 'adjacent' or 'all', got {self.colours!r}")
        if not 0 <= self.band_dropout <= 0.5:
            raise ValueError(f"band_dropout must be in [0, 0.5] (0 disables it), got {self.band_dropout}")
        if self.zmin is not None and self.zmax is not None and not self.zmin < self.zmax:
            raise ValueError(f"need zmin < zmax, got zmin={self.zmin}, zmax={self.zmax}")


class DeepEnsemble:
    """An ensemble of :class:`MixtureDensityNetwork` photo-z models.

    Examples
    --------
    >>> ens = DeepEnsemble(EnsembleConfig(n_members=5)).fit(mags, errs, z, bands=list("ugrizy"))
    >>> weights, means, stds = ens.predict(mags_new, errs_new)
    """

    def __init__(self, config: EnsembleConfig | None = None):
        self.config = config or EnsembleConfig()
        self.config.validate()
        self.preprocessor: PhotometryPreprocessor | None = None
        self.members: list[MixtureDensityNetwork] = []
        self.history: list[dict] = []
        self.z_range: tuple[float, float] | None = None

    # ------------------------------------------------------------------ training
    @property
    def bands(self) -> list[str]:
        return list(self.preprocessor.bands) if self.preprocessor else []

    def _new_member(self) -> MixtureDensityNetwork:
        c = self.config
        return MixtureDensityNetwork(len(self.bands), c.n_components, c.hidden, c.n_layers, c.activation, c.colours,
                                     z_range=self.z_range)

    def fit(self, mags: np.ndarray, errs: np.ndarray, z: np.ndarray, bands: list[str], device: str = "cpu",
            progress: bool = True, members=None, weights=None) -> "DeepEnsemble":
        """Train every member (or only the members numbered in ``members``).

        Parameters
        ----------
        mags, errs : (n, n_bands) arrays
            Magnitudes and their errors; non-detections are handled by
            :class:`PhotometryPreprocessor`.
        z : (n,) array
            True (spectroscopic) redshifts; must be finite, and inside ``[zmin, zmax]`` where
            those are configured. The model's redshift range is ``[zmin, zmax]``, each end
            defaulting to the lowest / highest training redshift.
        bands : list of str
            Band names, stored in the model and checked when it is applied.
        device : str
            Torch device for training.
        members : sequence of int, optional
            Train only these members (e.g. one MPI rank's share); member k depends only on
            (seed, k), so members trained apart and joined with :meth:`adopt_members` equal
            those of one serial fit.
        weights : (n,) array, optional
            Importance weights of the training rows (e.g. p_target(x) / p_labelled(x) under
            covariate shift): every loss, in training and in early stopping, is the weighted
            mean over rows. None: equal weights.
        """
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 1 or len(z) != len(mags):
            raise ValueError(f"z must be 1-d with one value per row ({len(mags)}), got shape {z.shape}")
        bad = np.flatnonzero(~np.isfinite(z))
        if bad.size:
            raise ValueError(f"redshift is not finite in {bad.size} row(s), first at row {bad[0]}")
        lo = float(z.min()) if self.config.zmin is None else float(self.config.zmin)
        hi = float(z.max()) if self.config.zmax is None else float(self.config.zmax)
        outside = np.flatnonzero((z < lo) | (z > hi))
        if outside.size:
            raise ValueError(f"redshift outside the configured range [{lo}, {hi}] in {outside.size} row(s), "
                             f"first at row {outside[0]} (z = {z[outside[0]]}); widen zmin/zmax or cut the catalog")
        if not lo < hi:
            raise ValueError(f"every training redshift is {lo}: a redshift range needs zmin < zmax")
        n_val = int(round(self.config.val_fraction * len(z)))
        if n_val < 1 or len(z) - n_val < 1:
            raise ValueError(f"need at least 2 training rows (got {len(z)}) for a validation split")
        self.preprocessor = PhotometryPreprocessor(list(bands)).fit(mags, errs)
        self.z_range = (lo, hi)
        m, e, f = (torch.as_tensor(a) for a in self.preprocessor.transform(mags, errs))
        zt = torch.as_tensor(z, dtype=torch.float32)
        self.members, self.history = [], []
        self.member_ids = list(range(self.config.n_members) if members is None else members)
        wt = None if weights is None else torch.as_tensor(_check_weights(weights, len(z)), dtype=torch.float32)
        if self.member_ids:
            for net, hist in self._train_members(self.member_ids, m, e, f, zt, wt, device, progress):
                self.members.append(net)
                self.history.append(hist)
                log.info("member %d: best validation loss %.4f at epoch %d of %d", hist["member"],
                         hist["best_val_nll"], hist["best_epoch"], hist["epochs_run"])
        return self

    def member_states(self) -> dict[int, tuple[dict, dict]]:
        """{member number: (CPU state dict, training history)} of the members trained here."""
        ids = getattr(self, "member_ids", range(len(self.members)))
        return {k: ({n: t.detach().cpu() for n, t in net.state_dict().items()}, h)
                for k, net, h in zip(ids, self.members, self.history)}

    def adopt_members(self, states: dict[int, tuple[dict, dict]]) -> "DeepEnsemble":
        """Replace the members by those in ``states`` (from :meth:`member_states` of the ranks
        that trained them); every member 0..n_members-1 must be there."""
        missing = sorted(set(range(self.config.n_members)) - set(states))
        if missing:
            raise ValueError(f"members {missing} were trained by no rank")
        self.members, self.history = [], []
        for k in range(self.config.n_members):
            net = self._new_member()
            net.load_state_dict(states[k][0])
            net.eval()
            self.members.append(net)
            self.history.append(states[k][1])
        self.member_ids = list(range(self.config.n_members))
        return self

    def _loss(self, out, z, weights=None, n_rows=None):
        """Training and early-stopping objective: the (weighted) mean over rows of NLL +
        cde_weight * CDE loss + crps_weight * CRPS (all three proper scores, so any mix is still
        minimised by the true p(z)); leading dimensions other than the last (rows) are kept. Only
        the first ``n_rows`` rows count (the rest pad a batch; see :class:`_MemberStack`)."""
        rows = mixture_scores(out, z, self.config.cde_weight, self.config.crps_weight)[..., :n_rows]
        if weights is not None:
            weights = weights[..., :n_rows]
        if weights is None:
            return rows.mean(-1)
        return (rows * weights).sum(-1) / weights.sum(-1)

    def _train_members(self, ids, m, e, f, z, weights, device, progress):
        """Train the members numbered ``ids`` together as one batched model (:class:`_MemberStack`).

        Member k draws everything from its own seed (k, config.seed): initial weights, its
        train/validation split, the order of its mini-batches and its augmentation draws. The
        members share only the arithmetic - batched matrix products, one optimiser step over a
        flat (members, parameters) tensor - in which no value of one member enters another's.
        Each member keeps its own learning-rate schedule and early stopping; a member that stops
        leaves the stack, and the others go on without it. So a member's weights do not depend
        on which other members were trained with it (tested bit for bit), and members shared
        out over MPI ranks equal those of one serial fit.
        """
        c = self.config
        nets, rngs, gens, vals, trains = [], [], [], [], []
        n_val = int(round(c.val_fraction * len(z)))
        for k in ids:
            rng = np.random.default_rng([c.seed, k])
            torch.manual_seed(int(rng.integers(2**31)))
            order = rng.permutation(len(z))
            val, train = order[:n_val], order[n_val:]
            net = self._new_member()
            net.set_scaling(m[train], e[train], f[train])
            net.init_output(z[train])
            nets.append(net)
            rngs.append(rng)
            vals.append(val)
            trains.append(train)
            gens.append(torch.Generator(device=device).manual_seed(int(rng.integers(2**31))))
        stack = _MemberStack(nets, device)
        m, e, f, z = m.to(device), e.to(device), f.to(device), z.to(device)
        w = None if weights is None else weights.to(device)
        val_idx = _pad_rows(torch.as_tensor(np.stack(vals), device=device))
        fill, nd_err = self.preprocessor.nondetection_treatment()
        fill = torch.as_tensor(fill, device=device)[None, :]
        adam = _StackedAdamW(stack.flat, c.learning_rate, c.weight_decay)
        # the weight average starts at zero and is divided by 1 - ema^t (Adam's bias correction), so
        # after t steps it is an average of the t weights seen, never of the initial weights: an
        # average started at the initial weights keeps a share ema^t of them (with ema = 0.999, 67%
        # after the ~400 steps a 500-galaxy catalog gives)
        averaged = torch.zeros_like(stack.flat.detach())
        n_steps = 0
        n_members = len(ids)
        active = list(range(n_members))  # positions (in ids) of the members still training
        best = [float("inf")] * n_members
        best_state = [None] * n_members
        best_epoch, waited, epochs_run = [-1] * n_members, [0] * n_members, [0] * n_members
        sched = [_Plateau(c.lr_patience) for _ in ids]
        bar = tqdm(range(c.max_epochs), desc=f"members {list(ids)}", disable=not progress, leave=False)
        for epoch in bar:
            perms = torch.as_tensor(np.stack([rngs[a].permutation(trains[a]) for a in active]), device=device)
            for i in range(0, perms.shape[1], c.batch_size):
                b = perms[:, i:i + c.batch_size]  # (active members, rows)
                n_rows = b.shape[1]
                mb, eb, fb = m[b], e[b], f[b]
                if c.augment:  # redraw detected magnitudes within their errors
                    noise = torch.stack([torch.randn(mb.shape[1:], generator=gens[a], device=device) for a in active])
                    mb = mb + eb * noise * (1 - fb)
                if c.band_dropout > 0:
                    dropped = [drop_bands(mb[j], eb[j], fb[j], c.band_dropout, fill, nd_err, gens[a])
                               for j, a in enumerate(active)]
                    mb, eb, fb = (torch.stack(t) for t in zip(*dropped))
                # rows padded after the random draws, so that padding never changes them
                mb, eb, fb, zb = (_pad_rows(t) for t in (mb, eb, fb, z[b]))
                loss = self._loss(stack.forward(stack.flat, mb, eb, fb), zb, None if w is None else _pad_rows(w[b]),
                                  n_rows)
                adam.zero_grad()
                loss.sum().backward()  # d(sum)/d(member k) = d(loss k)/d(member k): members stay independent
                adam.step()
                n_steps += 1
                if c.ema > 0:
                    with torch.no_grad():
                        averaged.mul_(c.ema).add_(stack.flat.detach(), alpha=1 - c.ema)
            with torch.no_grad():
                kept = averaged / (1 - c.ema ** n_steps) if c.ema > 0 else stack.flat.detach()
                vb = val_idx[active]
                v_all = self._loss(stack.forward(kept, m[vb], e[vb], f[vb]), z[vb],
                                   None if w is None else w[vb], n_val).tolist()
            stopped = []
            for j, a in enumerate(active):
                v = v_all[j]
                epochs_run[a] = epoch + 1
                adam.lr[j] = sched[a].step(v, float(adam.lr[j]))
                if v < best[a] - 1e-4:
                    best[a], best_epoch[a], waited[a] = v, epoch, 0
                    best_state[a] = kept[j].clone()
                else:
                    waited[a] += 1
                    if waited[a] > c.patience:
                        stopped.append(j)
            if stopped:
                keep = [j for j in range(len(active)) if j not in stopped]
                active = [active[j] for j in keep]
                if not active:
                    break
                stack.keep(keep)
                adam.keep(keep, stack.flat)
                averaged = averaged[keep].clone()
            bar.set_postfix(training=len(active), val=f"{min(v_all):.4f}")
        bar.close()
        out = []
        for a, k in enumerate(ids):
            if best_state[a] is None:
                raise RuntimeError(f"member {k}: training diverged (validation loss never finite); "
                                   "lower learning_rate or check the inputs")
            net = nets[a]
            stack.unflatten_into(net, best_state[a].cpu())
            net.eval()
            out.append((net, {"member": k, "best_val_nll": best[a], "best_epoch": best_epoch[a],
                              "epochs_run": epochs_run[a]}))
        return out

    # ------------------------------------------------------------------ inference
    def check_bands(self, bands: list[str], source: str = "catalog") -> None:
        """Raise :class:`BandMismatchError` (a ``ValueError``) naming both band lists unless ``bands``
        equals the training bands (same order)."""
        if list(bands) != self.bands:
            raise BandMismatchError(
                f"{source}: this model was trained on bands {self.bands} but was given {list(bands)}; "
                "retrain the model or configure the matching bands"
            )

    def _stacked_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every member's linear layers stacked for batched matrix products: [(W (M, in, out),
        b (M, 1, out))]. The first layer absorbs each member's feature standardisation
        (W / std and b - W mean / std, folded in float64), so raw features go in; the last
        has zero columns appended up to a multiple of 8 outputs."""
        lin = [[mod for mod in net.net if isinstance(mod, torch.nn.Linear)] for net in self.members]
        w1 = [ls[0].weight.double() / net.feature_std.double()[None, :] for ls, net in zip(lin, self.members)]
        b1 = [ls[0].bias.double() - w @ net.feature_mean.double() for ls, w, net in zip(lin, w1, self.members)]
        layers = [(torch.stack(w1).transpose(1, 2).float().contiguous(), torch.stack(b1)[:, None, :].float())]
        for i in range(1, len(lin[0])):
            layers.append((torch.stack([ls[i].weight for ls in lin]).transpose(1, 2).contiguous(),
                           torch.stack([ls[i].bias for ls in lin])[:, None, :]))
        # zero output columns up to a multiple of 8 (the AVX2 width): 3K = 30 -> 32 is ~1.5x faster
        weight, bias = layers[-1]
        pad = -weight.shape[2] % 8
        if pad:
            layers[-1] = (torch.nn.functional.pad(weight, (0, pad)).contiguous(), torch.nn.functional.pad(bias, (0, pad)))
        return layers

    @torch.inference_mode()
    def predict(self, mags: np.ndarray, errs: np.ndarray, block: int = 512
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mixture parameters of the ensemble p(z): weights, means, stds, each (n, n_members * K).

        All members are evaluated together (batched matrix products over the members, the
        features computed once), in blocks of ``block`` rows so that the activations stay in
        cache. Each row's result depends only on that row, up to float32 rounding of the matrix
        products (~1e-7), which may depend on how many rows go in together. Every mean lies in
        the model's redshift range :attr:`z_range` (when it has one).
        """
        if not self.members:
            raise RuntimeError("DeepEnsemble.predict called before fit or load")
        m, e, f = (torch.as_tensor(a) for a in self.preprocessor.transform(mags, errs))
        first = self.members[0]
        feats = photometry_features(m, e, f, first.colours)
        layers = self._stacked_layers()
        act = _INPLACE_ACTIVATIONS[self.config.activation]
        n, k, nm = len(m), self.config.n_components, len(self.members)
        w, mu, s = (torch.empty((n, nm, k), dtype=torch.float32) for _ in range(3))
        for start in range(0, n, block):
            sl = slice(start, min(start + block, n))
            h = feats[sl].expand(nm, -1, -1)
            for i, (weight, bias) in enumerate(layers):
                h = torch.baddbmm(bias, h, weight)
                if i < len(layers) - 1:
                    h = act(h)
            logits, mean, log_s = h[..., :3 * k].split(k, dim=-1)  # each (members, rows, K)
            w[sl] = torch.softmax(logits, dim=-1).transpose(0, 1) / nm
            mu[sl] = (mean if self.z_range is None else mean.clamp(*self.z_range)).transpose(0, 1)
            s[sl] = torch.exp(log_s.clamp(first.LOG_SIGMA_MIN, first.LOG_SIGMA_MAX)).transpose(0, 1)
        return tuple(a.reshape(n, nm * k).numpy() for a in (w, mu, s))

    def estimate(self, mags: np.ndarray, errs: np.ndarray, point_estimates=(), threads: int | None = None):
        """:meth:`predict` and :func:`~calipers.photoz.mixture.mixture_point_estimates` together:
        ``((weights, means, stds), {name: values})``.

        The rows are split into ``threads`` parts (default: torch's thread count), each
        predicted and summarised by its own thread with one torch thread: the small matrix
        products parallelise better over rows this way than inside torch. Each row's result
        depends only on that row (up to float32 rounding of the products, ~1e-7).
        """
        def part(rows):
            w, mu, s = self.predict(mags[rows], errs[rows])
            return (w, mu, s), mixture_point_estimates(w, mu, s, point_estimates, threads=1)

        before = torch.get_num_threads()
        threads = threads or before
        torch.set_num_threads(1)
        try:
            parts = in_threads(part, len(mags), threads)
        finally:
            torch.set_num_threads(before)
        mixture = tuple(np.concatenate([p[0][j] for p in parts]) for j in range(3))
        return mixture, {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}

    # ------------------------------------------------------------------ persistence (arrays only;
    # files are written by calipers.core.models.save_model / load_model)
    def state(self) -> tuple[dict, dict]:
        """(JSON-able metadata, {"member_i": state_dict}) - everything needed to rebuild the model."""
        meta = {
            "format": MODEL_FORMAT,
            "config": asdict(self.config),
            "preprocessor": self.preprocessor.to_dict(),
            "z_range": list(self.z_range),
            "history": self.history,
        }
        return meta, {f"member_{i}": net.state_dict() for i, net in enumerate(self.members)}

    @classmethod
    def from_state(cls, meta: dict, states: dict) -> "DeepEnsemble":
        """Rebuild an ensemble from :meth:`state` output, checking it: the format, every config
        and preprocessor value, the redshift range, one state dict per member (no more, no
        fewer), each fitting the architecture and finite. Raises :class:`ModelStateError`
        naming what is wrong.

        A model of a legacy format (``.../1``, written before band dropout and the redshift
        range) loads with a logged warning: its constant features (scaled by a 1e-6 floor, which
        turned an unseen non-detection flag into an input of 1e6) get scale 1 - identical
        predictions for inputs like its training set - and its means are not bounded. Retrain
        it for bounded p(z) that have seen every band missing.
        """
        if not isinstance(meta, dict):
            raise ModelStateError(f"metadata must be a JSON object, got {type(meta).__name__}")
        fmt = meta.get("format")
        legacy = fmt in LEGACY_FORMATS
        if fmt != MODEL_FORMAT and not legacy:
            raise ModelStateError(f"model format {fmt!r}, expected {MODEL_FORMAT!r}")
        config = meta.get("config")
        if not isinstance(config, dict):
            raise ModelStateError(f"'config' must be a JSON object, got {config!r}")
        if legacy:
            config = {"band_dropout": 0.0, **config}  # legacy models were trained without it
        try:
            ens = cls(EnsembleConfig(**config))
        except TypeError as err:
            known = sorted(EnsembleConfig.__dataclass_fields__)
            raise ModelStateError(f"'config': {err} (known keys: {known})") from err
        except ValueError as err:
            raise ModelStateError(f"'config': {err}") from err
        try:
            ens.preprocessor = PhotometryPreprocessor.from_dict(meta.get("preprocessor"))
        except (TypeError, ValueError) as err:
            raise ModelStateError(f"'preprocessor': {err}") from err
        if legacy:
            log.warning("model format %r (written before band dropout and the redshift range): its mixture means "
                        "are not bounded and it has not seen every band missing; retrain it with this calipers", fmt)
        else:
            z_range = meta.get("z_range")
            if (not isinstance(z_range, list) or len(z_range) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in z_range)
                    or not z_range[0] < z_range[1]):
                raise ModelStateError(f"'z_range' must be [zmin, zmax] with finite zmin < zmax, got {z_range!r}")
            ens.z_range = (float(z_range[0]), float(z_range[1]))
        ens.history = meta.get("history", [])
        if not isinstance(states, dict):
            raise ModelStateError(f"weights must be a mapping of member state dicts, got {type(states).__name__}")
        expected = [f"member_{i}" for i in range(ens.config.n_members)]
        if sorted(states) != sorted(expected):
            raise ModelStateError(f"the metadata says n_members = {ens.config.n_members} but the weights hold "
                                  f"{sorted(states)}; expected {expected}")
        for name in expected:
            net = ens._new_member()
            try:
                net.load_state_dict(states[name])
            except (RuntimeError, TypeError, AttributeError) as err:
                raise ModelStateError(f"{name}: the weights do not fit the architecture in the metadata "
                                      f"(config {config}): {err}") from err
            bad = [k for k, t in net.state_dict().items() if not torch.isfinite(t).all()]
            if bad:
                raise ModelStateError(f"{name}: non-finite values in {bad}")
            if legacy:
                with torch.no_grad():  # the old 1e-6 floor marks features that were constant in training
                    net.feature_std[net.feature_std <= 1.01e-6] = 1.0
            net.eval()
            ens.members.append(net)
        return ens
