"""TomographicBinning -> NZEstimate -> NZGate -> TheoryCl through ceci's stage API."""
import json

import numpy as np
import pytest
import qp
import yaml
from conftest import leftovers, run_stage, write_catalog

from calipers.core.errors import GateFailed

N = 6000


def toy_pz(d, shift=0.0, seed=0):
    """Gaussian p(z) that are exact posteriors: the true z is drawn from each galaxy's p(z)
    (``shift`` then biases every p(z))."""
    rng = np.random.default_rng(seed)
    centre = 0.2 + rng.gamma(4.0, 0.2, N).clip(0.0, 2.2)
    sigma = 0.04 * (1 + centre)
    z = centre + rng.normal(0, sigma)
    centre = centre + shift
    ens = qp.Ensemble(qp.mixmod, data={"means": centre[:, None], "stds": sigma[:, None], "weights": np.ones((N, 1))})
    ens.set_ancil({"id": np.arange(N)})
    d.mkdir(exist_ok=True)
    ens.write_to(str(d / "pz.hdf5"))
    return str(d / "pz.hdf5"), write_catalog(d / "truth.hdf5", {"redshift": z, "id": np.arange(N)})


def config(d, **sections):
    base = {"TomographicBinning": {"n_bins": 3, "zmax_bins": 2.5},
            "NZEstimate": {"n_realizations": 30, "method": "both", "chunk_size": 2500},
            "NZGate": {"max_mean_offset": 0.01},
            "TheoryCl": {"n_ell": 6, "ell_max": 1000.0}}
    for k, v in sections.items():
        base[k].update(v)
    path = d / "cfg.yml"
    path.write_text(yaml.safe_dump(base))
    return str(path)


def run_chain(d, pz, truth, cfg):
    tomo, nz = str(d / "tomo.hdf5"), str(d / "nz.hdf5")
    run_stage("TomographicBinning", cfg, pz=pz, tomography=tomo)
    run_stage("NZEstimate", cfg, pz=pz, tomography=tomo, nz=nz)
    return tomo, nz


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    d = tmp_path_factory.mktemp("honest")
    pz, truth = toy_pz(d)
    cfg = config(d)
    tomo, nz = run_chain(d, pz, truth, cfg)
    run_stage("NZGate", cfg, nz=nz, tomography=tomo, truth=truth, nz_report=str(d / "nz_report"))
    run_stage("TheoryCl", cfg, nz=nz, tomography=tomo, cl_sacc=str(d / "cl.fits"), cl_report=str(d / "cl_report"))
    return d, pz, truth, tomo, nz


def test_binning_and_nz_outputs(honest):
    d, pz, truth, tomo, nz = honest
    import h5py

    with h5py.File(tomo) as f:
        bins = f["tomography/bin"][:]
        edges = json.loads(f["tomography"].attrs["edges"])
        assert "provenance" in f
    assert len(edges) == 4 and set(np.unique(bins)) <= {-1, 0, 1, 2}
    counts = np.bincount(bins[bins >= 0])
    assert counts.min() > 0.2 * N  # equal-number edges by zmedian, assignment by p(z) mass
    ens = qp.read(nz)
    assert ens.npdf == 3 * 31
    assert set(ens.ancil["realization"]) == set(range(-1, 30))


def test_honest_gate_passes_with_table(honest):
    d = honest[0]
    rep = json.loads((d / "nz_report" / "report.json").read_text())
    assert rep["passed"] is True
    for row in rep["metrics"]["bins"]:
        assert abs(row["delta_mean_z"]) < 0.01 * (1 + row["true_mean_z"]) and row["pull"] < 2
    assert (d / "nz_report" / "nz_bands.png").exists()


def test_sacc_round_trips_the_data_vector(honest):
    import h5py
    import sacc

    d = honest[0]
    s = sacc.Sacc.load_fits(str(d / "cl.fits"))
    with h5py.File(d / "cl_report" / "covariances.hdf5") as f:
        data, gauss, nzcov = f["data_vector"][:], f["gaussian"][:], f["nz"][:]
    np.testing.assert_array_equal(s.mean, data)  # exactly the vector we wrote
    np.testing.assert_allclose(s.covariance.covmat, gauss + nzcov, rtol=1e-12)
    np.testing.assert_array_equal(s.metadata["covariance_gaussian"], gauss)   # both parts in the sacc file
    np.testing.assert_array_equal(s.metadata["covariance_nz"], nzcov)
    assert sorted(s.tracers) == ["bin0", "bin1", "bin2"]
    assert s.tracers["bin0"].ensemble.npdf == 30
    assert set(s.get_data_types()) == {"galaxy_shear_cl_ee", "galaxy_density_cl", "galaxy_shearDensity_cl_e"}
    assert len(s.mean) == (6 + 3 + 9) * 6
    assert np.all(np.linalg.eigvalsh(gauss) > 0)
    rep = json.loads((d / "cl_report" / "report.json").read_text())
    assert len(rep["metrics"]["ratio_table"]) == 6
    assert (d / "cl_report" / "error_ratio.png").exists() and (d / "cl_report" / "cl_errors.png").exists()


def test_biased_pz_fails_the_nz_gate_naming_the_bins(tmp_path):
    pz, truth = toy_pz(tmp_path, shift=0.05)
    cfg = config(tmp_path)
    tomo, nz = run_chain(tmp_path, pz, truth, cfg)
    with pytest.raises(GateFailed) as err:
        run_stage("NZGate", cfg, nz=nz, tomography=tomo, truth=truth, nz_report=str(tmp_path / "rep"))
    failed = err.value.failures
    assert any(f.startswith("bin0_mean_offset") for f in failed) and any("truth_pull" in f for f in failed)
    assert (tmp_path / "rep.FAILED" / "report.json").exists()


def test_empty_bin_is_a_clear_error(tmp_path):
    pz, truth = toy_pz(tmp_path)
    cfg = config(tmp_path, TomographicBinning={"edges": [0.0, 0.5, 2.9, 3.0], "assign_by": "zmode"})
    with pytest.raises(ValueError, match=r"bin\(s\) \[2\] hold no galaxies"):
        run_chain(tmp_path, pz, truth, cfg)
    assert not leftovers(tmp_path) and not (tmp_path / "nz.hdf5").exists()


def test_binning_can_drop_galaxies_flagged_outside_the_support(tmp_path, honest):
    import h5py

    from calipers.core.errors import CatalogError

    d, pz, truth, tomo, nz = honest
    ens = qp.read(pz)
    flagged = np.zeros(N, dtype=np.int8)
    flagged[::7] = 1
    ens.set_ancil({"id": np.arange(N), "ood": flagged})
    ens.write_to(str(tmp_path / "pz_flags.hdf5"))
    cfg = config(tmp_path, TomographicBinning={"drop_ood": True, "edges": [0.0, 0.8, 1.4, 3.0]})
    run_stage("TomographicBinning", cfg, pz=str(tmp_path / "pz_flags.hdf5"), tomography=str(tmp_path / "t.hdf5"))
    cfg_keep = config(tmp_path / "keep" if (tmp_path / "keep").mkdir() is None else tmp_path,
                      TomographicBinning={"edges": [0.0, 0.8, 1.4, 3.0]})
    run_stage("TomographicBinning", cfg_keep, pz=str(tmp_path / "pz_flags.hdf5"), tomography=str(tmp_path / "k.hdf5"))
    with h5py.File(tmp_path / "t.hdf5") as f, h5py.File(tmp_path / "k.hdf5") as g:
        dropped, kept = f["tomography/bin"][:], g["tomography/bin"][:]
    assert np.all(dropped[flagged == 1] == -1)
    np.testing.assert_array_equal(dropped[flagged == 0], kept[flagged == 0])
    with pytest.raises(CatalogError, match="no 'ood' flags"):
        run_stage("TomographicBinning", cfg, pz=pz, tomography=str(tmp_path / "x.hdf5"))
    assert leftovers(tmp_path) == []
