"""Stellar-spectra benchmark (issue 19, first form): log g regressors against the information ceiling.

Simulates a training set (noise-free spectra kept, S/N log-uniform in 3-20) and a test set whose
stars are observed at every S/N of ``--snr``, computes the Bayesian and plain Fisher ceilings on
the test stars (with and without a free continuum scale and tilt), trains the ridge and LightGBM baselines and
the 1-D CNN (plain and ridge-residual; noise redrawn every epoch) and prints JSON lines:

- ``ceiling``: per S/N, the median marginal sigma_CRLB and R^2_max (plain, Bayesian);
- ``model``: per model and S/N, R^2, RMSE, efficiency = R^2 / Bayesian R^2_max (without continuum
  nuisances: the simulated spectra have none; also against the ceiling with them), the leakage flag,
  the raw (uncalibrated) coverage of the 68% and 95% central Gaussian intervals and the mean
  log-likelihood, and the training time.

No calibration here yet: the pipeline's calibration stage will come on top. Usage::

    python benchmarks/spectra.py --n-train 20000 --n-test 2000          # the issue's sizes
    python benchmarks/spectra.py --n-train 4000 --n-test 300 --epochs 5 --members 1
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.stats import norm


def emit(record: dict) -> None:
    print(json.dumps(record, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)), flush=True)


def main() -> None:
    from calipers.spectra.baselines import GBMLogg, RidgeLogg
    from calipers.spectra.bound import bound_comparison
    from calipers.spectra.fisher import ceiling_table
    from calipers.spectra.model import (SpectrumNetConfig, SpectrumTrainConfig, mixture_moments, predict_members,
                                        train_ensemble)
    from calipers.spectra.simulate import SpectraSimConfig, SpectrumModel, redraw_noise_fn, simulate_spectra

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--n-fisher", type=int, default=500, help="test stars the ceiling is computed on")
    ap.add_argument("--snr", type=float, nargs="+", default=[3.0, 5.0, 7.0, 10.0, 20.0])
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16, 16, 32, 32])
    ap.add_argument("--models", nargs="+", default=["ridge", "lightgbm", "cnn", "cnn_residual"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = SpectraSimConfig()
    model = SpectrumModel(cfg)
    t0 = time.perf_counter()
    train = simulate_spectra(cfg, args.n_train, seed=1, snr=10.0, model=model, keep_model_flux=True)
    rng = np.random.default_rng(5)
    train_snr = np.exp(rng.uniform(np.log(3.0), np.log(20.0), args.n_train))
    train_flux, train_ivar = model.add_noise(train.model_flux, train_snr, seed=11)
    test = simulate_spectra(cfg, args.n_test, seed=2, snr=10.0, model=model, keep_model_flux=True)
    t_sim = time.perf_counter() - t0
    emit({"benchmark": "spectra", "what": "simulation", "n_train": args.n_train, "n_test": args.n_test,
          "seconds": round(t_sim, 1), "spectra_per_s": round((args.n_train + args.n_test) / t_sim, 1)})

    t0 = time.perf_counter()
    n_f = min(args.n_fisher, args.n_test)
    ceilings = ceiling_table(model, test.labels[:n_f], args.snr)
    for row in ceilings:
        emit({"benchmark": "spectra", "what": "ceiling", **row})
    emit({"benchmark": "spectra", "what": "fisher_timing", "n": n_f, "seconds": round(time.perf_counter() - t0, 1)})
    # the simulated spectra have no free continuum (no flux-calibration error), so the ceiling that
    # bounds a model here is the one without the continuum nuisances; the other is printed beside it
    r2_max = {"snr": {f"{r['snr']:g}": r["r2_bayes"] for r in ceilings}}
    r2_max_continuum = {f"{r['snr']:g}": r["r2_bayes_continuum"] for r in ceilings}

    tests = {snr: model.add_noise(test.model_flux, snr, seed=int(100 + 10 * snr)) for snr in args.snr}
    logg = np.asarray(test.labels)[:, 1]
    for name in args.models:
        t0 = time.perf_counter()
        if name in ("ridge", "lightgbm"):
            reg = RidgeLogg() if name == "ridge" else GBMLogg(n_jobs=args.threads)
            reg.fit(train_flux, train_ivar, np.asarray(train.labels)[:, 1])
            predict = reg.predict
        else:
            net = SpectrumNetConfig(n_pix=cfg.n_pix, channels=tuple(args.channels),
                                    residual_on_linear=(name == "cnn_residual"))
            tcfg = SpectrumTrainConfig(max_epochs=args.epochs, patience=4)
            states, hists = train_ensemble(train.model_flux, np.asarray(train.labels)[:, 1],
                                           redraw_noise_fn(model), net, tcfg, seeds=range(args.members),
                                           progress=True)

            def predict(flux, ivar, states=states, net=net):
                return mixture_moments(*predict_members(states, net, flux, ivar))
        t_train = time.perf_counter() - t0
        for snr, (flux, ivar) in tests.items():
            mean, sigma = predict(flux, ivar)
            z = (logg - mean) / sigma
            row = bound_comparison(mean, logg, {"snr": np.full(logg.size, snr)}, r2_max, model=name)[0]
            emit({"benchmark": "spectra", "what": "model", **row, "train_seconds": round(t_train, 1),
                  "efficiency_vs_continuum_ceiling": row["r2"] / r2_max_continuum[row["group"]],
                  "coverage68_raw": float(np.mean(np.abs(z) < norm.ppf(0.84))),
                  "coverage95_raw": float(np.mean(np.abs(z) < norm.ppf(0.975))),
                  "mean_loglik_raw": float(np.mean(norm.logpdf(z) - np.log(sigma)))})


if __name__ == "__main__":
    main()
