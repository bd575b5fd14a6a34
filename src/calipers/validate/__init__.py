"""Validation metrics for distributions (arrays / qp ensembles in, numbers out).

NaN policy: a row whose p(z) or truth is not finite (or whose p(z) does not normalise) is
**counted and reported** as ``n_invalid`` and left out of every metric; nothing is zero-filled.

Binary classifiers (a class probability per object): :mod:`calipers.validate.classification`
(equal-mass ECE, NLL, Brier, AUROC with a bootstrap interval, TPR at fixed FPR with exact
intervals, purity in top-score bins at a deployment prevalence), :mod:`~calipers.validate.selection_function`
(completeness per stratum, FPR per class of negative) and :mod:`~calipers.validate.classification_plots`.
"""
from calipers.validate.classification import (
    auroc,
    auroc_interval,
    calibration_errors,
    clopper_pearson,
    purity_calibration,
    reliability,
    threshold_at_fpr,
    tpr_at_fpr,
)
from calipers.validate.local_coverage import local_coverage_test
from calipers.validate.metrics import (
    ZGRID,
    cde_loss,
    coverage,
    crps,
    grid_pdfs,
    pit_tests,
    pit_values,
    point_metrics,
    pz_metrics,
)

__all__ = ["reliability", "calibration_errors", "auroc", "auroc_interval", "clopper_pearson", "purity_calibration",
           "threshold_at_fpr", "tpr_at_fpr", "local_coverage_test", "ZGRID", "cde_loss", "coverage", "crps", "grid_pdfs", "pit_tests", "pit_values", "point_metrics",
           "pz_metrics"]
