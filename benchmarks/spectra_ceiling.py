"""Information ceiling of log g from simulated PFS red-arm spectra (issue 19): simulator speed, Jacobian
time, and per S/N the median marginal sigma_CRLB of log g, the plain R^2_max (1 - mean CRLB / Var log g)
and the prior-aware Bayesian R^2_max (posterior variance with a Gaussian prior of the uniform prior's
variance), each without and with a free continuum scale and tilt. One JSON line per record.

    python benchmarks/spectra_ceiling.py                     # 2000 stars from the prior
    python benchmarks/spectra_ceiling.py --n 300 --threads 1

Records: ``speed`` (noise-free spectra/s in float32 on ``--threads`` torch threads, and the rate of
``simulate_spectra`` with noise), ``jacobian`` (float64 forward-mode Jacobian, seconds per star),
``ceiling`` (one per S/N), ``ceiling_cosine_prior`` (the same with the van Trees cos^2 prior), and
``sigma_by_teff`` (median sigma_CRLB with continuum nuisances per Teff third, at each S/N).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def _emit(record: dict) -> None:
    def fix(v):
        if isinstance(v, float):
            return round(v, 4)
        return v

    print(json.dumps({k: fix(v) for k, v in record.items()}), flush=True)


def main(argv: list[str] | None = None) -> None:
    from calipers.spectra.fisher import (bayesian_crlb, ceiling_table, continuum_nuisance_jacobian, fisher_matrix,
                                         jacobian, marginal_crlb, prior_information)
    from calipers.spectra.simulate import SpectraSimConfig, SpectrumModel, draw_labels, simulate_spectra

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="stars drawn from the prior for the ceiling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snrs", type=float, nargs="+", default=[3.0, 5.0, 7.0, 10.0, 20.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-n", type=int, default=256, help="spectra timed for the simulation speed")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    config = SpectraSimConfig()
    t0 = time.perf_counter()
    model = SpectrumModel(config)
    build_s = time.perf_counter() - t0

    # ---- speed (after one warm-up chunk)
    labels = torch.as_tensor(draw_labels(config, a.speed_n, seed=a.seed + 1000), dtype=torch.float32)
    with torch.no_grad():
        model.flux(labels[:config.chunk_size])
        t0 = time.perf_counter()
        model.flux(labels)
        flux_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulate_spectra(config, a.speed_n, seed=a.seed + 1000, snr=5.0, model=model)
    sim_s = time.perf_counter() - t0
    _emit({"record": "speed", "threads": a.threads, "n": a.speed_n, "model_build_s": build_s,
           "noise_free_spectra_per_s": a.speed_n / flux_s, "simulate_spectra_per_s": a.speed_n / sim_s,
           "dtype": "float32", "n_pix": config.n_pix, "n_lines": len(model.line_table()["label"])})

    # ---- Jacobian
    theta = torch.as_tensor(draw_labels(config, a.n, seed=a.seed), dtype=torch.float64)
    t0 = time.perf_counter()
    flux, jac = jacobian(model, theta, return_flux=True)
    jac_s = time.perf_counter() - t0
    _emit({"record": "jacobian", "n": a.n, "dtype": "float64", "seconds": jac_s, "seconds_per_star": jac_s / a.n,
           "threads": a.threads})

    # ---- ceilings
    for prior, name in (("gaussian", "ceiling"), ("cosine", "ceiling_cosine_prior")):
        for row in ceiling_table(model, theta, a.snrs, prior=prior, jac=jac, flux=flux):
            _emit({"record": name, "prior": prior} | row)

    # ---- where the information is: sigma_CRLB (with continuum nuisances) per Teff third
    jac_np = jac.numpy()
    flux_np = flux.numpy()
    jac_cont = np.concatenate([jac_np, continuum_nuisance_jacobian(flux_np, model.wavelength)], axis=-1)
    teff = theta[:, 0].numpy()
    edges = np.quantile(teff, [0.0, 1 / 3, 2 / 3, 1.0])
    prior_info = prior_information(config.label_ranges, "gaussian", 2)
    for snr in a.snrs:
        fisher = fisher_matrix(jac_cont, model.expected_ivar(flux_np, snr))
        crlb = marginal_crlb(fisher)
        post = bayesian_crlb(fisher, prior_info)
        rec = {"record": "sigma_by_teff", "snr": snr}
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (teff >= lo) & (teff <= hi)
            key = f"{lo:.0f}-{hi:.0f}K"
            rec[f"sigma_crlb_median_{key}"] = float(np.median(np.sqrt(crlb[sel])))
            rec[f"sigma_post_median_{key}"] = float(np.median(np.sqrt(post[sel])))
        _emit(rec)


if __name__ == "__main__":
    main()
