"""ceci stages: thin adapters that read, configure, parallelise and write.

Importing this package registers every calipers stage with ceci.
"""
from calipers.stages.photoz import PZEstimate, PZInform
from calipers.stages.validation import ValidationGate
from calipers.stages.calibration import PZApplyCalibration, PZCalibrate
from calipers.stages.catalogs import CatalogSplit

__all__ = ["CatalogSplit", "PZInform", "PZEstimate", "PZCalibrate", "PZApplyCalibration", "ValidationGate"]
