"""Drift-monitoring benchmark (issue 22): false alarms, run lengths, detection delays, power, runtime.

Prints JSON lines:

- ``false_alarm``: per-batch tests over ``--null-batches`` null batches of 1,000: MMD and KS (6
  features, a correlated Gaussian population with the DC2 colours' mean and covariance), the PIT
  batch test (uniform PITs) and the prediction-drift KS (Gaussian predictions), each against
  ``alpha``; the MMD and KS both with a fresh reference per batch (the unconditional rate, exact for
  the permutation test) and with one fixed reference of 10,000 (the rate a deployment sees, which
  carries that reference's own sampling error);
- ``run_length``: in-control average run lengths of the CUSUM and Page-Hinkley detectors on the PIT
  mean and dispersion z-scores of uniform batches, against the configured ARL;
- ``martingale_false_alarm``: the share of null streams whose conformal test martingale (on
  ``|PIT - 1/2|``) ever reached 10 and 100 (Ville: at most 0.1 and 0.01);
- ``delay``: detection delays (batches of 1,000 after the change; 1 = the first changed batch)
  after ``--warmup`` calm batches, for p(z) widths shrunk by 25% and 10% and a 0.1-sigma bias, for
  the CUSUMs (mean and dispersion, each at the configured ARL) and the martingales (width and
  shift, each at 200, as CalibrationDriftMonitor runs them) (Gaussian predictive distributions:
  PIT = Phi(a Z + b));
- ``mmd_power``: the share of batches of 500 in which the MMD (and KS) flags a 0.2-sigma shift of
  one feature, on DC2 photometry and on an isotropic 6-D Gaussian;
- ``zeropoint``: batches of 1,000 DC2 galaxies (colours and the i magnitude) after a 0.02 mag
  offset of the i band: the delay until any covariate detector alarms;
- ``runtime``: seconds per 1,000-object batch for each monitor's science (2 threads);
- ``restart``: a stream run in two halves through a JSON state equals the uninterrupted run.

Usage::

    python benchmarks/drift.py                 # about 10 minutes on 2 cores
    python benchmarks/drift.py --quick         # a smaller look
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import stats


def emit(record: dict) -> None:
    print(json.dumps(record, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)), flush=True)


def dc2_photometry():
    from calipers.core.catalog import read_columns

    bands = list("ugrizy")
    c = read_columns("pkg://rail/examples_data/testdata/test_dc2_validation_9816.hdf5", "photometry",
                     [f"mag_{b}_lsst" for b in bands])
    m = np.stack([c[f"mag_{b}_lsst"] for b in bands], 1)
    return m[np.all(m < 40, 1)], [f"mag_{b}_lsst" for b in bands]


def colours(m, names):
    from calipers.monitor.covariate import colour_features

    return colour_features(m, names, anchor="mag_i_lsst")[0]


def main() -> None:
    from calipers.monitor.calibration import pit_batch_alarm, pit_batch_statistics
    from calipers.monitor.covariate import ks_bonferroni, mean_shift_z, mmd_drift, prediction_drift
    from calipers.monitor.martingale import ConformalTestMartingale
    from calipers.monitor.sequential import Cusum, PageHinkley

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--null-batches", type=int, default=1000)
    ap.add_argument("--arl", type=float, default=100.0)
    ap.add_argument("--streams", type=int, default=300, help="null streams for the run lengths")
    ap.add_argument("--martingale-streams", type=int, default=200)
    ap.add_argument("--martingale-batches", type=int, default=30)
    ap.add_argument("--delay-reps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--power-trials", type=int, default=200)
    ap.add_argument("--zp-streams", type=int, default=50)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=22)
    a = ap.parse_args()
    if a.quick:
        a.null_batches, a.streams, a.martingale_streams, a.delay_reps, a.power_trials, a.zp_streams = 100, 60, 40, 20, 40, 10
    import torch

    torch.set_num_threads(2)
    rng = np.random.default_rng(a.seed)
    alpha, n = a.alpha, 1000
    mags, names = dc2_photometry()
    col = colours(mags, names)
    mu_c, cov_c = col.mean(0), np.cov(col.T)

    # --- per-batch false alarms -----------------------------------------------------------------
    def population(size):
        return rng.multivariate_normal(mu_c, cov_c, size)

    fixed_ref = population(10_000)
    fresh = {"mmd": [], "ks": []}
    fixed = {"mmd": [], "ks": []}
    pit_alarm, pred_alarm = [], []
    ref_point, ref_width = rng.uniform(0.2, 2.5, 10_000), rng.lognormal(-2.5, 0.3, 10_000)
    for b in range(a.null_batches):
        x = population(n)
        ref = population(10_000)
        fresh["mmd"].append(mmd_drift(ref, x, alpha, 200, 1000, seed=[a.seed, b])["alarm"])
        fresh["ks"].append(ks_bonferroni(ref, x, alpha)["alarm"])
        fixed["mmd"].append(mmd_drift(fixed_ref, x, alpha, 200, 1000, seed=[a.seed, b])["alarm"])
        fixed["ks"].append(ks_bonferroni(fixed_ref, x, alpha)["alarm"])
        pit_alarm.append(pit_batch_alarm(pit_batch_statistics(rng.random(n)), alpha))
        pred_alarm.append(prediction_drift(ref_point, ref_width, rng.uniform(0.2, 2.5, n),
                                           rng.lognormal(-2.5, 0.3, n), alpha)["alarm"])
    for test in ("mmd", "ks"):
        emit({"benchmark": "drift", "what": "false_alarm", "test": test, "reference": "fresh per batch",
              "n_batches": a.null_batches, "batch_size": n, "rate": float(np.mean(fresh[test])), "alpha": alpha})
        emit({"benchmark": "drift", "what": "false_alarm", "test": test, "reference": "one fixed, 10,000 rows",
              "n_batches": a.null_batches, "batch_size": n, "rate": float(np.mean(fixed[test])), "alpha": alpha})
    emit({"benchmark": "drift", "what": "false_alarm", "test": "pit_batch", "n_batches": a.null_batches,
          "batch_size": n, "rate": float(np.mean(pit_alarm)), "alpha": alpha})
    emit({"benchmark": "drift", "what": "false_alarm", "test": "prediction_ks", "n_batches": a.null_batches,
          "batch_size": n, "rate": float(np.mean(pred_alarm)), "alpha": alpha})

    # --- run lengths of the sequential detectors ---------------------------------------------------
    horizon = int(10 * a.arl)
    for stat in ("z_mean", "z_dispersion"):
        for name, make in (("cusum", lambda: Cusum(k=0.5, arl=a.arl)), ("page_hinkley", lambda: PageHinkley(arl=a.arl))):
            rl = []
            for s in range(a.streams):
                det, length = make(), horizon
                for t in range(horizon):
                    if det.update([pit_batch_statistics(rng.random(n))[stat]])[0]["alarm"]:
                        length = t + 1
                        break
                rl.append(length)
            emit({"benchmark": "drift", "what": "run_length", "detector": name, "statistic": stat,
                  "configured_arl": a.arl, "mean_run_length": float(np.mean(rl)),
                  "ratio": float(np.mean(rl) / a.arl), "stderr": float(np.std(rl) / np.sqrt(len(rl))),
                  "n_streams": a.streams, "censored": int(np.sum(np.array(rl) == horizon))})

    # --- martingale: false alarm over whole null streams --------------------------------------------
    peak = []
    t0 = time.perf_counter()
    for s in range(a.martingale_streams):
        ctm = ConformalTestMartingale(threshold=100.0, seed=s)
        ctm.add_reference(np.abs(rng.random(5000) - 0.5))
        for b in range(a.martingale_batches):
            ctm.update(np.abs(rng.random(n) - 0.5), b)
        peak.append(ctm.max_log10)
    peak = np.array(peak)
    emit({"benchmark": "drift", "what": "martingale_false_alarm", "n_streams": a.martingale_streams,
          "batches_per_stream": a.martingale_batches, "batch_size": n,
          "share_reached_10": float(np.mean(peak >= 1)), "bound_10": 0.1,
          "share_reached_100": float(np.mean(peak >= 2)), "bound_100": 0.01,
          "seconds_per_batch": round((time.perf_counter() - t0) / (a.martingale_streams * a.martingale_batches), 4)})

    # --- detection delays on p(z) calibration -------------------------------------------------------
    def pit_batch(scale=1.0, bias=0.0):
        return stats.norm.cdf(scale * rng.normal(size=n) + bias)

    for label, scale, bias in (("width shrink 25%", 1 / 0.75, 0.0), ("width shrink 10%", 1 / 0.9, 0.0),
                               ("bias 0.1 sigma", 1.0, 0.1)):
        delays = {"cusum": [], "martingale": []}
        early = {"cusum": 0, "martingale": 0}
        for r in range(a.delay_reps):
            cm, cd = Cusum(k=0.5, arl=a.arl), Cusum(k=0.5, arl=a.arl)
            # as CalibrationDriftMonitor: a width and a shift martingale, each at 200 (together <= 1/100)
            ref_u = rng.random(5000)
            ctw = ConformalTestMartingale(threshold=200.0, seed=1000 + r)
            cts = ConformalTestMartingale(threshold=200.0, high=1.0, seed=5000 + r)
            ctw.add_reference(np.abs(ref_u - 0.5))
            cts.add_reference(ref_u)
            hit = {"cusum": None, "martingale": None}
            for b in range(a.warmup + 50):
                drift = b >= a.warmup
                u = pit_batch(scale, bias) if drift else rng.random(n)
                st = pit_batch_statistics(u)
                c_alarm = cm.update([st["z_mean"]])[0]["alarm"] | cd.update([st["z_dispersion"]])[0]["alarm"]
                m_alarm = ctw.update(np.abs(u - 0.5), b)["alarm"] | cts.update(u, b)["alarm"]
                for k, fired in (("cusum", c_alarm), ("martingale", m_alarm)):
                    if fired and hit[k] is None:
                        hit[k] = b
                if hit["cusum"] is not None and hit["martingale"] is not None:
                    break
            for k in hit:
                if hit[k] is not None and hit[k] < a.warmup:
                    early[k] += 1
                else:
                    delays[k].append((hit[k] - a.warmup + 1) if hit[k] is not None else np.inf)
        for k in delays:
            d = np.array(delays[k])
            emit({"benchmark": "drift", "what": "delay", "change": label, "detector": k, "batch_size": n,
                  "median_delay_batches": float(np.median(d)), "p90_delay_batches": float(np.percentile(d, 90)),
                  "not_detected_in_50": int(np.sum(~np.isfinite(d))), "alarmed_before_the_change": early[k],
                  "n_reps": a.delay_reps, "warmup_batches": a.warmup})

    # --- MMD power: a 0.2-sigma shift of one feature at n = 500 ---------------------------------------
    perm = rng.permutation(len(mags))
    ref_dc2, pool = mags[perm[:9000]], mags[perm[9000:]]
    for data_name in ("DC2 magnitudes", "isotropic Gaussian, 6-D"):
        hits = {"mmd": [], "ks": []}
        null_hits = {"mmd": [], "ks": []}
        for t in range(a.power_trials):
            if data_name.startswith("DC2"):
                ref = ref_dc2
                x = pool[rng.choice(len(pool), 500, replace=False)]
                sd = ref_dc2[:, 3].std()
            else:
                ref, x, sd = rng.normal(size=(9000, 6)), rng.normal(size=(500, 6)), 1.0
            shifted = x.copy()
            shifted[:, 3] += 0.2 * sd
            hits["mmd"].append(mmd_drift(ref, shifted, alpha, 200, 1000, seed=[a.seed, t])["alarm"])
            hits["ks"].append(ks_bonferroni(ref, shifted, alpha)["alarm"])
            null_hits["mmd"].append(mmd_drift(ref, x, alpha, 200, 1000, seed=[a.seed, t])["alarm"])
            null_hits["ks"].append(ks_bonferroni(ref, x, alpha)["alarm"])
        emit({"benchmark": "drift", "what": "mmd_power", "data": data_name, "shift_sigma": 0.2, "feature": 3,
              "batch_size": 500, "n_trials": a.power_trials, "power_mmd": float(np.mean(hits["mmd"])),
              "power_ks": float(np.mean(hits["ks"])), "null_rate_mmd": float(np.mean(null_hits["mmd"])),
              "null_rate_ks": float(np.mean(null_hits["ks"]))})

    # --- zero-point offset of 0.02 mag in the i band, DC2 colours + i ---------------------------------
    ref_c = colours(ref_dc2, names)
    delays, early = {"mmd": [], "ks": [], "page_hinkley": [], "any": []}, {"mmd": 0, "ks": 0, "page_hinkley": 0, "any": 0}
    warm = 5
    for s in range(a.zp_streams):
        ph = [PageHinkley(arl=a.arl * ref_c.shape[1]) for _ in range(ref_c.shape[1])]
        hit = {k: None for k in delays}
        for b in range(warm + 20):
            x = pool[rng.choice(len(pool), n, replace=False)].copy()
            if b >= warm:
                x[:, 3] += 0.02
            xc = colours(x, names)
            fired = {"mmd": mmd_drift(ref_c, xc, alpha, 200, 1000, seed=[a.seed, s, b])["alarm"],
                     "ks": ks_bonferroni(ref_c, xc, alpha)["alarm"],
                     "page_hinkley": any(d.update([z])[0]["alarm"] for d, z in zip(ph, mean_shift_z(ref_c, xc)))}
            fired["any"] = any(fired.values())
            for k, f in fired.items():
                if f and hit[k] is None:
                    hit[k] = b
        for k in delays:
            if hit[k] is not None and hit[k] < warm:
                early[k] += 1
            else:
                delays[k].append((hit[k] - warm + 1) if hit[k] is not None else np.inf)
    for k, d in delays.items():
        d = np.array(d)
        emit({"benchmark": "drift", "what": "zeropoint", "offset_mag": 0.02, "band": "i", "detector": k,
              "features": "DC2 colours + i", "batch_size": n, "median_delay_batches": float(np.median(d)),
              "share_within_3": float(np.mean(d <= 3)), "not_detected_in_20": int(np.sum(~np.isfinite(d))),
              "alarmed_before_the_change": early[k], "n_streams": a.zp_streams})

    # --- runtime per 1,000-object batch -----------------------------------------------------------------
    x = pool[rng.choice(len(pool), n, replace=False)]
    xc = colours(x, names)
    t0 = time.perf_counter()
    reps = 10
    for r in range(reps):
        mmd_drift(ref_c, xc, alpha, 200, 1000, seed=r)
        ks_bonferroni(ref_c, xc, alpha)
        mean_shift_z(ref_c, xc)
    t_cov = (time.perf_counter() - t0) / reps
    ctm = ConformalTestMartingale(seed=0)
    ctm.add_reference(np.abs(rng.random(10_000) - 0.5))
    cus = Cusum(arl=a.arl)
    t0 = time.perf_counter()
    for r in range(reps):
        u = rng.random(n)
        st = pit_batch_statistics(u)
        cus.update([st["z_dispersion"]])
        ctm.update(np.abs(u - 0.5), r)
        prediction_drift(ref_point, ref_width, rng.uniform(0.2, 2.5, n), rng.lognormal(-2.5, 0.3, n), alpha)
    t_cal = (time.perf_counter() - t0) / reps
    emit({"benchmark": "drift", "what": "runtime", "batch_size": n, "covariate_seconds": round(t_cov, 4),
          "calibration_seconds": round(t_cal, 4), "threads": 2})

    # --- restart: two halves through JSON equal one run ------------------------------------------------
    batches = [np.abs(rng.random(n) - 0.5) for _ in range(6)] + [np.abs(pit_batch(1 / 0.75) - 0.5) for _ in range(2)]
    whole = ConformalTestMartingale(seed=5)
    out_whole = [whole.update(u, b) for b, u in enumerate(batches)]
    half = ConformalTestMartingale(seed=5)
    out = [half.update(u, b) for b, u in enumerate(batches[:4])]
    half = ConformalTestMartingale.from_dict(json.loads(json.dumps(half.to_dict())))
    out += [half.update(u, b + 4) for b, u in enumerate(batches[4:])]
    emit({"benchmark": "drift", "what": "restart", "identical": out == out_whole,
          "alarm_batches": [b for b, o in enumerate(out) if o["alarm"]]})


if __name__ == "__main__":
    main()
