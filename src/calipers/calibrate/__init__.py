"""Post-hoc calibration of predictive distributions (arrays in, arrays out).

- :class:`PITRecalibrator` - global PIT recalibration: each CDF F is remapped to G(F), where G
  is the CDF of the PIT values on a calibration set (Bordoloi, Lilly & Amara 2010);
- :class:`LocalPITRecalibrator` - local PIT recalibration conditioned on the inputs (Cal-PIT-like):
  learns P(PIT <= u | x) so that calibration holds across feature space, not only on average;
- :class:`SplitConformalInterval` - split-conformal intervals with a finite-sample guarantee;
- :class:`ConformalPredictiveDistribution` - a conformal CDF per object, uniform PIT for exchangeable data (to the grid resolution once gridded);
- :class:`GaussianWidthScaling`, :class:`TemperatureScaling` - one-parameter width / logit scaling;
- :class:`BinaryTemperatureScaling`, :class:`PriorShift`, :class:`ClassifierCalibrator` - a binary
  classifier's logit: temperature scaling, then Bayes' prior shift to a deployment prevalence;
- :class:`DensityRatio`, :func:`density_ratio_weights` - importance weights
  w(x) = p_target(x) / p_labelled(x) for covariate shift (cross-fitted classifier or kNN), with
  clipping, the effective sample size and :class:`WeightCollapseError`; the PIT and conformal
  calibrators above take them as ``weights=`` (weighted PIT recalibration, weighted conformal
  prediction after Tibshirani et al. 2019) so that calibration targets the target population.
"""
from calipers.calibrate.classification import (BinaryTemperatureScaling, ClassifierCalibrator, DeploymentAffine,
                                               PriorShift, StackedFusion)
from calipers.calibrate.conformal import (
           ConformalPredictiveDistribution,
           SplitConformalInterval,
           conformal_quantile,
)
from calipers.calibrate.local import LocalPITConfig, LocalPITRecalibrator
from calipers.calibrate.pit import PITRecalibrator, weighted_quantile
from calipers.calibrate.shift_weights import (
           DensityRatio,
           ShiftWeightReport,
           WeightCollapseError,
           check_effective_sample_size,
           density_ratio_weights,
           effective_sample_size,
           photometry_shift_features,
)
from calipers.calibrate.temperature import GaussianWidthScaling, TemperatureScaling

__all__ = ["DeploymentAffine", "StackedFusion", "PITRecalibrator", "LocalPITRecalibrator", "LocalPITConfig", "ConformalPredictiveDistribution", "SplitConformalInterval", "conformal_quantile", "GaussianWidthScaling",
           "TemperatureScaling", "weighted_quantile", "DensityRatio", "ShiftWeightReport", "WeightCollapseError",
           "check_effective_sample_size", "density_ratio_weights", "effective_sample_size",
           "photometry_shift_features", "BinaryTemperatureScaling", "PriorShift", "ClassifierCalibrator"]
