"""The C_ell simulator for SBI, fed by an NZEstimate output."""
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import run_stage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cosmology"))
from test_cosmology_stages import toy_pz  # noqa: E402

from calipers.stages.sbi import simulator_from_spec  # noqa: E402


@pytest.fixture(scope="module")
def nz_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("nz")
    pz, _ = toy_pz(d)
    cfg = d / "cfg.yml"
    cfg.write_text(yaml.safe_dump({"TomographicBinning": {"n_bins": 2, "zmax_bins": 2.5},
                                   "NZEstimate": {"n_realizations": 8}}))
    run_stage("TomographicBinning", str(cfg), pz=pz, tomography=str(d / "tomo.hdf5"))
    run_stage("NZEstimate", str(cfg), pz=pz, tomography=str(d / "tomo.hdf5"), nz=str(d / "nz.hdf5"))
    return str(d / "nz.hdf5")


def test_simulator_shapes_noise_and_nz_marginalisation(nz_file):
    fixed = simulator_from_spec({"simulator": "cosmology_cl",
                                 "options": {"nz_path": nz_file, "marginalise_nz": False, "n_ell": 4}})
    marg = simulator_from_spec({"simulator": "cosmology_cl",
                                "options": {"nz_path": nz_file, "marginalise_nz": True, "n_ell": 4}})
    theta = np.array([[0.3, 0.8], [0.3, 0.8]])
    x1 = fixed.simulate(theta, np.random.default_rng(0))
    x2 = fixed.simulate(theta, np.random.default_rng(0))
    np.testing.assert_array_equal(x1, x2)                       # seeded
    assert x1.shape == (2, 3 * 4) and np.all(np.isfinite(x1))   # 3 shear pairs x 4 ell bins
    clean = fixed.theory(theta[0], fixed.nz_fid)
    resid = (x1 - clean) @ np.linalg.inv(fixed.noise_chol).T   # whitened noise ~ N(0, 1)
    assert np.all(np.abs(resid) < 6)
    assert not np.allclose(fixed.theory([0.3, 0.8], fixed.nz_fid), fixed.theory([0.3, 0.9], fixed.nz_fid))
    xm = marg.simulate(np.tile([0.3, 0.8], (6, 1)), np.random.default_rng(1)) - clean
    assert np.std(xm) > 0
    assert fixed.sample_prior(100, np.random.default_rng(0)).min(0)[0] >= 0.2


def test_simulate_cl_stage(nz_file, tmp_path):
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump({"SimulateCl": {"n_simulations": 12, "block_size": 5,
                                                  "simulator_options": {"n_ell": 3}}}))
    out = tmp_path / "sims.hdf5"
    run_stage("SimulateCl", str(cfg), nz=nz_file, simulations=str(out))
    with h5py.File(out) as f:
        assert f["simulations/theta"].shape == (12, 2) and f["simulations/x"].shape == (12, 9)
