"""SBI on sbibm's Gaussian-linear task (dimension 10): C2ST of NPE against the analytic
posterior, SBC and TARP for NPE, NLE and NRE, with simulation / training / sampling times.
One JSON line per method.

    python benchmarks/sbi_gaussian.py [--n-sims 10000] [--n-obs 5] [--c2st-samples 10000] [--n-tests 300]

NLE and NRE posteriors are sampled here by importance resampling from the prior
(``sampler: sir``; its effective sample size is reported), which is exact as proposals grow and
fast in this low-contrast task; slice-sampling MCMC (``sampler: mcmc``) is the general choice.

SBC and TARP are computed from one set of posterior draws (``posterior_draws``, 200 per test
simulation) with sbi's functions (``calipers.sbi.diagnostics``): ``tarp_atc`` is sbi's
``check_tarp`` area over the upper half of the credibility grid, ``tarp_ks_p`` the KS p-value of
the coverage values.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    from calipers.sbi import (GaussianLinear, SBIConfig, build_posterior, c2st_score, posterior_draws, sbc_from_draws,
                              simulate, tarp_from_draws, train_estimator)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-sims", type=int, default=10_000)
    p.add_argument("--n-obs", type=int, default=5, help="observations for C2ST (sbibm uses 10)")
    p.add_argument("--c2st-samples", type=int, default=10_000)
    p.add_argument("--n-tests", type=int, default=300, help="held-out simulations for SBC and TARP")
    p.add_argument("--methods", nargs="+", default=["npe", "nle", "nre"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--stop-after-epochs", type=int, default=20, help="early-stopping patience")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="nsf", help="npe/nle flow: nsf, maf, mdn, ...")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sim = GaussianLinear(dim=10)
    prior = sim.prior_torch()
    t0 = time.time()
    theta, x = simulate(sim, a.n_sims, seed=0)
    sim_s = time.time() - t0
    tt, xx = simulate(sim, a.n_tests, seed=1)
    obs_theta, obs_x = simulate(sim, a.n_obs, seed=2)
    for method in a.methods:
        cfg = SBIConfig(method=method, sampler="sir", sir_proposals=50_000, stop_after_epochs=a.stop_after_epochs,
                        **({"model": a.model} if method != "nre" else {}))
        t0 = time.time()
        net, summary = train_estimator(theta, x, prior, cfg, device=a.device)
        train_s = time.time() - t0
        post_for = (lambda xo, p=build_posterior(net, prior, cfg): p) if method == "npe" else \
            (lambda xo: build_posterior(net, prior, cfg, xo))
        out = {"task": "gaussian_linear_10d", "method": method, "n_simulations": a.n_sims,
               "simulate_s": round(sim_s, 3), "train_s": round(train_s, 1), "epochs": summary["epochs_trained"],
               "device": a.device, "stop_after_epochs": a.stop_after_epochs, "model": cfg.model}
        if method == "npe":
            scores, sample_s = [], 0.0
            rng = np.random.default_rng(3)
            for xo in obs_x:
                t0 = time.time()
                s = post_for(xo).sample((a.c2st_samples,), x=torch.as_tensor(xo[None], dtype=torch.float32),
                                        show_progress_bars=False).numpy()
                sample_s += time.time() - t0
                scores.append(c2st_score(s, sim.sample_true_posterior(xo, a.c2st_samples, rng)))
            out |= {"c2st_mean": round(float(np.mean(scores)), 4), "c2st": [round(v, 4) for v in scores],
                    "sample_s_per_10k": round(sample_s / len(obs_x) * 1e4 / a.c2st_samples, 3)}
        else:
            out["sir_effective_sample_size"] = round(build_posterior(net, prior, cfg, obs_x[0]).effective_sample_size(), 1)
        t0 = time.time()
        draws = posterior_draws(post_for, xx, 200, seed=0)
        r = sbc_from_draws(tt, draws, seed=0)
        t = tarp_from_draws(tt, draws, seed=1)
        out |= {"sbc_min_ks_p": round(min(r.ks_pvals), 4), "sbc_min_ks_p_bonferroni": round(min(1, 10 * min(r.ks_pvals)), 4),
                "sbc_passes": bool(10 * min(r.ks_pvals) > 0.01), "tarp_atc": round(t["atc"], 4),
                "tarp_ks_p": round(t["ks_pvalue"], 4), "diagnostics_s": round(time.time() - t0, 1)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
