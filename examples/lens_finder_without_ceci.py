"""A strong-lens finder from a notebook: simulate, train, score, calibrate, selection function.

The same steps as ``pipelines/lens.yml``, as plain library calls on arrays and at a size that
runs in a few minutes on a laptop (the numbers are therefore far from the full run's):

    python examples/lens_finder_without_ceci.py
"""
from __future__ import annotations

import logging

import numpy as np

from calipers.calibrate.classification import ClassifierCalibrator
from calipers.lens.model import LensTrainConfig, fuse_members, score_members, train_ensemble
from calipers.lens.simulate import CLASS_NAMES, LensSimConfig, simulate_cutouts
from calipers.validate import classification as cls
from calipers.validate.selection_function import selection_function


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    one_to_three = LensSimConfig(lens_fraction=0.25, min_arc_snr=10.0)
    train = simulate_cutouts(4000, one_to_three, seed=1, progress=True)
    calib = simulate_cutouts(2000, one_to_three, seed=2)
    negatives = simulate_cutouts(5000, LensSimConfig(lens_fraction=0.0), seed=4)
    lenses = simulate_cutouts(1000, LensSimConfig(lens_fraction=1.0, min_arc_snr=15.0), seed=5)

    ensemble = train_ensemble(train.data, train.ivar, train.meta["label"], train.meta,
                              train=LensTrainConfig(n_members=2, max_epochs=6), seed=0, progress=True)

    def fused_logit(cut):
        scores = score_members(ensemble, cut.data, cut.ivar, cut.meta, mc_samples=8)
        return fuse_members(scores.deterministic)

    calibrator = ClassifierCalibrator().fit(fused_logit(calib), calib.meta["label"], deployment_prevalence=1e-3)
    neg_logit = calibrator.transform(fused_logit(negatives), prevalence="calibration")
    lens_logit = calibrator.transform(fused_logit(lenses), prevalence="calibration")
    print(f"temperature {calibrator.temperature.temperature:.3f}")
    y = np.r_[np.ones(len(lens_logit), int), np.zeros(len(neg_logit), int)]
    print(f"AUROC (arc S/N >= 15 lenses vs natural-mix negatives): {cls.auroc(np.r_[lens_logit, neg_logit], y):.4f}")
    for row in cls.tpr_at_fpr(np.r_[lens_logit, neg_logit], y, fprs=(1e-2, 1e-3)):
        print(f"TPR at FPR {row['fpr_target']:g}: {row['tpr']:.3f} [{row['tpr_lo']:.3f}, {row['tpr_hi']:.3f}]")
    sf = selection_function(lens_logit, lenses.meta, neg_logit, negatives.meta["object_class"], CLASS_NAMES,
                            fpr_target=1e-2, strata={"theta_e": [0.8, 1.4, 2.0, 3.0],
                                                     "psf_fwhm_r": [0.6, 1.0, 1.4]},
                            pairs=[("psf_fwhm_r", "theta_e")], min_count=50)
    for row in sf.strata["theta_e"]:
        print(f"theta_E {row['edge_lo']:.1f}-{row['edge_hi']:.1f}\": completeness {row['completeness']:.3f} "
              f"[{row['lo']:.3f}, {row['hi']:.3f}] (n={row['n']})")
    for row in sf.fpr_classes:
        if row["n"] == 0:  # the lens class: no negatives of it
            continue
        print(f"FPR {row['class']}: {row['fpr']:.4f} [{row['lo']:.4f}, {row['hi']:.4f}] (n={row['n']})")


if __name__ == "__main__":
    main()
