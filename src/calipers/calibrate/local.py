"""Local PIT recalibration conditioned on the inputs (in the spirit of Cal-PIT, Dey et al. 2022).

Global PIT recalibration makes the PIT uniform *on average*; it cannot fix a model that is too
wide for bright galaxies and too narrow for faint ones, since the two errors cancel in the
average. Here the conditional distribution of the PIT given the features x is learned,

    G(u | x) = P(PIT <= u | x),

and each CDF is remapped through it: F'(z | x) = G(F(z | x) | x). When G is the true conditional
PIT CDF, the recalibrated PIT is uniform conditionally on x - calibration holds across colour and
magnitude space, and the remapping *sharpens* p(z) where the model is over-dispersed (PIT piled
up near 0.5) as readily as it widens them where it is over-confident.

Optionally (``global_knots > 0``) a global PIT recalibration G0 (:class:`PITRecalibrator`) is
applied first and the local model learns the globally recalibrated PIT, G(u | x) = L(G0(u) | x);
by default G0 is the identity, since the probit-space mixture below already follows smooth
global distortions and G0's piecewise-linear knots distort the PIT of strongly over-confident
regions. L is modelled in probit space: v = Phi^-1(G0(PIT)) is
standard normal for a calibrated model, and its conditional density given x is a Gaussian
mixture whose ``n_components`` weights, means and widths are the outputs of a small MLP on the
standardised features (a mixture density network), so

    L(u | x) = sum_k pi_k(x) Phi((Phi^-1(u) - m_k(x)) / s_k(x)),

monotone, with L(0)=0 and L(1)=1, and exact for p(z) whose only error is a feature-dependent
shift or width (PIT of a Gaussian with the wrong mean/width is a location-scale family in
probit space). It is fitted by maximum likelihood of the observed v, with a validation split
and early stopping, starting near the identity; ``n_members`` networks with different seeds are
averaged (a mixture of valid CDFs is a valid CDF).
A small ``smoothing`` mixes every G with the identity so that no region of a p(z) is ever zeroed.

Under covariate shift, ``fit(..., weights=w)`` with importance weights
w(x) = p_target(x) / p_labelled(x) (:mod:`calipers.calibrate.shift_weights`) maximises the
importance-weighted likelihood (and weights the optional global G0 and the early-stopping
loss), so the network's capacity goes where the target population is. G(u | x) itself is the
same in both populations when p(z | x) is, so the weights change only which errors of the
fitted G matter, not its target; they matter most when the model cannot represent G everywhere.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import special
from torch import nn

from calipers.calibrate.pit import PITRecalibrator
from calipers.calibrate.shift_weights import check_weights
from calipers.gridpdf import remap_pdfs


@dataclass
class LocalPITConfig:
    n_components: int = 3
    hidden: int = 64
    n_layers: int = 2
    n_members: int = 3
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    max_epochs: int = 300
    patience: int = 20
    val_fraction: float = 0.2
    smoothing: float = 0.01
    global_knots: int = 0
    seed: int = 0


def _mlp(d_in: int, c: LocalPITConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(c.n_layers):
        layers += [nn.Linear(d, c.hidden), nn.SiLU()]
        d = c.hidden
    k = c.n_components
    last = nn.Linear(d, 3 * k)
    # start near the identity map: equal weights, unit widths, means spread over +-0.1 so that
    # the components differ (identical ones would get identical gradients and stay one Gaussian)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    with torch.no_grad():
        last.bias[k:2 * k] = torch.linspace(-0.1, 0.1, k) if k > 1 else 0.0
    return nn.Sequential(*layers, last)


_V_CLIP = 1e-6  # PIT values are clipped to [_V_CLIP, 1 - _V_CLIP] before the probit


def _mixture(out: torch.Tensor):
    """Network output (n, 3K) -> log weights, means, log widths of the probit-PIT mixture."""
    logit, mean, log_s = out.chunk(3, dim=1)
    return torch.log_softmax(logit, dim=1), mean, log_s.clamp(-5.0, 3.0)


def _nll(out: torch.Tensor, v: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    log_w, mean, log_s = _mixture(out)
    logp = log_w - log_s - 0.5 * ((v[:, None] - mean) / log_s.exp()) ** 2 - 0.5 * math.log(2 * math.pi)
    if weights is None:
        return -torch.logsumexp(logp, dim=1).mean()
    return -(weights * torch.logsumexp(logp, dim=1)).sum() / weights.sum()


@dataclass
class LocalPITRecalibrator:
    """Learn G(u | x) = P(PIT <= u | x) and remap CDFs through it (arrays in, arrays out)."""

    config: LocalPITConfig = field(default_factory=LocalPITConfig)
    mean: np.ndarray | None = field(default=None, repr=False)
    scale: np.ndarray | None = field(default=None, repr=False)
    members: list = field(default_factory=list, repr=False)
    base: PITRecalibrator | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ fitting
    def _check(self, features: np.ndarray, pit: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"features must be (n, d), got shape {x.shape}")
        bad = ~np.all(np.isfinite(x), axis=1)
        if pit is not None:
            if len(pit) != len(x):
                raise ValueError(f"{len(x)} feature rows but {len(pit)} PIT values")
            bad |= ~np.isfinite(pit)
        rows = np.flatnonzero(bad)
        if rows.size:
            what = "features or PIT" if pit is not None else "features"
            raise ValueError(f"non-finite {what} in {rows.size} row(s), first at row {rows[0]}")
        if self.mean is not None and x.shape[1] != len(self.mean):
            raise ValueError(f"calibrator was fitted on {len(self.mean)} features, got {x.shape[1]}")
        return x

    def fit(self, features: np.ndarray, pit: np.ndarray, progress: bool = False,
            weights: np.ndarray | None = None) -> "LocalPITRecalibrator":
        """Fit G(u | x) to calibration PIT values; ``weights``: optional importance weights of
        the calibration rows (importance-weighted likelihood, module docstring)."""
        c = self.config
        pit = np.clip(np.asarray(pit, dtype=np.float64), 0.0, 1.0)
        self.mean = None
        x = self._check(features, pit)
        if len(x) < 50:
            raise ValueError(f"need at least 50 calibration objects for a local recalibration, got {len(x)}")
        wt = None
        if weights is not None:
            weights = check_weights(weights, len(x), what="calibration weights")
            weights = weights / weights.mean()  # frequency weights of mean 1 (PITRecalibrator)
            wt = torch.as_tensor(weights, dtype=torch.float32)
        self.mean = x.mean(0)
        self.scale = np.where(x.std(0) > 0, x.std(0), 1.0).astype(np.float32)
        self.base = None
        if c.global_knots > 0:
            self.base = PITRecalibrator(n_knots=max(2, min(c.global_knots, len(pit) // 20))).fit(pit, weights)
            pit = self.base.transform_cdf(pit)
        xt = torch.as_tensor((x - self.mean) / self.scale)
        v = torch.as_tensor(special.ndtri(np.clip(pit, _V_CLIP, 1 - _V_CLIP)), dtype=torch.float32)
        rng = np.random.default_rng(c.seed)
        self.members = []
        for k in range(c.n_members):
            self.members.append(self._fit_member(xt, v, rng, k, progress, wt))
        return self

    def _fit_member(self, x, v, rng, k, progress, weights=None):
        c = self.config
        torch.manual_seed(int(rng.integers(2**31)))
        order = rng.permutation(len(x))
        n_val = max(1, int(c.val_fraction * len(x)))
        val, train = torch.as_tensor(order[:n_val]), order[n_val:]
        net = _mlp(x.shape[1], c)
        opt = torch.optim.AdamW(net.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
        best, best_state, stale = np.inf, copy.deepcopy(net.state_dict()), 0
        for epoch in range(c.max_epochs):
            net.train()
            perm = torch.as_tensor(rng.permutation(train))
            for i in range(0, len(perm), c.batch_size):
                mb = perm[i:i + c.batch_size]
                opt.zero_grad()
                _nll(net(x[mb]), v[mb], None if weights is None else weights[mb]).backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                loss = float(_nll(net(x[val]), v[val], None if weights is None else weights[val]))
            if loss < best - 1e-5:
                best, best_state, stale = loss, copy.deepcopy(net.state_dict()), 0
            else:
                stale += 1
                if stale >= c.patience:
                    break
        if progress:
            identity = float(0.5 * (v[val] ** 2).mean()) + 0.5 * math.log(2 * math.pi)
            print(f"local PIT member {k}: {epoch + 1} epochs, validation NLL {best:.4f} "
                  f"(identity map: {identity:.4f})", flush=True)
        net.load_state_dict(best_state)
        net.eval()
        return net

    # ------------------------------------------------------------------ applying
    def mixture(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weights, means, widths (each (n, n_members * K)) of the probit-PIT mixture per object."""
        if not self.members:
            raise RuntimeError("LocalPITRecalibrator used before fit")
        x = torch.as_tensor((self._check(features) - self.mean) / self.scale)
        with torch.inference_mode():
            parts = [_mixture(net(x)) for net in self.members]
        w = torch.cat([lw.exp() for lw, _, _ in parts], 1) / len(parts)
        m = torch.cat([mu for _, mu, _ in parts], 1)
        sd = torch.cat([ls.exp() for _, _, ls in parts], 1)
        return w.double().numpy(), m.double().numpy(), sd.double().numpy()

    def transform_cdf(self, cdf: np.ndarray, features: np.ndarray, block: int = 2000) -> np.ndarray:
        """G(cdf | x) for CDF values ``cdf`` (n, m) of objects with ``features`` (n, d)."""
        cdf = np.asarray(cdf, dtype=np.float64)
        if cdf.ndim != 2 or len(cdf) != len(features):
            raise ValueError(f"cdf must be (n, m) with one row per feature row, got {cdf.shape}")
        w, m, sd = self.mixture(features)
        out = np.empty_like(cdf)
        s = self.config.smoothing
        for a in range(0, len(cdf), block):
            b = slice(a, a + block)
            u = np.clip(cdf[b], 0.0, 1.0)
            if self.base is not None:
                u = self.base.transform_cdf(u)
            v = special.ndtri(np.clip(u, 1e-15, 1 - 1e-15))[:, :, None]
            g = np.sum(w[b, None, :] * special.ndtr((v - m[b, None, :]) / sd[b, None, :]), axis=2)
            g = np.where(u <= 0, 0.0, np.where(u >= 1, 1.0, g))
            out[b] = (1 - s) * g + s * u
        return out

    def transform_pdfs(self, pdfs: np.ndarray, zgrid: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Recalibrated densities g(F(z) | x) f(z) on the same grid, normalised
        (:func:`calipers.gridpdf.remap_pdfs`)."""
        return remap_pdfs(pdfs, zgrid, lambda cdf: self.transform_cdf(cdf, features))

    # ------------------------------------------------------------------ persistence
    def state(self) -> tuple[dict, dict]:
        """JSON-able metadata and a dict of tensors (saved with torch.save, loaded weights_only)."""
        meta = {"kind": "LocalPITRecalibrator", "config": asdict(self.config), "n_features": len(self.mean),
                "base": self.base.to_dict() if self.base is not None else None}
        states = {"mean": torch.as_tensor(self.mean), "scale": torch.as_tensor(self.scale)}
        for k, net in enumerate(self.members):
            states |= {f"member{k}.{name}": t for name, t in net.state_dict().items()}
        return meta, states

    @classmethod
    def from_state(cls, meta: dict, states: dict) -> "LocalPITRecalibrator":
        c = LocalPITConfig(**meta["config"])
        obj = cls(config=c, mean=states["mean"].numpy(), scale=states["scale"].numpy(),
                  base=PITRecalibrator.from_dict(meta["base"]) if meta.get("base") else None)
        for k in range(c.n_members):
            net = _mlp(meta["n_features"], c)
            prefix = f"member{k}."
            net.load_state_dict({n[len(prefix):]: t for n, t in states.items() if n.startswith(prefix)})
            net.eval()
            obj.members.append(net)
        return obj
