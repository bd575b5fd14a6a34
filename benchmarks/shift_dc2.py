"""Photo-z under a non-representative spectroscopic sample, on DC2: does shift-aware correction
restore calibration on the target, and do the support flags cover what it cannot?

Labelled sample: RAIL's DC2 training catalog after a spectroscopic selection
(:mod:`calipers.photoz.selection`):

- ``maglim``: magnitude-limited, i < 23.5 (a bright spec-z sample);
- ``deep2``: DEEP2-like colour targeting (18.5 < r < 24.1 and the DEEP2 high-z colour boxes,
  Newman et al. 2013, in LSST g, r, i);
- ``maglim_success``: i < 23.5 and a redshift-success probability falling with magnitude
  (logistic, 50% at i = 23, width 0.25);
- ``random``: a random subset of the same size as ``maglim`` (no shift; a control).

Target: RAIL's DC2 validation catalog; its redshifts are used only to score. The labelled sample
is split (seeded) 70/30 into training and calibration parts. Support: a
:class:`~calipers.validate.support.KNNSupport` of the training part (k = 10, level
``--support-level``, default 0.99) flags
target galaxies outside it (``ood``). Importance weights w(x) = p_target(x) / p_labelled(x):
a cross-fitted logistic classifier (degree-2 polynomial features) on magnitudes and adjacent
colours, labelled vs the *supported* target (the weights target what the sample can support;
the flags cover the rest), clipped at the 99th percentile.

Variants, each calibrated by global PIT recalibration, by the local (photometry-conditioned) PIT
recalibration of the pipeline (``pit_local``: 5 components, 3 members, features = magnitudes and
adjacent colours) and by the conformal predictive distribution (all fitted on the calibration part):

- ``none``: unweighted training and calibration (the usual pipeline);
- ``weighted_calibration``: unweighted training, importance-weighted calibration
  (weighted PIT quantiles; importance-weighted local PIT likelihood; weighted conformal with
  each target galaxy's own weight, Tibshirani et al. 2019);
- ``weighted_both``: importance-weighted training and calibration.

Scored with the neutral metrics of ``benchmarks/pzmetrics.py`` on the whole target, on the
supported target, and per i-magnitude bin, plus the n(z) mean offset per tomographic bin
(galaxies binned by the calibrated p(z)'s median; offset = mean of the stacked p(z) - mean true z).
Also: the covariate-shift tests (MMD and classifier two-sample test, labelled vs target) on each
selection, and their false-alarm rate on ``--null-splits`` random labelled subsets.

    python benchmarks/shift_dc2.py                      # all cases, ~25 min on 2 cores
    python benchmarks/shift_dc2.py --cases maglim --null-splits 0
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from pzmetrics import ZGRID, metrics  # noqa: E402

TESTDATA = "pkg://rail/examples_data/testdata/"
TRAIN = TESTDATA + "test_dc2_training_9816.hdf5"
TEST = TESTDATA + "test_dc2_validation_9816.hdf5"
BANDS = ["u", "g", "r", "i", "z", "y"]
IMAG_EDGES = [-np.inf, 22.0, 23.0, 23.5, 24.0, 24.5, 25.0, np.inf]
TOMO_EDGES = [0.0, 0.5, 0.8, 1.1, 1.5, 3.0]


def load(path: str):
    from calipers.core.catalog import read_columns
    from calipers.core.paths import resolve_path

    cols = read_columns(resolve_path(path), "photometry",
                        [f"mag_{b}_lsst" for b in BANDS] + [f"mag_err_{b}_lsst" for b in BANDS] + ["redshift"])
    mags = np.stack([cols[f"mag_{b}_lsst"] for b in BANDS], 1)
    errs = np.stack([cols[f"mag_err_{b}_lsst"] for b in BANDS], 1)
    return mags, errs, np.asarray(cols["redshift"], dtype=float)


def selection(case: str, mags: np.ndarray, seed: int, size: int | None = None) -> np.ndarray:
    from calipers.photoz.selection import LogisticSuccess, MagnitudeLimit, SpecSelection, survey_targeting

    if case == "random":
        rng = np.random.default_rng([seed, 99])
        keep = np.zeros(len(mags), bool)
        keep[rng.choice(len(mags), size=size, replace=False)] = True
        return keep
    cuts, success = {"maglim": ((MagnitudeLimit("i", faint=23.5),), ()),
                     "maglim_success": ((MagnitudeLimit("i", faint=23.5),), (LogisticSuccess("i", 23.0, 0.25),)),
                     "deep2": ((survey_targeting("deep2"),), ())}[case]
    return SpecSelection(cuts=cuts, success=success).select(mags, seed, bands=BANDS).mask


def grid(ens, mags, errs) -> np.ndarray:
    from calipers.photoz import mixture_pdf

    w, mu, s = ens.predict(mags, errs)
    p = np.concatenate([mixture_pdf(w[i:i + 2000], mu[i:i + 2000], s[i:i + 2000], ZGRID)
                        for i in range(0, len(w), 2000)])
    p = np.clip(p, 0, None)
    return p / np.trapezoid(p, ZGRID, axis=1)[:, None]


def scores(pdfs: np.ndarray, z: np.ndarray) -> dict:
    keep = ("cov68", "cov95", "pit_ks", "cde_loss", "crps", "outlier_015")
    if len(z) < 20:
        return {"n": int(len(z))}
    m = metrics(pdfs, z)
    return {"n": int(len(z))} | {k: round(float(m[k]), 5) for k in keep}


def nz_offsets(pdfs: np.ndarray, z: np.ndarray) -> list:
    from calipers.gridpdf import grid_quantiles

    median = grid_quantiles(pdfs, ZGRID, [0.5])[:, 0]
    out = []
    for lo, hi in zip(TOMO_EDGES[:-1], TOMO_EDGES[1:]):
        sel = (median >= lo) & (median < hi)
        if sel.sum() < 20:
            out.append(None)
            continue
        stacked = pdfs[sel].mean(0)
        out.append(round(float(np.trapezoid(stacked * ZGRID, ZGRID) / np.trapezoid(stacked, ZGRID) - z[sel].mean()), 5))
    return out


def train(mags, errs, z, cfg, weights=None):
    from calipers.photoz import DeepEnsemble, EnsembleConfig

    return DeepEnsemble(EnsembleConfig(**cfg)).fit(mags, errs, z, bands=BANDS, progress=False, weights=weights)


def shift_tests(x_labelled, x_target, seed):
    from calipers.validate.shift import classifier_two_sample_test, mmd_test

    return (mmd_test(x_labelled, x_target, seed=seed).p_value,
            classifier_two_sample_test(x_labelled, x_target, seed=seed).p_value)


def run_case(case, data, target, cfg, seed, null_size=None, support_level=0.99) -> list[dict]:
    from calipers.calibrate import ConformalPredictiveDistribution, PITRecalibrator
    from calipers.calibrate.local import LocalPITConfig, LocalPITRecalibrator
    from calipers.calibrate.shift_weights import DensityRatio, photometry_shift_features
    from calipers.gridpdf import cdf_at
    from calipers.photoz import PhotometryPreprocessor
    from calipers.validate.support import KNNSupport

    mags, errs, z = data
    tm, te, tz = target
    keep = selection(case, mags, seed, null_size)
    lm, le, lz = mags[keep], errs[keep], z[keep]
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(lz))
    n_cal = int(round(0.3 * len(lz)))
    cal, tr = order[:n_cal], order[n_cal:]
    prep = PhotometryPreprocessor(BANDS).fit(lm[tr], le[tr])
    xl, xt = photometry_shift_features(lm, le, prep), photometry_shift_features(tm, te, prep)
    t0 = time.perf_counter()
    p_mmd, p_c2st = shift_tests(xl, xt, seed)
    support = KNNSupport(10, support_level).fit(xl[tr])
    ood = support.ood(xt)
    inside = ~ood
    ratio = DensityRatio(method="classifier", classifier="logistic", degree=2, clip_quantile=0.99,
                         min_ess_fraction=0.0, seed=seed).fit(xl, xt[inside])
    w_lab, w_tgt = ratio.labelled_weights, ratio.weights(xt)
    imag = np.where(np.abs(tm[:, 3]) < 90, tm[:, 3], np.inf)
    head = {"case": case, "seed": seed, "support_level": support_level, "n_labelled": int(keep.sum()), "n_train": len(tr), "n_calibration": len(cal),
            "median_z_labelled": round(float(np.median(lz)), 4), "median_z_target": round(float(np.median(tz)), 4),
            "mmd_p": round(float(p_mmd), 5), "c2st_p": round(float(p_c2st), 5),
            "ood_fraction": round(float(ood.mean()), 5), "ess_fraction": round(float(ratio.report.ess_fraction), 4),
            "weights_s": round(time.perf_counter() - t0, 1)}
    rows = []
    models = {}
    for variant in ("none", "weighted_calibration", "weighted_both"):
        weighted_training = variant == "weighted_both"
        if weighted_training not in models:
            t1 = time.perf_counter()
            ens = train(lm[tr], le[tr], lz[tr], cfg, w_lab[tr] if weighted_training else None)
            models[weighted_training] = (ens, time.perf_counter() - t1, grid(ens, lm[cal], le[cal]), grid(ens, tm, te))
        ens, train_s, p_cal, p_tgt = models[weighted_training]
        pit_cal = cdf_at(p_cal, ZGRID, lz[cal])
        wc = None if variant == "none" else w_lab[cal] * len(cal) / w_lab[cal].sum()
        local = LocalPITRecalibrator(LocalPITConfig(n_components=5, n_members=3, seed=seed)).fit(
            xl[cal], pit_cal, weights=wc)
        calibrated = {"raw": p_tgt,
                      "pit_global": PITRecalibrator().fit(pit_cal, weights=wc).transform_pdfs(p_tgt, ZGRID),
                      "pit_local": local.transform_pdfs(p_tgt, ZGRID, xt),
                      "conformal": ConformalPredictiveDistribution().fit(pit_cal, weights=wc).transform_pdfs(
                          p_tgt, ZGRID, test_weights=None if wc is None else w_tgt)}
        for method, p in calibrated.items():
            if method == "raw" and variant == "weighted_calibration":
                continue  # the same p(z) as variant none
            row = head | {"variant": variant if method != "raw" else ("raw" if variant == "none" else "raw_weighted_training"),
                          "calibration": method, "train_s": round(train_s, 1),
                          "whole_target": scores(p, tz), "supported_target": scores(p[inside], tz[inside]),
                          "by_imag": {f"{lo}-{hi}": scores(p[(imag >= lo) & (imag < hi)], tz[(imag >= lo) & (imag < hi)])
                                      for lo, hi in zip(IMAG_EDGES[:-1], IMAG_EDGES[1:])},
                          "nz_mean_offset_whole": nz_offsets(p, tz),
                          "nz_mean_offset_supported": nz_offsets(p[inside], tz[inside])}
            for part in ("whole_target", "supported_target"):
                s = row[part]
                if "cov68" in s:
                    s["meets_coverage_goal"] = bool(abs(s["cov68"] - 0.68) <= 0.02 and abs(s["cov95"] - 0.95) <= 0.02)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["maglim", "deep2", "maglim_success", "random"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--null-splits", type=int, default=20, help="random labelled subsets for the shift tests' false alarms")
    p.add_argument("--config", default=os.path.join(ROOT, "stages", "photoz.yml"))
    p.add_argument("--train-overrides", default="{}", help="JSON overriding the PZInform settings")
    p.add_argument("--support-level", type=float, default=0.99, help="level of the kNN support region (ood flags)")
    a = p.parse_args()
    from calipers.photoz import EnsembleConfig

    with open(a.config) as fh:
        inform = yaml.safe_load(fh)["PZInform"]
    cfg = {k: inform[k] for k in EnsembleConfig.__dataclass_fields__ if k in inform} | json.loads(a.train_overrides)
    cfg["seed"] = a.seed
    data, target = load(TRAIN), load(TEST)
    n_maglim = int(selection("maglim", data[0], a.seed).sum())
    print(json.dumps({"benchmark": "shift_dc2", "train_config": cfg, "n_pool": len(data[2]), "n_target": len(target[2])}),
          flush=True)
    for case in a.cases:
        run_case(case, data, target, cfg, a.seed, null_size=n_maglim, support_level=a.support_level)
    if a.null_splits:
        from calipers.calibrate.shift_weights import photometry_shift_features
        from calipers.photoz import PhotometryPreprocessor

        mags, errs, _ = data
        alarms = {"mmd": 0, "c2st": 0, "either": 0}
        pvals = []
        for split in range(a.null_splits):
            keep = selection("random", mags, 1000 + split, n_maglim)
            prep = PhotometryPreprocessor(BANDS).fit(mags[keep], errs[keep])
            xl = photometry_shift_features(mags[keep], errs[keep], prep)
            xt = photometry_shift_features(*target[:2], prep)
            p_mmd, p_c2st = shift_tests(xl, xt, split)
            pvals.append((round(float(p_mmd), 4), round(float(p_c2st), 4)))
            alarms["mmd"] += p_mmd < 0.01
            alarms["c2st"] += p_c2st < 0.01
            alarms["either"] += (p_mmd < 0.01) or (p_c2st < 0.01)
        print(json.dumps({"null_splits": a.null_splits, "subset_size": n_maglim, "false_alarms_p_below_0.01": alarms,
                          "p_values_mmd_c2st": pvals}), flush=True)


if __name__ == "__main__":
    main()
