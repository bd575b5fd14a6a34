"""Simulation-based inference (arrays in, arrays out): simulators with a prior and a batched
``simulate``, NPE/NLE/NRE training through ``sbi`` with pickle-free model files, and calibration
diagnostics (SBC, TARP, C2ST)."""
from calipers.sbi.diagnostics import c2st_score, sbc, tarp
from calipers.sbi.estimators import (SBIConfig, build_posterior, estimator_from_state, estimator_state,
                                     train_estimator)
from calipers.sbi.simulate import simulate, simulate_block
from calipers.sbi.simulators import GaussianLinear, make_simulator

__all__ = ["GaussianLinear", "SBIConfig", "build_posterior", "c2st_score", "estimator_from_state", "estimator_state", "make_simulator",
           "sbc", "simulate", "simulate_block", "tarp", "train_estimator"]
