"""Photometric-redshift models: arrays in, mixture parameters / qp ensembles out.

- :class:`PhotometryPreprocessor` - non-detection handling and the fitted feature scaling;
- :class:`MixtureDensityNetwork` - a torch MDN giving a Gaussian mixture p(z | photometry);
- :class:`DeepEnsemble` - several MDNs from different seeds and validation splits, whose
  combined p(z) is the equal-weight mixture of the members;
- :class:`BandMismatchError`, :class:`ModelStateError` - ``ValueError`` subclasses for a model
  applied to other bands and for unusable saved state (``calipers.core.models`` turns them into
  ``ModelMismatchError`` naming the model directory);
- :func:`mixture_point_estimates`, :func:`mixture_to_qp` - summaries and qp output.
"""
from calipers.photoz.preprocess import PhotometryPreprocessor
from calipers.photoz.mdn import MixtureDensityNetwork, mixture_nll
from calipers.photoz.ensemble import BandMismatchError, DeepEnsemble, EnsembleConfig, ModelStateError
from calipers.photoz.mixture import mixture_pdf, mixture_cdf, mixture_point_estimates, mixture_to_qp

__all__ = [
    "PhotometryPreprocessor",
    "MixtureDensityNetwork",
    "mixture_nll",
    "DeepEnsemble",
    "EnsembleConfig",
    "BandMismatchError",
    "ModelStateError",
    "mixture_pdf",
    "mixture_cdf",
    "mixture_point_estimates",
    "mixture_to_qp",
]
