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

from calipers.core.simulations import simulator_from_spec  # noqa: E402


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


@pytest.fixture(scope="module")
def theory_sacc(nz_file, tmp_path_factory):
    """TheoryCl's 3x2pt sacc file at (Omega_m, sigma8) = (0.3, 0.81), 4 ell bins in 20..1000."""
    d = tmp_path_factory.mktemp("theory")
    cfg = d / "cfg.yml"
    cfg.write_text(yaml.safe_dump({"TheoryCl": {"probes": ["shear", "density"], "n_ell": 4, "ell_max": 1000.0,
                                                "Omega_c": 0.25, "Omega_b": 0.05, "sigma8": 0.81}}))
    tomo = str(Path(nz_file).parent / "tomo.hdf5")
    run_stage("TheoryCl", str(cfg), nz=nz_file, tomography=tomo, cl_sacc=str(d / "cl.fits"),
              cl_report=str(d / "cl_report"))
    return str(d / "cl.fits")


def test_sacc_observation_is_the_simulator_theory(nz_file, theory_sacc):
    """The shear points picked out of TheoryCl's 3x2pt file are the simulator's noise-free data
    vector at the file's cosmology, in the simulator's order."""
    import sacc

    sim = simulator_from_spec({"simulator": "cosmology_cl",
                               "options": {"nz_path": nz_file, "marginalise_nz": False, "n_ell": 4}})
    s = sacc.Sacc.load_fits(theory_sacc)
    assert len(s.mean) > len(sim.scale)  # the file holds more than the simulator uses
    x = sim.observation_from_sacc(s)
    np.testing.assert_allclose(x, sim.theory([0.3, 0.81], sim.nz_fid), rtol=1e-10)
    assert (s.metadata["Omega_m"], s.metadata["sigma8"]) == pytest.approx((0.3, 0.81))
    other = simulator_from_spec({"simulator": "cosmology_cl",
                                 "options": {"nz_path": nz_file, "marginalise_nz": False, "n_ell": 5}})
    with pytest.raises(ValueError, match=r"galaxy_shear_cl_ee \(bin0, bin0\) has no point at ell"):
        other.observation_from_sacc(s, source=theory_sacc)


def test_posterior_of_a_sacc_observation(nz_file, theory_sacc, tmp_path):
    """SimulateCl -> SBITrain -> SBIPosteriorSacc on TheoryCl's file: samples, names, truth from
    the file's metadata (plumbing; the posterior's quality is benchmarks/sbi_cosmology.py's job)."""
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump({
        "SimulateCl": {"n_simulations": 60, "block_size": 30, "simulator_options": {"n_ell": 4, "marginalise_nz": False}},
        "SBITrain": {"max_num_epochs": 3, "hidden_features": 8, "num_transforms": 1, "model": "maf"},
        "SBIPosteriorSacc": {"n_samples": 300}}))
    sims, model = str(tmp_path / "sims.hdf5"), str(tmp_path / "model")
    run_stage("SimulateCl", str(cfg), nz=nz_file, simulations=sims)
    run_stage("SBITrain", str(cfg), simulations=sims, sbi_model=model)
    run_stage("SBIPosteriorSacc", str(cfg), sbi_model=model, observation=theory_sacc,
              posterior_samples=str(tmp_path / "post.hdf5"), posterior_report=str(tmp_path / "post"))
    with h5py.File(tmp_path / "post.hdf5") as f:
        assert f["samples"].shape == (300, 2)
        assert [n.decode() for n in f["param_names"][:]] == ["Omega_m", "sigma8"]
        np.testing.assert_allclose(f["theta_true"][:], [0.3, 0.81])
        assert f["x_observed"].shape == (12,)
    assert (tmp_path / "post" / "corner.png").exists()
