"""Strong-lens finder benchmark (issue 18): the full pipeline, and a single-CNN baseline in the same run.

Runs ``pipelines/lens.yml`` (sizes from ``stages/lens.yml``, or scaled down with ``--scale``) into
``--out`` and prints JSON lines:

- ``ensemble``: the calibrated 5-member ensemble with 8-fold dihedral averaging on the test set
  (AUROC with bootstrap interval, ECE / NLL / Brier before and after calibration) and against the
  100,000 natural-mix negatives (TPR at FPR 1e-2, 1e-3, 1e-4 with Clopper-Pearson intervals;
  purity calibration at the deployment prevalence);
- ``baseline_single_cnn``: member 0 alone, one view (no dihedral averaging), uncalibrated, on the
  same images;
- ``members``: each member's AUROC (dihedral-averaged) against the ensemble's;
- ``fusion``: mean against inverse-MC-variance fusion on the calibration and test sets;
- ``deployment_calibration``: the slope and offset fitted at the deployment prevalence (with the
  30,000 calibration negatives) and the deployment-mixture NLL before and after;
- ``diversity``: correlation of member logits, disagreement near the threshold;
- ``selection_function``: completeness per PSF-FWHM bin (and the other strata), the FPR per
  contaminant class, the largest interval half-width of bins with >= 200 lenses, and whether the
  completeness rises with theta_E and with source brightness;
- ``timing``: wall time of every stage, the training time per member, the device.

Usage::

    python benchmarks/lens.py --out /tmp/lens_full            # the full run (1.5-2 h on 2 CPU cores)
    python benchmarks/lens.py --out /tmp/lens_small --scale 0.1 --n-members 2 --max-epochs 3
    python benchmarks/lens.py --out /tmp/lens_full --analyse-only
    python benchmarks/lens.py --out /tmp/lens_full --experiment seeds psf metadata --n-members 3

The last is the diversity experiment (generalists differing only in seed, PSF or depth
specialists, the metadata branch) on a run's own images, at a reduced size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM_STAGES = ["LensSimulateTrain", "LensSimulateCalibration", "LensSimulateCalibrationNegatives", "LensSimulateTest",
              "LensSimulateNegatives", "LensSimulateSelection"]


def emit(record: dict) -> None:
    print(json.dumps(record, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)), flush=True)


def prepare(out: str, scale: float, n_members: int | None, max_epochs: int | None, device: str | None) -> str:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(ROOT, "stages", "lens.yml")) as fh:
        config = yaml.safe_load(fh)
    if scale != 1.0:
        for stage in SIM_STAGES:
            config[stage]["n_images"] = max(256, int(round(config[stage]["n_images"] * scale)))
    if n_members:
        config["LensTrain"]["n_members"] = n_members
    if max_epochs:
        config["LensTrain"]["max_epochs"] = max_epochs
    if device:
        config["LensTrain"]["device"] = device
        for stage in ("LensScoreCalibration", "LensScoreCalibrationNegatives", "LensScoreTest", "LensScoreNegatives",
                      "LensScoreSelection"):
            config[stage]["device"] = device
    if scale < 1.0:  # a small run cannot resolve the full run's gate thresholds: report, do not stop
        config["ClassifierGate"]["on_fail"] = "warn"
    cfg_path = os.path.join(out, "stages_lens.yml")
    with open(cfg_path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    with open(os.path.join(ROOT, "pipelines", "lens.yml")) as fh:
        pipe = yaml.safe_load(fh)
    pipe.update(config=cfg_path, output_dir=os.path.join(out, "data"), log_dir=os.path.join(out, "logs"),
                resume=True)  # a rerun skips the stages whose outputs exist (e.g. the simulations)
    pipe_path = os.path.join(out, "pipeline_lens.yml")
    with open(pipe_path, "w") as fh:
        yaml.safe_dump(pipe, fh, sort_keys=False)
    return pipe_path


def stage_times(log_dir: str) -> dict:
    """Wall seconds of each stage, from the 'Stage complete: ... took X minutes' line ceci's
    stages write at the end of their logs (a stage skipped by a resumed run keeps its first time)."""
    import re

    out = {}
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name), errors="replace") as fh:
            took = re.findall(r"Stage complete: .* took ([0-9.]+) minutes", fh.read())
        if took:
            out[name.removesuffix(".out").removesuffix(".log")] = round(60 * float(took[-1]), 1)
    return out


def analyse(out: str) -> None:
    from calipers.core.class_predictions import read_class_predictions
    from calipers.core.provenance import read_json_object
    from calipers.lens.model import ensemble_diversity, fuse_members
    from calipers.validate import classification as cls
    from calipers.validate.classifier_evaluation import evaluate_classifier
    from calipers.validate.selection_function import is_monotone_increasing

    data = os.path.join(out, "data")
    test = read_class_predictions(os.path.join(data, "calibrated_test_predictions.hdf5"))
    negs = read_class_predictions(os.path.join(data, "calibrated_negative_predictions.hdf5"))
    calib = read_class_predictions(os.path.join(data, "calibration_predictions.hdf5"))
    labels = test.labels()
    prevalence = test.attrs["calibration"]["deployment_prevalence"]
    ev = evaluate_classifier(test.logit, labels, negs.logit, test_logit_uncalibrated=test.columns["logit_uncalibrated"],
                             test_logit_deploy=test.columns["logit_deploy"],
                             negative_logit_deploy=negs.columns["logit_deploy"], prevalence=prevalence)

    def tpr_rows(e):
        return {f"tpr_at_fpr_{r['fpr_target']:g}": {k: r.get(k) for k in ("tpr", "tpr_lo", "tpr_hi", "fpr", "threshold",
                                                                        "k_pos", "n_pos", "k_neg", "n_neg", "status")}
                for r in e.tpr_at_fpr}

    emit({"benchmark": "lens", "what": "ensemble", "n_test": ev.n_test, "n_test_lenses": ev.n_test_pos,
          "n_negatives": ev.n_negatives, "auroc": ev.auroc, "auroc_lo": ev.auroc_lo, "auroc_hi": ev.auroc_hi,
          **tpr_rows(ev), "ece_before": ev.calibration_before["ece"], "ece_after": ev.calibration["ece"],
          "mce_after": ev.calibration["mce"], "nll_before": ev.calibration_before["nll"],
          "nll_after": ev.calibration["nll"], "brier_before": ev.calibration_before["brier"],
          "brier_after": ev.calibration["brier"], "deployment_prevalence": prevalence,
          "purity_fraction_inside": ev.purity["fraction_inside"],
          "purity_bins": [{k: b.get(k) for k in ("predicted", "observed", "lo", "hi", "k_pos", "k_neg", "inside")}
                          for b in ev.purity["bins"]]})
    # baseline: member 0, the untransformed image, no calibration
    base = evaluate_classifier(test.columns["logit_single_view"], labels, negs.columns["logit_single_view"])
    emit({"benchmark": "lens", "what": "baseline_single_cnn", "auroc": base.auroc, "auroc_lo": base.auroc_lo,
          "auroc_hi": base.auroc_hi, **tpr_rows(base), "ece": base.calibration["ece"], "nll": base.calibration["nll"],
          "brier": base.calibration["brier"],
          "ratio_ensemble_to_baseline": {"one_minus_auroc": (1 - ev.auroc) / max(1 - base.auroc, 1e-12),
                                         "tpr_at_fpr_0.001": (ev.tpr_row(1e-3)["tpr"] or np.nan)
                                         / max(base.tpr_row(1e-3)["tpr"] or np.nan, 1e-12)}})
    member_auc = [float(cls.auroc(m, labels)) for m in test.member_logits]
    emit({"benchmark": "lens", "what": "members", "member_auroc": member_auc,
          "ensemble_auroc": float(cls.auroc(test.logit, labels)),
          "ensemble_ge_best_member": bool(cls.auroc(test.logit, labels) >= max(member_auc))})
    fus = {}
    for name, p in (("calibration", calib), ("test", test)):
        y = p.labels()
        for method in ("mean", "inverse_variance"):
            z = fuse_members(p.member_logits, p.member_logit_var, method)
            fus[f"{name}_{method}_auroc"] = float(cls.auroc(z, y))
    cal_spec = read_json_object(os.path.join(data, "calibrator.json"))
    fit = cal_spec["fit"]
    if cal_spec.get("stacking"):
        weights = np.asarray(cal_spec["stacking"]["weights"])
        fus["test_stacked_auroc"] = float(cls.auroc(weights @ test.member_logits, labels))
    emit({"benchmark": "lens", "what": "fusion", "chosen": cal_spec["fusion"],
          "calibration_stacked_auroc_cross_fitted": fit.get("auroc_stacked_fusion_cross_fitted"),
          "stacking_weights": fit.get("stacking_weights"), "temperature": fit.get("temperature"),
          "temperature_bias": fit.get("temperature_bias"), **fus})
    emit({"benchmark": "lens", "what": "deployment_calibration",
          **{k: cal_spec["fit"].get(k) for k in ("deployment_prevalence", "deployment_fit", "n_extra_negatives",
                                                 "deployment_slope", "deployment_offset",
                                                 "deployment_nll_prior_shift", "deployment_nll_affine")}})
    sf = read_json_object(os.path.join(data, "selection_function", "selection_function.json"))
    emit({"benchmark": "lens", "what": "diversity",
          **ensemble_diversity(test.member_logits, threshold=float(sf["threshold"]))})
    widths = [r["half_width"] for rows in sf["strata"].values() for r in rows
              if r["n"] >= 200 and r.get("half_width") is not None]
    two_d = []
    for t in sf.get("two_d", {}).values():
        n = np.asarray(t["n"], dtype=float)
        hw = (np.asarray(t["hi"], dtype=float) - np.asarray(t["lo"], dtype=float)) / 2
        two_d += list(hw[n >= 200])
    from calipers.validate.selection_function import SelectionFunction

    sfo = SelectionFunction.from_dict(sf)
    emit({"benchmark": "lens", "what": "selection_function", "fpr_target": sf["fpr_target"],
          "threshold_logit": sf["threshold"],
          "psf_fwhm_r": [{k: r.get(k) for k in ("edge_lo", "edge_hi", "n", "k", "completeness", "lo", "hi", "half_width", "status")}
                         for r in sf["strata"]["psf_fwhm_r"]],
          "fpr_by_class": sf["fpr_classes"],
          "max_half_width_n_ge_200_1d": max(widths) if widths else None,
          "max_half_width_n_ge_200_2d": float(max(two_d)) if two_d else None,
          "rises_with_theta_e": is_monotone_increasing(sfo.strata["theta_e"]),
          "rises_with_source_brightness": is_monotone_increasing(list(reversed(sfo.strata["source_mag_r"]))),
          "strata": sf["strata"]})
    model_meta = read_json_object(os.path.join(data, "lens_model", "metadata.json"))
    hist = model_meta["histories"]
    emit({"benchmark": "lens", "what": "timing", "device": open(os.path.join(out, "device")).read().strip()
          if os.path.exists(os.path.join(out, "device")) else "unknown",
          "threads_per_training_process": next((st.get("threads_per_process", 1) for st in yaml.safe_load(
              open(os.path.join(out, "pipeline_lens.yml")))["stages"] if st["name"] == "LensTrain"), None),
          "train_seconds_total": float(sum(h["seconds"] for h in hist)),
          "member_seconds": [h["seconds"] for h in hist], "member_epochs": [h["epochs"] for h in hist],
          "member_best_val_auroc": [h["best_val_auroc"] for h in hist],
          "n_training_images": model_meta.get("n_training_images"),
          "stage_seconds": stage_times(os.path.join(out, "logs"))})


def experiment(out: str, n_train: int, n_members: int, max_epochs: int | None, n_negatives: int,
               variants: list[str]) -> None:
    """The diversity experiment, on the run's own images: ensembles of generalists (seeds only),
    of PSF or depth specialists, and with the metadata branch, trained on the first ``n_train``
    training images and compared on the test set and the first ``n_negatives`` negatives
    (AUROC, TPR at FPR 1e-2, member correlation, disagreement near the threshold, fusion)."""
    import torch

    from calipers.core.image_sets import read_image_set
    from calipers.lens.model import (LensCNNConfig, LensTrainConfig, ensemble_diversity, fuse_members,
                                     score_members, train_ensemble)
    from calipers.validate import classification as cls

    with open(os.path.join(out, "stages_lens.yml")) as fh:
        cfg = yaml.safe_load(fh)["LensTrain"]
    data = os.path.join(out, "data")
    train = read_image_set(os.path.join(data, "training_images.hdf5"), rows=slice(0, n_train))
    test = read_image_set(os.path.join(data, "test_images.hdf5"))
    negs = read_image_set(os.path.join(data, "negative_images.hdf5"), rows=slice(0, n_negatives))
    labels = np.asarray(train.meta["label"]).astype(int)
    y_test = np.asarray(test.meta["label"]).astype(int)
    meta_cols = ("psf_fwhm_r", "depth_r", "n_exposures")
    for variant in variants:
        t0 = time.time()
        cnn = LensCNNConfig(widths=tuple(cfg["widths"]), head_hidden=cfg["head_hidden"], dropout=cfg["dropout"],
                            meta_columns=meta_cols if variant == "metadata" else ())
        tc = LensTrainConfig(n_members=n_members, max_epochs=max_epochs or cfg["max_epochs"], patience=cfg["patience"],
                             batch_size=cfg["batch_size"], learning_rate=cfg["learning_rate"],
                             specialise=variant if variant in ("psf", "depth") else None)
        ens = train_ensemble(train.data, train.ivar, labels, train.meta, cnn, tc, seed=cfg["seed"])
        seconds = time.time() - t0
        st = score_members(ens, test.data, test.ivar, test.meta, mc_samples=8)
        sn = score_members(ens, negs.data, negs.ivar, negs.meta, mc_samples=8)
        record = {"benchmark": "lens", "what": "diversity_experiment", "variant": variant, "n_train": n_train,
                  "n_members": n_members, "train_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
                  "member_auroc": [float(cls.auroc(m, y_test)) for m in st.deterministic]}
        for method in ("mean", "inverse_variance"):
            zt = fuse_members(st.deterministic, st.variance, method)
            zn = fuse_members(sn.deterministic, sn.variance, method)
            record[f"{method}_auroc"] = float(cls.auroc(zt, y_test))
            row = cls.tpr_at_fpr(np.r_[zt[y_test == 1], zn], np.r_[np.ones((y_test == 1).sum(), int),
                                                                   np.zeros(len(zn), int)], fprs=(1e-2,))[0]
            record[f"{method}_tpr_at_fpr_0.01"] = row["tpr"]
        threshold = float(np.quantile(fuse_members(sn.deterministic), 0.99))
        record |= ensemble_diversity(st.deterministic, threshold=threshold)
        emit(record)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="Run directory (pipeline outputs under <out>/data)")
    ap.add_argument("--scale", type=float, default=1.0, help="Scale every simulated set's size (1 = the full run)")
    ap.add_argument("--n-members", type=int, default=None)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--device", default=None, help="LensTrain/LensScore device (default: the config's, auto)")
    ap.add_argument("--analyse-only", action="store_true", help="Only read an earlier run's outputs")
    ap.add_argument("--experiment", nargs="*", default=None, metavar="VARIANT",
                    help="Only run the diversity experiment on an earlier run's images: variants among "
                         "seeds, psf, depth, metadata")
    ap.add_argument("--experiment-train", type=int, default=8000, help="Training images of the experiment")
    ap.add_argument("--experiment-negatives", type=int, default=20000, help="Negatives of the experiment")
    args = ap.parse_args(argv)
    if args.experiment is not None:
        experiment(args.out, args.experiment_train, args.n_members or 3, args.max_epochs, args.experiment_negatives,
                   args.experiment or ["seeds", "psf", "depth", "metadata"])
        return 0
    if not args.analyse_only:
        pipe = prepare(args.out, args.scale, args.n_members, args.max_epochs, args.device)
        import torch

        with open(os.path.join(args.out, "device"), "w") as fh:
            fh.write(torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else
                     f"cpu ({os.cpu_count()} cores)")
        with open(os.path.join(args.out, "run_start"), "w") as fh:
            fh.write(str(time.time()))
        t0 = time.time()
        rc = subprocess.call([os.path.join(os.path.dirname(sys.executable), "ceci"), pipe])
        emit({"benchmark": "lens", "what": "pipeline", "rc": rc, "seconds": round(time.time() - t0, 1),
              "scale": args.scale})
        if rc != 0 and not os.path.exists(os.path.join(args.out, "data", "calibrated_test_predictions.hdf5")):
            return rc
    analyse(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
