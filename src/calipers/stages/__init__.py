"""ceci stages: thin adapters that read, configure, parallelise and write.

Importing this package registers every calipers stage with ceci.
"""
from calipers.stages.photoz import PZEstimate, PZInform
from calipers.stages.validation import ShiftTest, ValidationGate
from calipers.stages.calibration import PZApplyCalibration, PZCalibrate
from calipers.stages.catalogs import CatalogCut, CatalogSplit
from calipers.stages.specz import ActiveSpecZSelect, ShiftWeights, SpecSelection
from calipers.stages.sbi import SBIGate, SBIPosterior, SBIPosteriorSacc, SBITrain, Simulate, SimulateCl
from calipers.stages.cosmology import NZEstimate, NZGate, TheoryCl, TomographicBinning

__all__ = ["SBIGate", "SBIPosterior", "SBIPosteriorSacc", "SBITrain", "Simulate", "SimulateCl", "CatalogCut", "CatalogSplit", "SpecSelection", "ShiftWeights", "ActiveSpecZSelect", "NZEstimate", "NZGate", "TheoryCl", "TomographicBinning", "ShiftTest", "PZInform", "PZEstimate", "PZCalibrate", "PZApplyCalibration", "ValidationGate"]
