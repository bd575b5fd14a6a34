"""Post-hoc calibration of predictive distributions (arrays in, arrays out).

- :class:`PITRecalibrator` - global PIT recalibration: each CDF F is remapped to G(F), where G
  is the CDF of the PIT values on a calibration set (Bordoloi, Lilly & Amara 2010).
"""
from calipers.calibrate.pit import PITRecalibrator

__all__ = ["PITRecalibrator"]
