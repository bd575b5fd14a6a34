"""Calibration checks of an amortised or per-observation posterior: SBC, TARP, contraction, C2ST.

The checks are sbi's, applied to posterior draws that calipers makes itself:

- SBC ranks are ``sbi.diagnostics.sbc._run_sbc`` (Talts et al. 2018) and their uniformity test is
  sbi's ``check_uniformity_frequentist`` (with ``prior_samples``, sbi's whole ``check_sbc``: also
  C2ST of the ranks and of the data-averaged posterior against the prior);
- TARP's expected-coverage curve is ``sbi.diagnostics.tarp._run_tarp`` with reference points from
  ``get_tarp_references`` (Lemos et al. 2023), and its area to the diagonal is ``check_tarp``;
- C2ST is ``sbi.utils.metrics.c2st``.

sbi's ``run_sbc``/``run_tarp`` take one posterior object and sample it for every x, in a batch;
NLE/NRE posteriors here are MCMC or importance samplers built per x, so :func:`posterior_draws`
samples ``posterior_for(x)`` per test simulation into the ``(num_posterior_samples, n_tests,
n_params)`` array that sbi's lower-level functions take, and the gate uses one set of draws for
SBC, TARP and the contraction.

Two pieces stay calipers', each for a measured reason (tests/sbi/test_diagnostics.py):

- SBC ranks are discrete (0..L for L posterior samples), and sbi's KS test compares them as they
  are with a continuous uniform on [0, L]. For exact posterior draws (uniform ranks; 1000
  repetitions each) it rejects at p < 0.01 in 78% of runs with 1000 tests and L = 20, 7.2% with
  5000 tests and L = 100, and 3.5% with 10,000 tests and L = 200. Here the ranks are jittered by
  U(0, 1) (randomised PIT of a discrete variable; exactly uniform on [0, L + 1] for a calibrated
  posterior) before they go to sbi's test, which then rejects at the nominal rate (0.7-1.6% at
  0.01 in the same runs).
- sbi's ``check_tarp`` p-value is a two-sample KS test between the points of the ECP curve and
  of its credibility grid, about 20 points each: for 200 tests with posteriors 0.7x or 1.5x the
  true width (2 and 10 parameters, 20 repetitions each) it never fell below 0.01. The TARP
  p-value here is the KS test of the coverage values themselves (uniform for a calibrated
  posterior), computed exactly as ``_run_tarp`` computes them; it rejected those posteriors in
  70-100% of the repetitions.

The posterior contraction (1 - E[posterior variance] / prior variance) is calipers' own: SBC and
TARP both pass an estimator that returns the prior, and the contraction does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class SBCResult:
    ranks: np.ndarray = field(repr=False)          # (n_tests, n_params), in 0..num_posterior_samples
    ks_pvals: list[float] = field(default_factory=list)
    c2st_ranks: list[float] = field(default_factory=list)   # sbi's check_sbc, only with prior_samples
    num_posterior_samples: int = 0
    posterior_var: np.ndarray | None = field(default=None, repr=False)  # (n_tests, n_params) sample variances
    c2st_dap: list[float] = field(default_factory=list)     # sbi's check_sbc, only with prior_samples

    def contraction(self, prior_var) -> np.ndarray:
        """Posterior contraction per parameter, 1 - E[posterior variance] / prior variance: about 0
        for an estimator that returns the prior (which SBC and TARP pass), 1 for a point mass."""
        return posterior_contraction(self.posterior_var, prior_var)


def posterior_contraction(posterior_var: np.ndarray, prior_var) -> np.ndarray:
    """1 - mean over tests of the posterior variance / prior variance, per parameter.

    ``posterior_var`` is ``(n_tests, n_params)``. 0 when the posterior is the prior, 1 for a point
    mass; for the Gaussian-linear task with equal prior and noise variances, exactly 1/2.
    """
    posterior_var = np.asarray(posterior_var, dtype=float)
    prior_var = np.asarray(prior_var, dtype=float)
    if np.any(~np.isfinite(prior_var)) or np.any(prior_var <= 0):
        raise ValueError(f"prior variances must be finite and positive, got {prior_var.tolist()}")
    return 1.0 - np.mean(posterior_var, axis=0) / prior_var


def posterior_draws(posterior_for, xs: np.ndarray, num_posterior_samples: int, seed: int = 0) -> np.ndarray:
    """``num_posterior_samples`` draws of the posterior of every row of ``xs``, shape
    ``(num_posterior_samples, n_tests, n_params)`` (sbi's layout for its diagnostics).

    ``posterior_for(x)`` returns an object with ``.sample((n,), x=...)`` (a direct posterior can
    serve every x; MCMC posteriors are built per x). Torch's global random state is seeded for the
    draws and restored afterwards.
    """
    if num_posterior_samples < 1:
        raise ValueError(f"num_posterior_samples must be at least 1, got {num_posterior_samples}")
    rng_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        draws = []
        for x in xs:
            xt = torch.as_tensor(np.atleast_2d(x), dtype=torch.float32)
            draws.append(posterior_for(x).sample((num_posterior_samples,), x=xt, show_progress_bars=False)
                         .detach().cpu().numpy())
    finally:
        torch.random.set_rng_state(rng_state)
    return np.stack(draws, axis=1)


def _check_draws(thetas: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thetas, draws = np.asarray(thetas, dtype=float), np.asarray(draws, dtype=float)
    if thetas.ndim != 2 or draws.ndim != 3 or draws.shape[1:] != thetas.shape:
        raise ValueError(f"posterior draws must be (num_posterior_samples, n_tests, n_params) = (L, "
                         f"{', '.join(map(str, thetas.shape))}) for thetas of shape {thetas.shape}; got {draws.shape}")
    for name, a in (("thetas", thetas), ("posterior draws", np.moveaxis(draws, 1, 0).reshape(len(thetas), -1))):
        bad = np.flatnonzero(~np.all(np.isfinite(a), axis=1))
        if bad.size:
            raise ValueError(f"{name}: non-finite values for {bad.size} test simulation(s), first at row {bad[0]}")
    return thetas, draws


def sbc_ranks(thetas: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """sbi's SBC ranks (``_run_sbc``, marginals): for each test and parameter, the number of
    posterior draws below the true value; ``(n_tests, n_params)`` integers in 0..L."""
    return _sbi_ranks(*_check_draws(thetas, draws))


def _sbi_ranks(thetas: np.ndarray, draws: np.ndarray) -> np.ndarray:
    from sbi.diagnostics.sbc import _run_sbc

    t = torch.as_tensor(thetas, dtype=torch.float64)  # float64: ranks against the true values as stored
    ranks = _run_sbc(t, torch.zeros(len(t), 1), torch.as_tensor(draws, dtype=torch.float64), "marginals",
                     show_progress_bar=False)
    return ranks.numpy().astype(np.int64)


def sbc_from_draws(thetas: np.ndarray, draws: np.ndarray, seed: int = 0,
                   prior_samples: np.ndarray | None = None) -> SBCResult:
    """Simulation-based calibration from posterior draws (see :func:`posterior_draws`).

    Ranks are sbi's; each parameter's ranks plus U(0, 1) jitter (seeded by ``seed + j``) go to sbi's
    KS test against U(0, L + 1), which is exact for discrete ranks (module docstring). With
    ``prior_samples`` (n_tests rows from the prior), sbi's full ``check_sbc`` also gives C2ST
    accuracies of the ranks against uniform and of the data-averaged posterior (the first draw
    for each test) against the prior, about 0.6 s each per parameter.
    """
    import warnings

    from sbi.diagnostics.sbc import check_sbc, check_uniformity_frequentist

    thetas, draws = _check_draws(thetas, draws)
    num_posterior_samples = draws.shape[0]
    ranks = _sbi_ranks(thetas, draws)
    jitter = np.column_stack([np.random.default_rng(seed + j).random(len(ranks)) for j in range(ranks.shape[1])])
    jittered = torch.as_tensor(ranks + jitter, dtype=torch.float64)
    c2st_ranks, c2st_dap = [], []
    if prior_samples is None:
        ks = check_uniformity_frequentist(jittered, num_posterior_samples + 1)
    else:
        prior_samples = np.asarray(prior_samples, dtype=float)
        if prior_samples.shape != thetas.shape:
            raise ValueError(f"prior_samples must have the shape of thetas {thetas.shape}, got {prior_samples.shape}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*less than 100 samples.*")
            checks = check_sbc(jittered.float(), torch.as_tensor(prior_samples, dtype=torch.float32),
                               torch.as_tensor(draws[0], dtype=torch.float32), num_posterior_samples + 1)
        ks = check_uniformity_frequentist(jittered, num_posterior_samples + 1)  # float64 ranks, as above
        c2st_ranks, c2st_dap = checks["c2st_ranks"].tolist(), checks["c2st_dap"].tolist()
    var = draws.var(axis=0, ddof=1) if num_posterior_samples > 1 else np.zeros_like(thetas)
    return SBCResult(ranks, [float(p) for p in ks], c2st_ranks, num_posterior_samples, var, c2st_dap)


def tarp_references(thetas: np.ndarray, seed: int = 0) -> np.ndarray:
    """sbi's TARP reference points (``get_tarp_references``: one per test, uniform in the box of
    the test parameters), drawn under ``seed`` without touching torch's global random state."""
    from sbi.diagnostics.tarp import get_tarp_references

    thetas = np.asarray(thetas, dtype=float)
    flat = np.flatnonzero(thetas.min(0) == thetas.max(0))
    if flat.size:
        raise ValueError(f"parameter {flat[0]} has one value ({thetas[0, flat[0]]}) in all {len(thetas)} test "
                         "simulations; TARP reference points need a spread")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_tarp_references(torch.as_tensor(thetas)).numpy()


def tarp_from_draws(thetas: np.ndarray, draws: np.ndarray, seed: int = 0, num_bins: int | None = None,
                    references: np.ndarray | None = None) -> dict:
    """TARP from posterior draws (see :func:`posterior_draws`): sbi's ``_run_tarp`` (L2 distance,
    parameters scaled to the [min, max] box of the test parameters) and ``check_tarp``.

    Returns ``alpha`` and ``ecp`` (the curve; as in sbi and the reference ``tarp`` package the
    credibility grid spans the observed range of the coverage values), ``atc`` (sbi's area between
    the curve and the diagonal over the upper half of the grid: 0 when calibrated, > 0 for a
    too-wide posterior, < 0 for a too-narrow one), ``ks_pvalue`` (KS test of the coverage values
    ``f`` against U(0, 1); module docstring says why not sbi's p-value) and ``f``.
    ``references`` (n_tests, n_params) default to :func:`tarp_references` under ``seed``;
    ``num_bins`` to n_tests // 10 (at least 2).
    """
    import warnings

    from scipy import stats
    from sbi.diagnostics.tarp import _run_tarp, check_tarp
    from sbi.utils.metrics import l2

    thetas, draws = _check_draws(thetas, draws)
    refs = tarp_references(thetas, seed) if references is None else np.asarray(references, dtype=float)
    if refs.shape != thetas.shape:
        raise ValueError(f"TARP references must have the shape of thetas {thetas.shape}, got {refs.shape}")
    nb = num_bins or max(len(thetas) // 10, 2)
    t, s, r = (torch.as_tensor(a, dtype=torch.float64) for a in (thetas, draws, refs))
    ecp, alpha = _run_tarp(s, t, r, l2, nb, z_score_theta=True)
    with warnings.catch_warnings():  # check_tarp's own KS p-value, not used, warns for ties
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful")
        atc, _ = check_tarp(ecp, alpha)
    # the coverage values _run_tarp histograms, computed the same way (the tests check that their
    # empirical CDF on sbi's grid is sbi's ECP)
    lo, hi = t.min(dim=0, keepdim=True).values, t.max(dim=0, keepdim=True).values
    scale = hi - lo + 1e-10
    f = (torch.sum(l2((r - lo) / scale, (s - lo) / scale) < l2((r - lo) / scale, (t - lo) / scale), dim=0)
         / draws.shape[0]).numpy()
    ks_p = float(stats.kstest(f, "uniform").pvalue)
    return {"alpha": alpha.tolist(), "ecp": ecp.tolist(), "atc": float(atc), "ks_pvalue": ks_p, "f": f.tolist()}


def sbc(posterior_for, thetas: np.ndarray, xs: np.ndarray, num_posterior_samples: int, seed: int = 0) -> SBCResult:
    """Simulation-based calibration: the rank of each true parameter among posterior samples
    given its simulated data is uniform for a calibrated posterior (Talts et al. 2018).

    ``posterior_for(x)`` returns an object with ``.sample((n,), x=...)`` (a direct posterior can
    serve every x; MCMC posteriors are built per x). Draws with :func:`posterior_draws`, then
    :func:`sbc_from_draws`.
    """
    return sbc_from_draws(thetas, posterior_draws(posterior_for, xs, num_posterior_samples, seed), seed=seed)


def tarp(posterior_for, thetas: np.ndarray, xs: np.ndarray, num_posterior_samples: int, seed: int = 0,
         num_bins: int | None = None) -> dict:
    """TARP expected coverage (Lemos et al. 2023): :func:`posterior_draws` then
    :func:`tarp_from_draws` (reference points drawn under ``seed``)."""
    return tarp_from_draws(thetas, posterior_draws(posterior_for, xs, num_posterior_samples, seed), seed=seed,
                           num_bins=num_bins)


def c2st_score(samples_a: np.ndarray, samples_b: np.ndarray, seed: int = 0) -> float:
    """Classifier two-sample test accuracy (0.5 = indistinguishable), sbi's random-forest C2ST."""
    from sbi.utils.metrics import c2st

    a = torch.as_tensor(np.asarray(samples_a), dtype=torch.float32)
    b = torch.as_tensor(np.asarray(samples_b), dtype=torch.float32)
    return float(c2st(a, b, seed=seed))
