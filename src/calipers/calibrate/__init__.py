"""Post-hoc calibration of predictive distributions (arrays in, arrays out).

- :class:`PITRecalibrator` - global PIT recalibration: each CDF F is remapped to G(F), where G
  is the CDF of the PIT values on a calibration set (Bordoloi, Lilly & Amara 2010);
- :class:`LocalPITRecalibrator` - local PIT recalibration conditioned on the inputs (Cal-PIT-like):
  learns P(PIT <= u | x) so that calibration holds across feature space, not only on average;
- :class:`SplitConformalInterval` - split-conformal intervals with a finite-sample guarantee;
- :class:`ConformalPredictiveDistribution` - a conformal CDF per object, uniform PIT for exchangeable data (to the grid resolution once gridded);
- :class:`GaussianWidthScaling`, :class:`TemperatureScaling` - one-parameter width / logit scaling.
"""
from calipers.calibrate.conformal import (
           ConformalPredictiveDistribution,
           SplitConformalInterval,
           conformal_quantile,
)
from calipers.calibrate.local import LocalPITConfig, LocalPITRecalibrator
from calipers.calibrate.pit import PITRecalibrator
from calipers.calibrate.temperature import GaussianWidthScaling, TemperatureScaling

__all__ = ["PITRecalibrator", "LocalPITRecalibrator", "LocalPITConfig", "ConformalPredictiveDistribution", "SplitConformalInterval", "conformal_quantile", "GaussianWidthScaling",
           "TemperatureScaling"]
