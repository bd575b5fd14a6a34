"""Post-hoc calibration of predictive distributions (arrays in, arrays out).

- :class:`PITRecalibrator` - global PIT recalibration: each CDF F is remapped to G(F), where G
  is the CDF of the PIT values on a calibration set (Bordoloi, Lilly & Amara 2010);
- :class:`SplitConformalInterval` - split-conformal intervals with a finite-sample guarantee;
- :class:`GaussianWidthScaling`, :class:`TemperatureScaling` - one-parameter width / logit scaling.
"""
from calipers.calibrate.conformal import SplitConformalInterval, conformal_quantile
from calipers.calibrate.pit import PITRecalibrator
from calipers.calibrate.temperature import GaussianWidthScaling, TemperatureScaling

__all__ = ["PITRecalibrator", "SplitConformalInterval", "conformal_quantile", "GaussianWidthScaling",
           "TemperatureScaling"]
