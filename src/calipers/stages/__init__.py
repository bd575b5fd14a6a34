"""ceci stages: thin adapters that read, configure, parallelise and write.

Importing this package registers every calipers stage with ceci.
"""
from calipers.stages.photoz import PZEstimate, PZInform
from calipers.stages.validation import DistributionGate, PhotozReport, ShiftTest, ValidationGate
from calipers.stages.calibration import PZApplyCalibration, PZCalibrate
from calipers.stages.catalogs import CatalogCut, CatalogSplit
from calipers.stages.specz import ActiveSpecZSelect, ShiftWeights, SpecSelection
from calipers.stages.sbi import SBIGate, SBIPosterior, SBIPosteriorSacc, SBITrain, Simulate, SimulateCl
from calipers.stages.cosmology import NZEstimate, NZGate, TheoryCl, TomographicBinning
from calipers.stages.sensitivity import SensitivityGate
from calipers.stages.lens import (ClassifierApplyCalibration, ClassifierCalibrate, ClassifierCalibrateWithNegatives,
                                  ClassifierGate, LensCutouts, LensReport, LensScore, LensSelectionFunction,
                                  LensSimulate, LensTrain)
from calipers.stages.spectra import (BoundComparison, FisherBound, SpectraEstimate, SpectraReport, SpectraSimulate,
                                     SpectraTrain)
from calipers.stages.gaussian import GaussianApplyCalibration, GaussianCalibrate, GaussianGate
from calipers.stages.shear import (ShearBias, ShearCalibrate, ShearEstimate, ShearGate, ShearReport, ShearSimulate,
                                   ShearTrain)
from calipers.stages.transit import (DepthExtract, TransitAudit, TransitPredict, TransitReport, TransitSimulate,
                                     TransitTrain)
from calipers.stages.monitor import (CalibrationDriftMonitor, ClassDriftMonitor, CovariateDriftMonitor,
                                     GaussianDriftMonitor)

__all__ = ["CovariateDriftMonitor", "CalibrationDriftMonitor", "GaussianDriftMonitor", "ClassDriftMonitor", "ShearSimulate", "ShearTrain", "ShearEstimate", "ShearCalibrate", "ShearBias", "ShearGate", "ShearReport",
           "TransitSimulate", "DepthExtract", "TransitTrain", "TransitPredict", "TransitAudit", "TransitReport",
           "GaussianCalibrate", "GaussianApplyCalibration", "GaussianGate", "SpectraSimulate", "FisherBound", "SpectraTrain", "SpectraEstimate", "BoundComparison", "SpectraReport",
           "DistributionGate", "LensSimulate", "LensCutouts", "LensTrain", "LensScore", "ClassifierCalibrate",
           "ClassifierCalibrateWithNegatives", "ClassifierApplyCalibration",
           "LensSelectionFunction", "ClassifierGate", "LensReport", "SBIGate", "SBIPosterior", "SBIPosteriorSacc", "SBITrain", "Simulate", "SimulateCl", "CatalogCut", "CatalogSplit", "SpecSelection", "ShiftWeights", "ActiveSpecZSelect", "NZEstimate", "NZGate", "TheoryCl", "TomographicBinning", "SensitivityGate", "ShiftTest", "PhotozReport", "PZInform", "PZEstimate", "PZCalibrate", "PZApplyCalibration", "ValidationGate"]
