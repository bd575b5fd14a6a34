"""Weak-lensing shear: GalSim stamps, rotation-equivariant estimators, metacalibration and bias (issue 21)."""
