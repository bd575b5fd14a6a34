"""SBI for (Omega_m, sigma8) from tomographic shear C_ell, with and without marginalising over
the n(z) uncertainty. One JSON line per variant: simulation / training / sampling times, SBC
per-parameter KS p-values, TARP (sbi's ATC over the upper half of the credibility grid, and the KS
p-value of the coverage values), posterior contraction (1 - E[var_post]/var_prior, which
SBIGate's ``min_contraction`` checks; SBC, TARP and contraction share one set of 200 posterior
draws per test simulation), and the posterior of a mock observation with known
parameters (means, standard deviations, whether the truth lies in the 95% region). The
``undertrained`` variant trains on the first ``--undertrained`` simulations of the marginalised
set only, to show which gate checks catch it.

Needs the n(z) of a finished ``pipelines/photoz_to_cl.yml`` run (data/photoz_to_cl/nz.hdf5).

    python benchmarks/sbi_cosmology.py [--nz data/photoz_to_cl/nz.hdf5] [--n-sims 2000] [--n-tests 200]
        [--variants marginalised fixed undertrained]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    from calipers.sbi import (SBIConfig, build_posterior, posterior_draws, sbc_from_draws, simulate, tarp_from_draws,
                              train_estimator)
    from calipers.core.simulations import simulator_from_spec

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nz", default=os.path.join(ROOT, "data", "photoz_to_cl", "nz.hdf5"))
    p.add_argument("--n-sims", type=int, default=2000)
    p.add_argument("--n-tests", type=int, default=200)
    p.add_argument("--variants", nargs="+", default=["marginalised", "fixed"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--undertrained", type=int, default=200, help="simulations of the 'undertrained' variant")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    truth = np.array([0.3, 0.81])
    for variant in a.variants:
        sim = simulator_from_spec({"simulator": "cosmology_cl",
                                   "options": {"nz_path": a.nz, "marginalise_nz": variant != "fixed"}})
        n_train = a.undertrained if variant == "undertrained" else a.n_sims
        t0 = time.time()
        theta, x = simulate(sim, n_train, seed=0, block_size=250)
        sim_s = time.time() - t0
        tt, xx = simulate(sim, a.n_tests, seed=1, block_size=250)
        x_obs = sim.simulate(truth, np.random.default_rng(2))[0]   # the mock: same n(z) treatment, known truth
        prior = sim.prior_torch()
        cfg = SBIConfig(method="npe")
        t0 = time.time()
        net, summary = train_estimator(theta, x, prior, cfg)
        train_s = time.time() - t0
        post = build_posterior(net, prior, cfg)
        t0 = time.time()
        s = post.sample((20_000,), x=torch.as_tensor(x_obs[None], dtype=torch.float32), show_progress_bars=False).numpy()
        sample_s = time.time() - t0
        lo, hi = np.percentile(s, [2.5, 97.5], axis=0)
        draws = posterior_draws(lambda xo: post, xx, 200, seed=0)
        r = sbc_from_draws(tt, draws, seed=0)
        t = tarp_from_draws(tt, draws, seed=1)
        contraction = r.contraction(sim.sample_prior(100_000, np.random.default_rng(7)).var(axis=0))
        print(json.dumps({"variant": variant, "n_simulations": n_train, "n_tests": a.n_tests,
                          "simulate_s_per_sim": round(sim_s / n_train, 4), "train_s": round(train_s, 1),
                          "epochs": summary["epochs_trained"], "sample_s_per_10k": round(sample_s / 2, 3),
                          "sbc_ks_p": [round(v, 4) for v in r.ks_pvals], "sbc_passes": bool(min(r.ks_pvals) > 0.01),
                          "tarp_atc": round(t["atc"], 4), "tarp_ks_p": round(t["ks_pvalue"], 4),
                          "contraction": np.round(contraction, 4).tolist(),
                          "truth": truth.tolist(), "posterior_mean": np.round(s.mean(0), 4).tolist(),
                          "posterior_sd": np.round(s.std(0), 4).tolist(),
                          "truth_in_95": bool(np.all((truth >= lo) & (truth <= hi)))}), flush=True)


if __name__ == "__main__":
    main()
