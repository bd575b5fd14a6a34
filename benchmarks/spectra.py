"""Stellar-spectra benchmark (issue 19): calibrated log g regressors against the information ceiling.

Simulates a training set (noise-free spectra kept, S/N log-uniform in 3-20), a calibration set and a
test set whose stars are observed at every S/N of ``--snr`` (the noise-free spectra made once, the
noise drawn per S/N), computes the Bayesian and plain Fisher ceilings on
the test stars (with and without a free continuum scale and tilt), trains the ridge and LightGBM baselines and
the 1-D CNN (plain, ridge-residual, and ``cnn_aux``: plain with auxiliary Teff and [M/H] heads;
noise redrawn every epoch) and prints JSON lines:

- ``ceiling``: per S/N, the median marginal sigma_CRLB and R^2_max (plain, Bayesian);
- ``model``: per model and S/N, R^2, RMSE, efficiency = R^2 / Bayesian R^2_max (without continuum
  nuisances: the simulated spectra have none; also against the ceiling with them), the leakage flag,
  the raw (uncalibrated) coverage of the 68% and 95% central Gaussian intervals and the mean
  log-likelihood, and the training time;
- ``calibration``: per model and calibrator (``pit_global``: one PIT remapping; ``pit_local``: the
  remapping conditioned on log S/N, :class:`calipers.calibrate.LocalPITRecalibrator`;
  ``pit_local_width``: conditioned on log S/N and the model's own log sigma and mean;
  ``pit_local_mh``, for ``cnn_aux``: conditioned on log S/N and the model's own [M/H] estimate), fitted on
  the calibration set's PIT (all S/N pooled) and judged on the test set: PIT KS and the coverage of
  the central 68 and 95% intervals overall, per S/N, per true [M/H] third and (``cnn_aux``) per third
  of the model's [M/H] estimate (``rows``), the largest coverage error over overall, S/N and true
  [M/H] thirds (the issue's acceptance: <= 0.02), and the largest per grouping;
- ``coverage_noise_floor``: that largest error for a perfectly calibrated model on this test design
  (uniform PIT; sampling noise alone), to read the measured ones against.

Usage::

    python benchmarks/spectra.py --n-train 20000 --n-test 2000 --n-cal 2000   # the issue's sizes
    python benchmarks/spectra.py --n-train 4000 --n-test 300 --epochs 5 --members 1
    python benchmarks/spectra.py --models cnn_aux --save-predictions DIR ...   # then, without training:
    python benchmarks/spectra.py --models cnn_aux --from-predictions DIR      # re-score the calibrators
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
    from calipers.validate.grouped import quantile_bins

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--n-cal", type=int, default=2000, help="calibration stars (each at every S/N)")
    ap.add_argument("--n-fisher", type=int, default=500, help="test stars the ceiling is computed on")
    ap.add_argument("--snr", type=float, nargs="+", default=[3.0, 5.0, 7.0, 10.0, 20.0])
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16, 16, 32, 32])
    ap.add_argument("--models", nargs="+", default=["ridge", "lightgbm", "cnn", "cnn_residual", "cnn_aux"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-predictions", default="", help="directory for each model's predictions (npz)")
    ap.add_argument("--from-predictions", default="",
                    help="re-score the calibrators on the predictions a --save-predictions run wrote (no training)")
    args = ap.parse_args()
    if args.from_predictions:
        rescore(args.from_predictions, args.models)
        return
    torch.set_num_threads(args.threads)

    cfg = SpectraSimConfig()
    model = SpectrumModel(cfg)
    t0 = time.perf_counter()
    train = simulate_spectra(cfg, args.n_train, seed=1, snr=10.0, model=model, keep_model_flux=True)
    rng = np.random.default_rng(5)
    train_snr = np.exp(rng.uniform(np.log(3.0), np.log(20.0), args.n_train))
    train_flux, train_ivar = model.add_noise(train.model_flux, train_snr, seed=11)
    test = simulate_spectra(cfg, args.n_test, seed=2, snr=10.0, model=model, keep_model_flux=True)
    cal = simulate_spectra(cfg, args.n_cal, seed=3, snr=10.0, model=model, keep_model_flux=True)
    t_sim = time.perf_counter() - t0
    n_sim = args.n_train + args.n_test + args.n_cal
    emit({"benchmark": "spectra", "what": "simulation", "n_train": args.n_train, "n_test": args.n_test,
          "n_cal": args.n_cal, "seconds": round(t_sim, 1), "spectra_per_s": round(n_sim / t_sim, 1)})

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
    cals = {snr: model.add_noise(cal.model_flux, snr, seed=int(200 + 10 * snr)) for snr in args.snr}
    logg = np.asarray(test.labels)[:, 1]
    logg_cal = np.asarray(cal.labels)[:, 1]
    # the test rows of every S/N stacked: S/N and [M/H] third of each row, for the grouped coverage
    snr_rows = np.repeat(np.asarray(args.snr, dtype=float), logg.size)
    third, third_edges = quantile_bins(np.asarray(test.labels)[:, 2], 3)
    third_rows = np.tile(third, len(args.snr))
    third_labels = {k: f"[{third_edges[k]:.2f}, {third_edges[k + 1]:.2f}]" for k in range(3)}
    emit(coverage_noise_floor(snr_rows, third_rows))
    for name in args.models:
        t0 = time.perf_counter()
        if name in ("ridge", "lightgbm"):
            reg = RidgeLogg() if name == "ridge" else GBMLogg(n_jobs=args.threads)
            reg.fit(train_flux, train_ivar, np.asarray(train.labels)[:, 1])

            def predict(flux, ivar, reg=reg):
                return (*reg.predict(flux, ivar), np.zeros((flux.shape[0], 0)))
        else:
            aux = name == "cnn_aux"  # log g first, then Teff and [M/H]
            net = SpectrumNetConfig(n_pix=cfg.n_pix, channels=tuple(args.channels),
                                    residual_on_linear=(name == "cnn_residual"), n_aux=2 if aux else 0)
            tcfg = SpectrumTrainConfig(max_epochs=args.epochs, patience=4)
            labels = np.asarray(train.labels)[:, [1, 0, 2]] if aux else np.asarray(train.labels)[:, 1]
            states, hists = train_ensemble(train.model_flux, labels, redraw_noise_fn(model), net, tcfg,
                                           seeds=range(args.members), progress=True)

            def predict(flux, ivar, states=states, net=net):
                means, sigmas, aux_means = predict_members(states, net, flux, ivar, aux=True)
                return (*mixture_moments(means, sigmas), aux_means.mean(0)[:, 1:])  # the [M/H] estimate
        t_train = time.perf_counter() - t0
        for snr, (flux, ivar) in tests.items():
            mean, sigma, aux_pred = predict(flux, ivar)
            z = (logg - mean) / sigma
            extra = ({"m_h_pred_rmse": float(np.sqrt(np.mean((aux_pred[:, 0] - np.asarray(test.labels)[:, 2]) ** 2)))}
                     if aux_pred.shape[1] else {})
            row = bound_comparison(mean, logg, {"snr": np.full(logg.size, snr)}, r2_max, model=name)[0]
            emit({"benchmark": "spectra", "what": "model", **row, "train_seconds": round(t_train, 1),
                  "efficiency_vs_continuum_ceiling": row["r2"] / r2_max_continuum[row["group"]],
                  "coverage68_raw": float(np.mean(np.abs(z) < norm.ppf(0.84))),
                  "coverage95_raw": float(np.mean(np.abs(z) < norm.ppf(0.975))),
                  "mean_loglik_raw": float(np.mean(norm.logpdf(z) - np.log(sigma))), **extra})
        pred_cal = [predict(*cals[snr]) for snr in args.snr]
        pred_test = [predict(*tests[snr]) for snr in args.snr]
        pit_cal = np.concatenate([norm.cdf((logg_cal - m) / s) for m, s, _ in pred_cal])
        pit_test = np.concatenate([norm.cdf((logg - m) / s) for m, s, _ in pred_test])
        snr_cal = np.repeat(np.asarray(args.snr, dtype=float), logg_cal.size)
        # the calibrators' features, all known without the truth: log S/N, the predicted log sigma and
        # mean, and (cnn_aux) the predicted [M/H]
        feat_cal = np.column_stack([np.log(snr_cal), np.log(np.concatenate([s for _, s, _ in pred_cal])),
                                    np.concatenate([m for m, _, _ in pred_cal]),
                                    np.concatenate([a for _, _, a in pred_cal])])
        feat_test = np.column_stack([np.log(snr_rows), np.log(np.concatenate([s for _, s, _ in pred_test])),
                                     np.concatenate([m for m, _, _ in pred_test]),
                                     np.concatenate([a for _, _, a in pred_test])])
        if args.save_predictions:
            import os

            os.makedirs(args.save_predictions, exist_ok=True)
            np.savez(os.path.join(args.save_predictions, f"{name}.npz"), feat_cal=feat_cal, feat_test=feat_test,
                     pit_cal=pit_cal, pit_test=pit_test, logg_cal=logg_cal, logg=logg, m_h=np.asarray(test.labels)[:, 2],
                     m_h_cal=np.asarray(cal.labels)[:, 2], snr=np.asarray(args.snr))
        for record in calibration_records(name, pit_cal, feat_cal, pit_test, feat_test, third_rows, third_labels):
            emit(record)


def coverage_noise_floor(snr_rows, third_rows, n_draws: int = 400, seed: int = 0) -> dict:
    """The largest coverage error over the groups of this test design (every S/N, every [M/H] third,
    68 and 95%) that a *perfectly* calibrated model shows from sampling noise alone: the PIT drawn
    uniform and independent per row (a star's rows at several S/N are not quite independent in
    truth), ``n_draws`` times. Its median, 90th percentile and the chance of staying within 0.02 say
    how much of a measured error is noise."""
    from calipers.validate.grouped import coverage_by_group

    rng = np.random.default_rng(seed)
    groups = {"snr": snr_rows, "m_h_third": third_rows}
    worst = np.array([max(abs(r[k]) for r in coverage_by_group(rng.uniform(size=snr_rows.size), groups)
                          for k in ("error68", "error95")) for _ in range(n_draws)])
    return {"benchmark": "spectra", "what": "coverage_noise_floor", "n_rows": int(snr_rows.size), "n_draws": n_draws,
            "max_abs_coverage_error_median": float(np.median(worst)),
            "max_abs_coverage_error_p90": float(np.quantile(worst, 0.9)),
            "p_within_0.02": float(np.mean(worst <= 0.02))}


def rescore(directory: str, models) -> None:
    """The calibration records of every model whose predictions ``directory`` holds."""
    import os

    from calipers.validate.grouped import quantile_bins

    for name in models:
        path = os.path.join(directory, f"{name}.npz")
        if not os.path.exists(path):
            continue
        d = np.load(path)
        third, edges = quantile_bins(d["m_h"], 3)
        labels = {k: f"[{edges[k]:.2f}, {edges[k + 1]:.2f}]" for k in range(3)}
        emit(coverage_noise_floor(np.repeat(d["snr"], d["m_h"].size), np.tile(third, d["snr"].size))
             | {"from_predictions": path})
        for record in calibration_records(name, d["pit_cal"], d["feat_cal"], d["pit_test"], d["feat_test"],
                                          np.tile(third, d["snr"].size), labels):
            emit(record | {"from_predictions": path})


def calibration_records(name, pit_cal, feat_cal, pit_test, feat_test, third_test, third_labels):
    """Fit the global PIT recalibrator, the one conditioned on log S/N (``pit_local``) and the one
    conditioned on log S/N and the model's own predicted log sigma and mean (``pit_local_width``) on
    the calibration PIT, and judge the recalibrated test PIT per S/N and per [M/H] third (one JSON
    record per calibrator, and one for the raw PIT). Column 0 of the features is log S/N."""
    from calipers.calibrate import LocalPITConfig, LocalPITRecalibrator, PITRecalibrator
    from calipers.validate.grouped import coverage_by_group

    groups = {"snr": np.round(np.exp(feat_test[:, 0]), 6), "m_h_third": third_test}
    labels = {"m_h_third": third_labels}
    if feat_test.shape[1] > 3:  # thirds of the model's own [M/H] estimate: an observable, as the gate groups
        from calipers.validate.grouped import quantile_bins

        groups["m_h_pred_third"], pred_edges = quantile_bins(feat_test[:, 3], 3)
        labels["m_h_pred_third"] = {k: f"[{pred_edges[k]:.2f}, {pred_edges[k + 1]:.2f}]" for k in range(3)}
    out = {"raw": pit_test}
    t0 = time.perf_counter()
    out["pit_global"] = PITRecalibrator(n_knots=100).fit(pit_cal).transform_cdf(pit_test)
    seconds = {"pit_global": time.perf_counter() - t0}
    methods = [("pit_local", [0]), ("pit_local_width", [0, 1, 2])]
    if feat_cal.shape[1] > 3:  # the model's own [M/H] estimate
        methods.append(("pit_local_mh", [0, 3]))
    for method, cols in methods:
        t0 = time.perf_counter()
        local = LocalPITRecalibrator(LocalPITConfig(seed=0)).fit(feat_cal[:, cols], pit_cal)
        out[method] = local.transform_cdf(pit_test[:, None], feat_test[:, cols])[:, 0]
        seconds[method] = time.perf_counter() - t0
    for method, pit in out.items():
        rows = coverage_by_group(pit, groups, labels)
        worst = max(abs(r[k]) for r in rows for k in ("error68", "error95") if r["grouping"] != "m_h_pred_third")
        by_grouping = {g: max(abs(r[k]) for r in rows if r["grouping"] == g for k in ("error68", "error95"))
                       for g in dict.fromkeys(r["grouping"] for r in rows)}
        yield {"benchmark": "spectra", "what": "calibration", "model": name, "calibrator": method,
               "fit_seconds": round(seconds.get(method, 0.0), 1), "pit_ks": rows[0]["pit_ks"],
               "coverage68": rows[0]["coverage68"], "coverage95": rows[0]["coverage95"],
               "max_abs_coverage_error": worst, "passes_0.02": bool(worst <= 0.02),
               "max_abs_coverage_error_by_grouping": by_grouping,
               "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}


if __name__ == "__main__":
    main()
