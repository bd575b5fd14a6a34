"""Validation metrics for distributions (arrays / qp ensembles in, numbers out).

NaN policy: a row whose p(z) or truth is not finite (or whose p(z) does not normalise) is
**counted and reported** as ``n_invalid`` and left out of every metric; nothing is zero-filled.
"""
from calipers.validate.classification import reliability
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

__all__ = ["reliability", "local_coverage_test", "ZGRID", "cde_loss", "coverage", "crps", "grid_pdfs", "pit_tests", "pit_values", "point_metrics",
           "pz_metrics"]
