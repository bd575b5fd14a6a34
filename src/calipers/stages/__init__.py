"""ceci stages: thin adapters that read, configure, parallelise and write.

Importing this package registers every calipers stage with ceci.
"""
from calipers.stages.photoz import PZEstimate, PZInform
from calipers.stages.validation import ShiftTest, ValidationGate
from calipers.stages.calibration import PZApplyCalibration, PZCalibrate
from calipers.stages.catalogs import CatalogCut, CatalogSplit

__all__ = ["CatalogCut", "CatalogSplit", "ShiftTest", "PZInform", "PZEstimate", "PZCalibrate", "PZApplyCalibration", "ValidationGate"]
