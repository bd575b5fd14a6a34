"""Weak-lensing shear benchmark (issue 21): equivariant vs plain CNN, raw vs metacal-calibrated bias.

Simulates training stamps (``calipers.shear.simulate``: Sersic galaxies, Moffat PSF, S/N 10-100),
turns them into metacal ``noshear`` images (the estimator is defined on those), trains the
C_N-equivariant network and the plain CNN (rotation/flip augmentation) on the Gaussian NLL of the
sheared ellipticity, and prints JSON lines. Networks (``--kinds``): ``equivariant``; ``plain``, the
baseline CNN of similar size (``--plain-channels``, 10.7k parameters against the equivariant
network's 10.9k); ``plain-wide``, the CNN with the equivariant network's feature-map sizes (182k
parameters).

- ``training``: stamps/s simulated, trained, estimated (five metacal images per object), per network;
- ``equivariance``: on the metacal ``noshear`` images of noise-free GalSim renders, the error of exact 90-degree rotations and of
  arbitrary ones (``|eps(theta) - R(2 theta) eps(0)|``: mean and max) per network;
- ``coverage``: of the 68% and 95% ellipses (the network's 2x2 covariance) on held-out stamps, and the
  fraction with ``|eps| >= 1``;
- ``bias``: on a ring test (each unit: a galaxy and its 90-degree-rotated twin, each under +g and -g
  with one noise field; shears (+-0.02, +-0.02)), ``m`` and ``c`` per component with bootstrap errors
  over units, raw (network on the observed stamps, and on the noshear images) and after the metacal
  response calibration per S/N x size bin (errors: the mean responses re-estimated in every bootstrap
  resample), overall and per S/N and size bin.

Usage::

    python benchmarks/shear.py --ring-units 50000          # 100,000 ring pairs (200,000 stamps)
    python benchmarks/shear.py --n-train 4000 --epochs 2 --ring-units 1000 --kinds equivariant  # a quick look
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch


def emit(record: dict) -> None:
    print(json.dumps(record, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)), flush=True)


def main() -> None:
    warnings.filterwarnings("ignore", message="indexing with dtype torch.uint8")
    from scipy.stats import chi2

    from calipers.shear.bias import bin_index, fit_bias, fit_bias_calibrated, mean_response
    from calipers.shear.estimate import estimate_with_response, metacal_inputs
    from calipers.shear.metacal import MetacalOperators, reconvolution_psf
    from calipers.shear.model import (ShearNetConfig, ShearTrainConfig, equivariance_check, load_network,
                                      network_inputs, predict, train_shear_model)
    from calipers.shear.simulate import ShearSimConfig, psf_image, simulate_ring, simulate_shear

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=30_000, help="training stamps (10%% of them stop the training)")
    ap.add_argument("--n-test", type=int, default=4_000, help="held-out stamps for coverage")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--ring-units", type=int, default=50_000, help="ring units (4 stamps, 2 ring pairs each)")
    ap.add_argument("--plain-ring-units", type=int, default=10_000, help="ring units for the plain CNN")
    ap.add_argument("--kinds", nargs="+", default=["equivariant", "plain", "plain-wide"],
                    choices=["equivariant", "plain", "plain-wide"])
    ap.add_argument("--plain-channels", type=int, nargs="+", default=[6, 12, 12],
                    help="widths of the plain CNN (plain-wide: the equivariant network's feature maps)")
    ap.add_argument("--n-rotation", type=int, default=200, help="galaxies in the arbitrary-rotation test")
    ap.add_argument("--snr-edges", type=float, nargs="+", default=[10, 15, 30, 100])
    ap.add_argument("--hlr-edges", type=float, nargs="+", default=[0.35, 0.5, 0.65, 0.8])
    ap.add_argument("--chunk", type=int, default=5_000, help="ring units simulated and estimated at a time")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", default="", help="a directory for each network's ring-test arrays (npz)")
    ap.add_argument("--seed", type=int, default=21)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = ShearSimConfig()
    t0 = time.perf_counter()
    ops = {i: MetacalOperators.build(psf_image(cfg, f), cfg.pixel_scale) for i, f in enumerate(cfg.psf_fwhm)}
    t_ops = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = simulate_shear(cfg, args.n_train + args.n_test, seed=args.seed, progress=True)
    t_sim = time.perf_counter() - t0
    p = data.params
    x_all = metacal_inputs(data.images, p["noise_sigma"], p["galaxy_id"], ops, data.psf_index, "noshear",
                           seed=args.seed)
    y_all = np.stack([p["eps1"], p["eps2"]], 1)
    n_fit = args.n_train - args.n_train // 10
    tr, va, te = slice(0, n_fit), slice(n_fit, args.n_train), slice(args.n_train, None)
    emit({"benchmark": "shear", "what": "setup", "n_train": n_fit, "n_val": args.n_train - n_fit,
          "n_test": args.n_test, "stamp_size": cfg.stamp_size, "psf_fwhm": list(cfg.psf_fwhm),
          "reconvolution_fwhm": [reconvolution_psf(psf_image(cfg, f), cfg.pixel_scale).fwhm for f in cfg.psf_fwhm],
          "metacal_operators_seconds": round(t_ops, 1), "simulate_stamps_per_s": round(len(x_all) / t_sim, 1)})

    for kind in args.kinds:
        net = ShearNetConfig(kind="equivariant" if kind == "equivariant" else "plain",
                             plain_channels=tuple(args.plain_channels) if kind == "plain" else ())
        t0 = time.perf_counter()
        state, hist = train_shear_model(x_all[tr], y_all[tr], x_all[va], y_all[va], net,
                                        ShearTrainConfig(max_epochs=args.epochs), seed=args.seed, progress=True)
        t_train = time.perf_counter() - t0
        model = load_network(state, net)
        n_par = sum(q.numel() for q in model.parameters())
        # coverage of the ellipses on held-out stamps
        eps, cov = predict(model, x_all[te])
        r = y_all[te] - eps
        d2 = np.einsum("ni,nij,nj->n", r, np.linalg.inv(cov), r)
        emit({"benchmark": "shear", "what": "coverage", "network": kind, "n": len(r),
              "coverage_68": float(np.mean(d2 <= chi2.ppf(0.68, 2))), "coverage_95": float(np.mean(d2 <= chi2.ppf(0.95, 2))),
              "fraction_abs_eps_ge_1": float(np.mean(np.hypot(eps[:, 0], eps[:, 1]) >= 1)),
              "rmse": float(np.sqrt(np.mean(r ** 2))), "val_nll": hist["val_nll"][hist["best_epoch"]]})
        # equivariance on noise-free renders' noshear images (the noise sigma of S/N 50 scales the input)
        equi = equivariance_check(model, cfg, args.n_rotation, np.random.default_rng(args.seed + 1), operators=ops)
        emit({"benchmark": "shear", "what": "equivariance", "network": kind,
              **{k: v for k, v in equi.items() if k != "snr_scale"}})
        # ring test in chunks
        n_units = args.ring_units if kind == "equivariant" else min(args.plain_ring_units, args.ring_units)
        shears = [[0.02, 0.02], [-0.02, -0.02], [0.02, -0.02], [-0.02, 0.02]]
        keep = {k: [] for k in ("raw", "eps", "response", "g", "pair", "snr", "hlr")}
        t_ring_sim = t_est = 0.0
        for start in range(0, n_units, args.chunk):
            t0 = time.perf_counter()
            ring = simulate_ring(cfg, min(args.chunk, n_units - start), shears, seed=args.seed + 2, start=start)
            t_ring_sim += time.perf_counter() - t0
            q = ring.params
            t0 = time.perf_counter()
            raw, _ = predict(model, network_inputs(ring.images, q["noise_sigma"], ring.psf_images[ring.psf_index]))
            est = estimate_with_response(model, ring.images, q["noise_sigma"], q["pair_id"] * 2 + q["ring"], ops,
                                         ring.psf_index, seed=args.seed + 3)
            t_est += time.perf_counter() - t0
            keep["raw"].append(raw)
            keep["eps"].append(est["eps"])
            keep["response"].append(est["response"])
            keep["g"].append(np.stack([q["g1"], q["g2"]], 1))
            keep["pair"].append(q["pair_id"])
            keep["snr"].append(q["snr"])
            keep["hlr"].append(q["hlr"])
        k = {name: np.concatenate(v) for name, v in keep.items()}
        emit({"benchmark": "shear", "what": "training", "network": kind, "parameters": n_par,
              "train_seconds": round(t_train, 1), "epochs": len(hist["val_nll"]), "best_epoch": hist["best_epoch"],
              "train_stamps_per_s": round(float(np.median(hist["samples_per_s"])), 1),
              "ring_simulate_stamps_per_s": round(len(k["g"]) / t_ring_sim, 1),
              "estimate_stamps_per_s": round(len(k["g"]) / t_est, 1), "threads": args.threads})
        if args.save:
            import os

            os.makedirs(args.save, exist_ok=True)
            np.savez(os.path.join(args.save, f"ring_{kind}.npz"), **k)
        snr_bin = bin_index(k["snr"], args.snr_edges)
        hlr_bin = bin_index(k["hlr"], args.hlr_edges)
        cal_bin = snr_bin * (len(args.hlr_edges) - 1) + hlr_bin  # response bins: S/N x size
        mean_r = mean_response(k["response"], snr_bin)

        def bias(name, est, sel=None, **extra):
            sel = np.ones(len(k["g"]), bool) if sel is None else sel
            if est is None:  # calibrated: the mean responses re-estimated in every bootstrap resample
                res = fit_bias_calibrated(k["eps"][sel], k["response"][sel], k["g"][sel], cal_bin[sel],
                                          k["pair"][sel], n_boot=200, seed=args.seed)
            else:
                res = fit_bias(est[sel], k["g"][sel], k["pair"][sel], n_boot=200, seed=args.seed)
            emit({"benchmark": "shear", "what": "bias", "network": kind, "estimate": name, **extra,
                  **{kk: (round(v, 6) if isinstance(v, float) else v) for kk, v in res.items()}})

        calibrated = "metacal-calibrated per S/N x size bin"
        bias("raw, observed stamps", k["raw"])
        bias("raw, metacal noshear", k["eps"])
        bias(calibrated, None)
        for b in range(len(args.snr_edges) - 1):
            sel = snr_bin == b
            bias("raw, observed stamps", k["raw"], sel, snr=args.snr_edges[b:b + 2])
            bias(calibrated, None, sel, snr=args.snr_edges[b:b + 2], mean_response=np.round(mean_r[b], 4).tolist())
        for b in range(len(args.hlr_edges) - 1):
            bias(calibrated, None, hlr_bin == b, hlr=args.hlr_edges[b:b + 2])


if __name__ == "__main__":
    main()
