"""Transmission-spectrum benchmark (issue 20): the Ariel score of every predictor on one test set.

Simulates 10,000 planets (``calipers.transit.simulate``) split by planet into training (5,000),
validation (1,000: early stopping), calibration (2,000) and test (2,000) sets, extracts the per-bin
depths by least squares, trains the mu/sigma network with and without its physics losses, calibrates
and prints JSON lines:

- ``timing``: seconds of each step and the end-to-end total (simulate, extract, train, calibrate,
  score) for the main network;
- ``formal_sigma``: by how much the least-squares formal sigma is too small (std of z on the test set);
- ``predictor``: per predictor (naive; least squares with its formal sigma; least squares +
  temperature; network; network + temperature; network + per-bin conformal; + conformal pooled over
  neighbouring bins (``--window``); the same for the ablations), the Ariel score, the RMSE (ppm), the coverage at 1 and 2 sigma over all values and its
  range over bins, the z-score spread, the temperature where fitted, and the auditor's summary;
- ``ablation``: the network with each physics-loss weight set to 0 (``--ablations all`` trains one
  network per term, ``none`` skips them; the default trains one with every weight at 0).

Usage::

    python benchmarks/transit.py                       # the issue's sizes
    python benchmarks/transit.py --n-planets 1000 --epochs 5 --ablations none   # a quick look
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def emit(record: dict) -> None:
    print(json.dumps(record, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)), flush=True)


def main() -> None:
    from calipers.calibrate import GaussianWidthScaling
    from calipers.calibrate.gaussian import PerOutputConformalScaling
    from calipers.transit.audit import audit_spectra, audit_summary
    from calipers.transit.extract import extract_depths
    from calipers.transit.model import (LOSS_TERMS, TransitNetConfig, TransitTrainConfig, predict_ensemble,
                                        train_transit_model, transit_features)
    from calipers.transit.score import NaivePredictor, ariel_score
    from calipers.transit.simulate import TransitSimConfig, simulate_transits
    from calipers.validate.gaussian import gaussian_log_likelihood, z_score_summary

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-planets", type=int, default=10_000, help="split 50/10/20/20 into train/val/cal/test")
    ap.add_argument("--n-bins", type=int, default=283)
    ap.add_argument("--epochs", type=int, default=45)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--members", type=int, default=3, help="deep-ensemble members of each network")
    ap.add_argument("--ablations", choices=["none", "zero", "all"], default="zero")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loss-weights", default="{}", help="JSON: physics-loss weights of the main network (over the "
                                                          "library's defaults)")
    ap.add_argument("--save-predictions", default="", help="an .npz for the main network's calibration and test "
                                                               "predictions")
    ap.add_argument("--window", type=int, default=5, help="bins on each side pooled by the pooled conformal row")
    ap.add_argument("--seed", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = TransitSimConfig(n_bins=args.n_bins)
    n = args.n_planets
    sizes = {"train": n // 2, "val": n // 10, "cal": n // 5, "test": n - n // 2 - n // 10 - n // 5}
    timing = {}
    t0 = time.perf_counter()
    sets = {k: simulate_transits(cfg, m, seed=s, progress=True) for (k, m), s in zip(sizes.items(), (1, 2, 3, 4))}
    timing["simulate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fits = {k: extract_depths(s.time, s.flux, s.white, s.ld, s.ld_white, s.planets["period"], s.planets["a_rs"],
                              s.planets["inclination"]) for k, s in sets.items()}
    timing["extract"] = time.perf_counter() - t0
    feats = {k: transit_features(f) for k, f in fits.items()}
    y = {k: s.depth for k, s in sets.items()}
    wavelength = sets["train"].wavelength
    naive = NaivePredictor.fit(y["train"])

    def record(name, mu, sigma, extra=None):
        yt = y["test"]
        cover = z_score_summary(yt, mu, sigma)
        audit = audit_summary(audit_spectra(mu, sigma, wavelength)) if extra is None or "no_audit" not in extra else {}
        emit({"benchmark": "transit", "what": "predictor", "predictor": name,
              "ariel_score": ariel_score(yt, mu, sigma, naive), "ariel_score_unclipped":
              ariel_score(yt, mu, sigma, naive, clip=False), "rmse_ppm": float(np.sqrt(np.mean((mu - yt) ** 2)) * 1e6),
              "mean_log_likelihood": float(np.mean(gaussian_log_likelihood(yt, mu, sigma)))} | cover
             | {k: v for k, v in (extra or {}).items() if k != "no_audit"} | {"audit": audit})

    emit({"benchmark": "transit", "what": "setup", "sizes": sizes, "n_bins": args.n_bins, "n_times": cfg.n_times,
          "naive_mean": naive[0], "naive_sigma": naive[1]})
    ft = fits["test"]
    record("naive", np.full_like(y["test"], naive[0]), np.full_like(y["test"], naive[1]), {"no_audit": True})
    z_ls = (ft["d_hat"] - y["test"]) / ft["sigma_hat"]
    emit({"benchmark": "transit", "what": "formal_sigma", "z_std": float(z_ls.std()),
          "z_std_per_bin_median": float(np.median(z_ls.std(axis=0))),
          "note": "least-squares formal sigma is too small by this factor under the correlated jitter"})
    record("least squares, formal sigma", ft["d_hat"], ft["sigma_hat"])
    t_ls = GaussianWidthScaling().fit(fits["cal"]["d_hat"], fits["cal"]["sigma_hat"], y["cal"]).temperature
    record("least squares + temperature", ft["d_hat"], ft["sigma_hat"] * t_ls, {"temperature": t_ls})

    net = TransitNetConfig(n_bins=args.n_bins, channels=args.channels)

    def network(name, weights, main=False):
        tcfg = TransitTrainConfig(max_epochs=args.epochs, patience=args.patience, loss_weights=weights)
        t0 = time.perf_counter()
        states, hists = [], []
        for k in range(args.members):
            state, hist = train_transit_model((*feats["train"], y["train"]), (*feats["val"], y["val"]), net, tcfg,
                                              wavelength, seed=args.seed * 1000 + k if args.members > 1 else args.seed,
                                              progress=True)
            states.append(state)
            hists.append(hist)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        mu_c, s_c = predict_ensemble(states, net, *feats["cal"])
        mu, sigma = predict_ensemble(states, net, *feats["test"])
        if main and args.save_predictions:
            np.savez(args.save_predictions, mu_cal=mu_c, sigma_cal=s_c, y_cal=y["cal"], mu=mu, sigma=sigma,
                     y=y["test"], wavelength=wavelength)
        temp = GaussianWidthScaling().fit(mu_c, s_c, y["cal"]).temperature
        conf = PerOutputConformalScaling().fit(mu_c, s_c * temp, y["cal"])
        pooled = PerOutputConformalScaling(window=args.window).fit(mu_c, s_c * temp, y["cal"])
        t_cal = time.perf_counter() - t0
        info = {"loss_weights": weights, "train_seconds": round(t_train, 1), "members": args.members,
                "epochs": [len(h["held_out_nll"]) for h in hists], "best_epoch": [h["best_epoch"] for h in hists]}
        record(f"{name}", mu, sigma, info)
        record(f"{name} + temperature", mu, sigma * temp, info | {"temperature": temp})
        t0 = time.perf_counter()
        record(f"{name} + per-bin conformal", mu, conf.transform(sigma * temp),
               info | {"temperature": temp, "conformal_factor_range": [float(conf.factors.min()),
                                                                       float(conf.factors.max())]})
        t_score = time.perf_counter() - t0
        record(f"{name} + conformal pooled over +-{args.window} bins", mu, pooled.transform(sigma * temp),
               info | {"temperature": temp, "conformal_factor_range": [float(pooled.factors.min()),
                                                                       float(pooled.factors.max())]})
        if main:
            timing.update(train=t_train, calibrate=t_cal, score=t_score)

    default = TransitTrainConfig().loss_weights | json.loads(args.loss_weights)
    network("network", default, main=True)
    timing["end_to_end"] = sum(timing[k] for k in ("simulate", "extract", "train", "calibrate", "score"))
    emit({"benchmark": "transit", "what": "timing", "threads": args.threads,
          **{k: round(v, 1) for k, v in timing.items()}})
    if args.ablations == "zero":
        network("network, no physics losses", {k: 0.0 for k in LOSS_TERMS})
    elif args.ablations == "all":
        network("network, no physics losses", {k: 0.0 for k in LOSS_TERMS})
        for term in LOSS_TERMS:
            network(f"network, {term} weight 0", default | {term: 0.0})


if __name__ == "__main__":
    main()
