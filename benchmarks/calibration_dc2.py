"""Calibration on DC2: before/after metrics on held-out galaxies, one JSON line per method.

Trains the photo-z ensemble on the DC2 training file (the pipeline's stage config, through the
``PZInform`` stage) and estimates p(z) for all 20,449 galaxies of the DC2 validation file
(``PZEstimate``). The calibrators are then fitted in one of two ways:

- ``--calibrate-on training-oof`` (default): **out-of-fold predictions on every training row**.
  The training catalog is split at random (seeded) into ``--folds`` folds; for each fold an
  ensemble with the same configuration is trained on the other folds and predicts the fold, so
  each of the ~10k training galaxies gets a p(z) from a model that never saw it. The calibrators
  are fitted on these and applied to the validation p(z) of the model trained on all rows; the
  validation catalog is never used for fitting anything.
- ``--calibrate-on validation-crossfit``: the validation galaxies are split into halves A and B;
  a calibrator fitted on A is applied to B and one fitted on B to A.

Metrics (benchmarks/pzmetrics.py, plus the ECE of interval probabilities and the local coverage
test) use all 20k validation galaxies; ``mean_z_shift`` is the mean over galaxies of the change of
each p(z)'s mean redshift by the calibration (the DESC Y1 requirement on a bin's mean redshift is
0.002(1+z)).

Methods: none, pit_global, pit_local (conditioned on magnitudes and adjacent colours), conformal
(split-conformal predictive distribution).

    python benchmarks/calibration_dc2.py [--model DIR] [--n-null 20] [--oof-cache oof.npz]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from photoz_dc2 import TEST, TRAIN, grid_pdfs_chunked  # noqa: E402
from pzmetrics import ZGRID, metrics  # noqa: E402

BANDS = list("ugrizy")
EDGES = [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 2.0, 3.0]


def photometry_features(mags, errs, fit_rows):
    """Cleaned magnitudes + adjacent colours, as PZCalibrate's pit_local builds them
    (:func:`calipers.core.features.photometry_features`), with the non-detection fill values
    fitted on the calibration rows."""
    from calipers.core.features import photometry_features as features
    from calipers.photoz.preprocess import PhotometryPreprocessor

    return features(mags, errs, PhotometryPreprocessor(BANDS).fit(mags[fit_rows], errs[fit_rows]))


def read_dc2(name: str):
    """(redshift, magnitudes, errors) of a DC2 test catalog, bands in BANDS order."""
    from calipers.core.catalog import read_columns
    from calipers.core.paths import resolve_path

    cols = read_columns(resolve_path(name), "photometry", [f"mag_{b}_lsst" for b in BANDS]
                        + [f"mag_err_{b}_lsst" for b in BANDS] + ["redshift"])
    stack = lambda fmt: np.stack([cols[fmt.format(b)] for b in BANDS], 1).astype(np.float32)  # noqa: E731
    return np.asarray(cols["redshift"], dtype=float), stack("mag_{}_lsst"), stack("mag_err_{}_lsst")


def out_of_fold_pdfs(inform_cfg: dict, mags, errs, z, n_folds: int, seed: int) -> np.ndarray:
    """p(z) on ZGRID for every row, each from an ensemble (the stage's configuration) trained on
    the other folds of a seeded random split (the DC2 training file is sorted by redshift)."""
    from calipers.photoz import DeepEnsemble, EnsembleConfig, mixture_to_qp

    cfg = {k: v for k, v in inform_cfg.items() if k in EnsembleConfig.__dataclass_fields__}
    fold = np.random.default_rng([seed, 2]).permutation(len(z)) % n_folds
    out = np.empty((len(z), len(ZGRID)))
    for k in range(n_folds):
        t0 = time.time()
        held = fold == k
        ens = DeepEnsemble(EnsembleConfig(**cfg)).fit(mags[~held], errs[~held], z[~held], BANDS, progress=False)
        out[held] = grid_pdfs_chunked(mixture_to_qp(*ens.predict(mags[held], errs[held])))
        print(f"out-of-fold p(z): fold {k + 1}/{n_folds} ({held.sum()} rows) in {time.time() - t0:.0f} s",
              file=sys.stderr, flush=True)
    return out


def main() -> None:
    import qp
    import yaml

    from calipers.calibrate import (ConformalPredictiveDistribution, LocalPITConfig, LocalPITRecalibrator,
                                    PITRecalibrator)
    from calipers.validate.classification import interval_outcomes, interval_probabilities, reliability
    from calipers.validate.local_coverage import local_coverage_test
    from calipers.validate.metrics import grid_point_estimates, pit_values

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="reuse a trained model directory")
    p.add_argument("--config", default=os.path.join(os.path.dirname(HERE), "stages", "photoz.yml"))
    p.add_argument("--seed", type=int, default=0, help="seed of the A/B split and of the calibrators")
    p.add_argument("--n-null", type=int, default=20, help="null refits of the local coverage test")
    p.add_argument("--calibrate-on", choices=["training-oof", "validation-crossfit"], default="training-oof",
                   help="what the calibrators are fitted on (see above)")
    p.add_argument("--folds", type=int, default=5, help="folds of the out-of-fold training predictions")
    p.add_argument("--oof-cache", default=None, help="npz file: reuse out-of-fold p(z) stored there, or store them")
    a = p.parse_args()
    with open(a.config) as fh:
        stage_cfg = yaml.safe_load(fh)
    work = tempfile.mkdtemp(prefix="calipers_calib_")
    py = [sys.executable, "-m", "calipers"]
    model = a.model or os.path.join(work, "model")
    if a.model is None:
        print("training the photo-z ensemble (PZInform) ...", file=sys.stderr, flush=True)
        subprocess.run(py + ["PZInform", f"--training_catalog={TRAIN}", f"--config={a.config}", f"--model={model}"],
                       check=True, capture_output=True)
    pz = os.path.join(work, "pz.hdf5")
    subprocess.run(py + ["PZEstimate", f"--model={model}", f"--catalog={TEST}", f"--config={a.config}", f"--pz={pz}"],
                   check=True, capture_output=True)
    z, mags, errs = read_dc2(TEST)
    pdfs = grid_pdfs_chunked(qp.read(pz))
    pit = pit_values(pdfs, ZGRID, z)
    half = np.random.default_rng(a.seed).random(len(z)) < 0.5
    folds = ((half, ~half), (~half, half))
    # features of the local coverage test: i magnitude and adjacent colours (fill values from all rows)
    test_features = photometry_features(mags, errs, np.ones(len(z), bool))[:, [3, 6, 7, 8, 9, 10]]
    local_cfg = stage_cfg.get("PZCalibrate", {})

    if a.calibrate_on == "training-oof":
        z_cal, mags_cal, errs_cal = read_dc2(TRAIN)
        if a.oof_cache and os.path.exists(a.oof_cache):
            pdfs_cal = np.load(a.oof_cache)["pdfs"]
            print(f"out-of-fold p(z) from {a.oof_cache}", file=sys.stderr, flush=True)
        else:
            pdfs_cal = out_of_fold_pdfs(stage_cfg.get("PZInform", {}), mags_cal, errs_cal, z_cal, a.folds, a.seed)
            if a.oof_cache:
                np.savez(a.oof_cache, pdfs=pdfs_cal)
        pit_cal = pit_values(pdfs_cal, ZGRID, z_cal)
        ok = np.isfinite(pit_cal)  # a p(z) with no mass on the grid has no PIT: counted, not fitted
        if not ok.all():
            print(f"{(~ok).sum()} training rows without a PIT (no p(z) mass on the grid) left out",
                  file=sys.stderr, flush=True)
        # pit_local features of calibration (training) and target (validation) rows, fill values
        # fitted on the calibration rows only
        both = photometry_features(np.vstack([mags_cal, mags]), np.vstack([errs_cal, errs]),
                                   np.arange(len(z_cal) + len(z)) < len(z_cal))
        x_cal, x_val = both[:len(z_cal)][ok], both[len(z_cal):]
        pit_cal = pit_cal[ok]
        protocol = (f"fitted on out-of-fold p(z) of {ok.sum()} of the {len(z_cal)} training rows ({a.folds} folds, "
                    f"{(~ok).sum()} without a PIT)")
    else:
        protocol = "cross-fitted on 2 random halves of the validation rows"

    zmean_raw = grid_point_estimates(pdfs, ZGRID, ["zmean"])["zmean"]

    def line(method, p_cal, seconds=0.0):
        m = {k: round(float(v), 5) for k, v in metrics(p_cal, z).items()}
        # how far calibration moves the p(z): mean of each galaxy's calibrated - raw mean redshift
        m["mean_z_shift"] = round(float(np.mean(grid_point_estimates(p_cal, ZGRID, ["zmean"])["zmean"] - zmean_raw)), 5)
        rel = reliability(interval_probabilities(p_cal, ZGRID, EDGES).ravel(), interval_outcomes(z, EDGES).ravel(), 10)
        lct = local_coverage_test(test_features, pit_values(p_cal, ZGRID, z), n_null=a.n_null, seed=a.seed)
        m |= {"ece": round(rel["ece"], 5), "local_coverage_p": round(lct.p_value, 4),
              "local_coverage_stats": [round(v, 6) for v in lct.statistics],
              "local_coverage_null_mean": [round(v, 6) for v in lct.null_mean], "fit_apply_s": round(seconds, 1)}
        print(json.dumps({"method": method, "n_scored": len(z), "calibration": a.calibrate_on} | m), flush=True)

    def crossfit(fit_apply):
        out = np.empty_like(pdfs)
        t0 = time.time()
        for fit, apply in folds:
            out[apply] = fit_apply(fit, apply)
        return out, time.time() - t0

    def timed(f, *args):
        t0 = time.time()
        out = f(*args)
        return out, time.time() - t0

    n_knots = local_cfg.get("n_knots", 100)
    local_config = LocalPITConfig(n_components=local_cfg.get("n_components", 5),
                                  n_members=local_cfg.get("n_members", 3), seed=a.seed)
    line("none", pdfs)
    if a.calibrate_on == "training-oof":
        line("pit_global", *timed(lambda: PITRecalibrator(n_knots=n_knots).fit(pit_cal).transform_pdfs(pdfs, ZGRID)))
        line("pit_local", *timed(lambda: LocalPITRecalibrator(local_config).fit(x_cal, pit_cal)
                                 .transform_pdfs(pdfs, ZGRID, x_val)))
        line("conformal", *timed(lambda: ConformalPredictiveDistribution().fit(pit_cal).transform_pdfs(pdfs, ZGRID)))
    else:
        line("pit_global", *crossfit(lambda f, t: PITRecalibrator(n_knots=n_knots)
                                     .fit(pit[f]).transform_pdfs(pdfs[t], ZGRID)))

        def local(f, t):
            x = photometry_features(mags, errs, f)
            return LocalPITRecalibrator(local_config).fit(x[f], pit[f]).transform_pdfs(pdfs[t], ZGRID, x[t])

        line("pit_local", *crossfit(local))
        line("conformal", *crossfit(lambda f, t: ConformalPredictiveDistribution().fit(pit[f])
                                    .transform_pdfs(pdfs[t], ZGRID)))
    print(json.dumps({"note": f"model {'given' if a.model else 'trained here'} (seed {stage_cfg.get('PZInform', {}).get('seed', 0)}); "
                      f"calibrators {protocol}; "
                      f"local_coverage_p: summed statistic over alpha = 0.16, 0.5, 0.84 against {a.n_null} uniform-PIT "
                      f"null refits (smallest possible {1 / (a.n_null + 1):.3f}); ece over intervals {EDGES}"}))


if __name__ == "__main__":
    main()
