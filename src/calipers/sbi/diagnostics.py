"""Calibration checks of an amortised or per-observation posterior: SBC, TARP, C2ST, PPC."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class SBCResult:
    ranks: np.ndarray = field(repr=False)          # (n_tests, n_params), in 0..num_posterior_samples
    ks_pvals: list[float] = field(default_factory=list)
    c2st_ranks: list[float] = field(default_factory=list)
    num_posterior_samples: int = 0
    posterior_var: np.ndarray | None = field(default=None, repr=False)  # (n_tests, n_params) sample variances

    def contraction(self, prior_var) -> np.ndarray:
        """Posterior contraction per parameter, 1 - E[posterior variance] / prior variance: about 0
        for an estimator that returns the prior (which SBC and TARP pass), 1 for a point mass."""
        return 1.0 - np.mean(self.posterior_var, axis=0) / np.asarray(prior_var, dtype=float)


def sbc(posterior_for, thetas: np.ndarray, xs: np.ndarray, num_posterior_samples: int, seed: int = 0) -> SBCResult:
    """Simulation-based calibration: the rank of each true parameter among posterior samples
    given its simulated data is uniform for a calibrated posterior (Talts et al. 2018).

    ``posterior_for(x)`` returns an object with ``.sample((n,), x=...)`` (a direct posterior can
    serve every x; MCMC posteriors are built per x).
    """
    from scipy import stats

    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        ranks = np.empty(np.shape(thetas), dtype=np.int64)
        var = np.empty(np.shape(thetas))
        for i, (t, x) in enumerate(zip(thetas, xs)):
            xt = torch.as_tensor(np.atleast_2d(x), dtype=torch.float32)
            s = posterior_for(x).sample((num_posterior_samples,), x=xt, show_progress_bars=False).numpy()
            ranks[i] = (s < np.asarray(t)[None, :]).sum(0)
            var[i] = s.var(axis=0, ddof=1)
    finally:
        torch.random.set_rng_state(rng_state)
    ks = [float(stats.kstest((ranks[:, j] + np.random.default_rng(seed + j).random(len(ranks))) /
                             (num_posterior_samples + 1), "uniform").pvalue) for j in range(ranks.shape[1])]
    return SBCResult(ranks, ks, [], num_posterior_samples, var)


def tarp(posterior_for, thetas: np.ndarray, xs: np.ndarray, num_posterior_samples: int, seed: int = 0,
         num_bins: int | None = None) -> dict:
    """TARP expected coverage (Lemos et al. 2023) with random reference points drawn uniformly in
    the (z-scored) box of the test parameters; returns alpha, ecp, the area-to-curve ``atc``
    (0 when calibrated) and the KS p-value of the coverage curve against the diagonal."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    thetas = np.asarray(thetas, dtype=float)
    mu, sd = thetas.mean(0), thetas.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (thetas - mu) / sd
    refs = rng.uniform(z.min(0), z.max(0), z.shape)
    torch.manual_seed(seed)
    f = np.empty(len(thetas))
    for i, x in enumerate(xs):
        xt = torch.as_tensor(np.atleast_2d(x), dtype=torch.float32)
        s = (posterior_for(x).sample((num_posterior_samples,), x=xt, show_progress_bars=False).numpy() - mu) / sd
        d_samples = np.linalg.norm(s - refs[i], axis=1)
        d_true = np.linalg.norm(z[i] - refs[i])
        f[i] = np.mean(d_samples < d_true)
    nb = num_bins or max(len(f) // 10, 2)
    alpha = np.linspace(0, 1, nb + 1)
    ecp = np.array([np.mean(f < a) for a in alpha])
    atc = float(np.sum(ecp - alpha) / nb)
    ks_p = float(stats.kstest(f, "uniform").pvalue)
    return {"alpha": alpha.tolist(), "ecp": ecp.tolist(), "atc": atc, "ks_pvalue": ks_p, "f": f.tolist()}


def c2st_score(samples_a: np.ndarray, samples_b: np.ndarray, seed: int = 0) -> float:
    """Classifier two-sample test accuracy (0.5 = indistinguishable), sbi's random-forest C2ST."""
    from sbi.utils.metrics import c2st

    a = torch.as_tensor(np.asarray(samples_a), dtype=torch.float32)
    b = torch.as_tensor(np.asarray(samples_b), dtype=torch.float32)
    return float(c2st(a, b, seed=seed))
