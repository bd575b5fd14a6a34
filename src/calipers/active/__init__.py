"""Active spec-z targeting: arrays in, ranked target lists out.

- :func:`acquisition_scores` - ``random``, ``entropy`` or ``bald`` (mutual information over the
  ensemble, exact on the p(z) grid) scores of the candidates;
- :func:`exposure_cost` - exposure time for a fixed S/N, 10^(0.8 (m - m_ref)) background limited;
- :func:`select_batch` - top-k, power-BALD, softmax or k-means-diverse batches, cost-aware and
  optionally within an exposure budget (:class:`TargetSelection`: ids, rows, ranks, scores, costs).
"""
from calipers.active.acquisition import (
    ACQUISITION_METHODS,
    SELECTION_METHODS,
    TargetSelection,
    acquisition_scores,
    exposure_cost,
    select_batch,
)

__all__ = ["ACQUISITION_METHODS", "SELECTION_METHODS", "TargetSelection", "acquisition_scores", "exposure_cost",
           "select_batch"]
