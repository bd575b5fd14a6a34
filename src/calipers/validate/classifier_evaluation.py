"""One evaluation of a binary classifier as a survey search uses it.

A search is judged on two samples: a *test* sample with labels at a training-like prevalence
(e.g. 1:3), on which AUROC and the calibration (ECE, NLL, Brier) are meaningful, and a large
*negatives* sample in the natural mix of contaminants, which alone resolves false-positive rates
of 1e-3 to 1e-4. The true-positive rate at a false-positive rate takes its threshold from the
negatives and its lenses from the test sample; the purity in the top-score bins combines both at
the deployment prevalence (:func:`calipers.validate.classification.purity_calibration`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calipers.validate import classification as cls


@dataclass
class ClassifierEvaluation:
    """Metrics of a classifier on a test sample and a negatives sample (JSON-able via ``to_dict``)."""

    n_test: int
    n_test_pos: int
    n_negatives: int
    auroc: float
    auroc_lo: float
    auroc_hi: float
    calibration: dict            # ece, mce (equal-mass bins), nll, brier of the calibrated probabilities
    calibration_before: dict     # the same for the uncalibrated probabilities (when given)
    tpr_at_fpr: list             # rows of calipers.validate.classification.tpr_at_fpr
    purity: dict | None = None   # calipers.validate.classification.purity_calibration
    extra: dict = field(default_factory=dict)

    def tpr_row(self, fpr: float) -> dict:
        for row in self.tpr_at_fpr:
            if np.isclose(row["fpr_target"], fpr):
                return row
        raise KeyError(f"no TPR at FPR {fpr}; have {[r['fpr_target'] for r in self.tpr_at_fpr]}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _calibration_block(prob: np.ndarray, labels: np.ndarray, n_bins: int) -> dict:
    errors = cls.calibration_errors(prob, labels, n_bins=n_bins, strategy="equal_mass")
    return {"ece": float(errors["ece"]), "mce": float(errors["mce"]),
            "nll": float(cls.binary_nll(prob, labels)), "brier": float(cls.brier_score(prob, labels)),
            "bins": errors}


def evaluate_classifier(test_logit: np.ndarray, test_labels: np.ndarray, negative_logit: np.ndarray,
                        test_logit_uncalibrated: np.ndarray | None = None,
                        negative_logit_deploy: np.ndarray | None = None,
                        test_logit_deploy: np.ndarray | None = None, prevalence: float | None = None,
                        fprs=(1e-2, 1e-3, 1e-4), n_bins: int = 15, purity_bins: int = 10,
                        n_boot: int = 1000, cl: float = 0.95, seed: int = 0) -> ClassifierEvaluation:
    """Evaluate calibrated logits.

    Parameters
    ----------
    test_logit, test_labels : the test sample's calibrated logits (at its own prevalence) and labels
    negative_logit : the negatives sample's logits (same calibration; all labels 0)
    test_logit_uncalibrated : the test logits before calibration, for the before/after comparison
    test_logit_deploy, negative_logit_deploy, prevalence : logits prior-shifted to the deployment
        prevalence, for the purity calibration at that prevalence (all three or none)
    """
    test_logit = np.asarray(test_logit, dtype=float)
    labels = np.asarray(test_labels).astype(int)
    neg = np.asarray(negative_logit, dtype=float)
    prob = cls.sigmoid(test_logit)
    lo, hi = cls.auroc_interval(test_logit, labels, n_boot=n_boot, cl=cl, seed=seed)
    calib = _calibration_block(prob, labels, n_bins)
    before = {} if test_logit_uncalibrated is None else _calibration_block(cls.sigmoid(test_logit_uncalibrated),
                                                                          labels, n_bins)
    pos_scores = test_logit[labels == 1]
    scores = np.concatenate([pos_scores, neg])
    truth = np.concatenate([np.ones(len(pos_scores), int), np.zeros(len(neg), int)])
    tpr = cls.tpr_at_fpr(scores, truth, fprs=tuple(fprs), cl=cl)
    purity = None
    if prevalence is not None:
        if test_logit_deploy is None or negative_logit_deploy is None:
            raise ValueError("purity at the deployment prevalence needs test_logit_deploy and negative_logit_deploy")
        p_scores = np.concatenate([np.asarray(test_logit_deploy, dtype=float)[labels == 1],
                                   np.asarray(negative_logit_deploy, dtype=float)])
        try:
            purity = cls.purity_calibration(cls.sigmoid(p_scores), truth, prevalence, n_bins=purity_bins, cl=cl,
                                            seed=seed)
        except ValueError as err:  # e.g. no lens scores in the top-score region: nothing is calibrated there
            purity = {"fraction_inside": 0.0, "bins": [], "prevalence": prevalence, "error": str(err)}
    return ClassifierEvaluation(n_test=int(len(labels)), n_test_pos=int(labels.sum()), n_negatives=int(len(neg)),
                                auroc=float(cls.auroc(test_logit, labels)), auroc_lo=float(lo), auroc_hi=float(hi),
                                calibration=calib, calibration_before=before, tpr_at_fpr=tpr, purity=purity)
