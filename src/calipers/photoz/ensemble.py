"""Deep ensembles of mixture density networks (Lakshminarayanan et al. 2017).

Each member is trained from its own seed on its own random train/validation split, with early
stopping on the validation negative log-likelihood. The ensemble's p(z) is the equal-weight
mixture of the members' mixtures, so it carries both the aleatoric width each member learns
and the epistemic spread between members.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from calipers.core.errors import ModelMismatchError
from calipers.photoz.mdn import (MixtureDensityNetwork, mixture_cde_loss, mixture_crps, mixture_nll,
                                 photometry_features)
from calipers.photoz.mixture import in_threads, mixture_point_estimates
from calipers.photoz.preprocess import PhotometryPreprocessor

log = logging.getLogger(__name__)

MODEL_FORMAT = "calipers.photoz.DeepEnsemble/1"


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


@dataclass
class EnsembleConfig:
    """Hyper-parameters of a :class:`DeepEnsemble` (all have working defaults)."""

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
    ema: float = 0.999
    seed: int = 0

    def validate(self) -> None:
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

    # ------------------------------------------------------------------ training
    @property
    def bands(self) -> list[str]:
        return list(self.preprocessor.bands) if self.preprocessor else []

    def _new_member(self) -> MixtureDensityNetwork:
        c = self.config
        return MixtureDensityNetwork(len(self.bands), c.n_components, c.hidden, c.n_layers, c.activation, c.colours)

    def fit(self, mags: np.ndarray, errs: np.ndarray, z: np.ndarray, bands: list[str], device: str = "cpu",
            progress: bool = True, members=None) -> "DeepEnsemble":
        """Train every member (or only the members numbered in ``members``).

        Parameters
        ----------
        mags, errs : (n, n_bands) arrays
            Magnitudes and their errors; non-detections are handled by
            :class:`PhotometryPreprocessor`.
        z : (n,) array
            True (spectroscopic) redshifts; must be finite.
        bands : list of str
            Band names, stored in the model and checked when it is applied.
        device : str
            Torch device for training.
        members : sequence of int, optional
            Train only these members (e.g. one MPI rank's share); member k depends only on
            (seed, k), so members trained apart and joined with :meth:`adopt_members` equal
            those of one serial fit.
        """
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 1 or len(z) != len(mags):
            raise ValueError(f"z must be 1-d with one value per row ({len(mags)}), got shape {z.shape}")
        bad = np.flatnonzero(~np.isfinite(z))
        if bad.size:
            raise ValueError(f"redshift is not finite in {bad.size} row(s), first at row {bad[0]}")
        n_val = int(round(self.config.val_fraction * len(z)))
        if n_val < 1 or len(z) - n_val < 1:
            raise ValueError(f"need at least 2 training rows (got {len(z)}) for a validation split")
        self.preprocessor = PhotometryPreprocessor(list(bands)).fit(mags, errs)
        m, e, f = (torch.as_tensor(a) for a in self.preprocessor.transform(mags, errs))
        zt = torch.as_tensor(z, dtype=torch.float32)
        self.members, self.history = [], []
        self.member_ids = list(range(self.config.n_members) if members is None else members)
        for k in self.member_ids:
            net, hist = self._train_member(k, m, e, f, zt, device, progress)
            self.members.append(net)
            self.history.append(hist)
            log.info("member %d: best validation NLL %.4f at epoch %d", k, hist["best_val_nll"], hist["best_epoch"])
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

    def _loss(self, out, z):
        """Training and early-stopping objective: NLL + cde_weight * CDE loss + crps_weight * CRPS
        (all three proper scores, so any mix is still minimised by the true p(z))."""
        loss = mixture_nll(out, z)
        if self.config.cde_weight > 0:
            loss = loss + self.config.cde_weight * mixture_cde_loss(out, z)
        if self.config.crps_weight > 0:
            loss = loss + self.config.crps_weight * mixture_crps(out, z)
        return loss

    def _train_member(self, k, m, e, f, z, device, progress):
        c = self.config
        rng = np.random.default_rng([c.seed, k])
        torch.manual_seed(int(rng.integers(2**31)))
        order = rng.permutation(len(z))
        n_val = int(round(c.val_fraction * len(z)))
        val, train = torch.as_tensor(order[:n_val]), order[n_val:]
        net = self._new_member()
        net.set_scaling(m[train], e[train], f[train])
        net.init_output(z[train])
        net.to(device)
        m, e, f, z = m.to(device), e.to(device), f.to(device), z.to(device)
        averaged = copy.deepcopy(net) if c.ema > 0 else net
        opt = torch.optim.AdamW(net.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=c.lr_patience)
        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**31)))
        best, best_state, best_epoch, waited = float("inf"), None, -1, 0
        bar = tqdm(range(c.max_epochs), desc=f"member {k + 1}/{c.n_members}", disable=not progress, leave=False)
        for epoch in bar:
            net.train()
            perm = torch.as_tensor(rng.permutation(train), device=device)
            for i in range(0, len(perm), c.batch_size):
                b = perm[i:i + c.batch_size]
                mb = m[b]
                if c.augment:  # redraw detected magnitudes within their errors
                    noise = torch.randn(mb.shape, generator=gen, device=device)
                    mb = mb + e[b] * noise * (1 - f[b])
                opt.zero_grad()
                loss = self._loss(net(mb, e[b], f[b]), z[b])
                loss.backward()
                opt.step()
                if c.ema > 0:
                    with torch.no_grad():
                        for pa, p in zip(averaged.parameters(), net.parameters()):
                            pa.mul_(c.ema).add_(p, alpha=1 - c.ema)
            averaged.eval()
            with torch.no_grad():
                v = self._loss(averaged(m[val], e[val], f[val]), z[val]).item()
            sched.step(v)
            bar.set_postfix(val_nll=f"{v:.4f}")
            if v < best - 1e-4:
                best, best_epoch, waited = v, epoch, 0
                best_state = {k_: t.detach().clone() for k_, t in averaged.state_dict().items()}
            else:
                waited += 1
                if waited > c.patience:
                    break
        bar.close()
        if best_state is None:
            raise RuntimeError(f"member {k}: training diverged (validation loss never finite); "
                               "lower learning_rate or check the inputs")
        out = self._new_member()
        out.load_state_dict({k_: t.cpu() for k_, t in best_state.items()})
        out.eval()
        return out, {"member": k, "best_val_nll": best, "best_epoch": best_epoch, "epochs_run": epoch + 1}

    # ------------------------------------------------------------------ inference
    def check_bands(self, bands: list[str], source: str = "catalog") -> None:
        """Raise :class:`ModelMismatchError` unless ``bands`` equals the training bands."""
        if list(bands) != self.bands:
            raise ModelMismatchError(
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
        products (~1e-7), which may depend on how many rows go in together.
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
            mu[sl] = mean.transpose(0, 1)
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
            "history": self.history,
        }
        return meta, {f"member_{i}": net.state_dict() for i, net in enumerate(self.members)}

    @classmethod
    def from_state(cls, meta: dict, states: dict) -> "DeepEnsemble":
        """Rebuild an ensemble from :meth:`state` output."""
        if meta.get("format") != MODEL_FORMAT:
            raise ModelMismatchError(f"model format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
        ens = cls(EnsembleConfig(**meta["config"]))
        ens.preprocessor = PhotometryPreprocessor.from_dict(meta["preprocessor"])
        ens.history = meta.get("history", [])
        for i in range(ens.config.n_members):
            net = ens._new_member()
            net.load_state_dict(states[f"member_{i}"])
            net.eval()
            ens.members.append(net)
        return ens
