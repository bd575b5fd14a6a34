"""Simulation-based inference (arrays in, arrays out): simulators with a prior and a batched
``simulate``, NPE/NLE/NRE training through ``sbi`` with pickle-free model files, and calibration
diagnostics (SBC, TARP and C2ST through sbi's own functions; posterior contraction)."""
from calipers.sbi.diagnostics import (SBCResult, c2st_score, posterior_contraction, posterior_draws, sbc,
                                      sbc_from_draws, sbc_ranks, tarp, tarp_from_draws, tarp_references)
from calipers.sbi.estimators import (SBIConfig, build_posterior, estimator_from_state, estimator_state,
                                     train_estimator)
from calipers.sbi.simulate import simulate, simulate_block
from calipers.sbi.simulators import GaussianLinear, make_simulator

__all__ = ["GaussianLinear", "SBCResult", "SBIConfig", "build_posterior", "c2st_score", "estimator_from_state",
           "estimator_state", "make_simulator", "posterior_contraction", "posterior_draws", "sbc", "sbc_from_draws",
           "sbc_ranks", "simulate", "simulate_block", "tarp", "tarp_from_draws", "tarp_references", "train_estimator"]
