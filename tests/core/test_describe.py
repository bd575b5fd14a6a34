"""``calipers describe`` on every kind of output calipers writes (and a clear refusal otherwise)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import qp

from calipers.cli import main as cli
from conftest import TRAIN_100, write_catalog


def describe(path, capsys) -> str:
    assert cli(["describe", str(path)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_describe_qp_file(tmp_path, capsys):
    ens = qp.Ensemble(qp.mixmod, data=dict(means=np.ones((7, 2)), stds=np.ones((7, 2)), weights=np.ones((7, 2)) / 2))
    ens.set_ancil({"zmode": np.ones(7)})
    ens.write_to(str(tmp_path / "pz.hdf5"))
    out = describe(tmp_path / "pz.hdf5", capsys)
    assert "p(z) file" in out and "mixmod, 7 distributions" in out and "['zmode']" in out


def test_describe_catalog(capsys):
    from calipers.core.paths import resolve_path

    out = describe(resolve_path(TRAIN_100), capsys)
    assert "HDF5 catalog" in out and "group 'photometry': 100 rows, 14 columns" in out and "redshift" in out


def test_describe_model_directory(tiny_model_dir, capsys):
    import calipers

    out = describe(tiny_model_dir, capsys)
    assert "model directory" in out and "calipers.photoz.DeepEnsemble" in out
    assert "['u', 'g', 'r', 'i', 'z', 'y']" in out and calipers.__version__ in out and "PZInform" in out


def test_describe_calibrator_and_report_directories(tmp_path, capsys):
    import yaml

    from conftest import run_stage

    rng = np.random.default_rng(0)
    z = rng.uniform(0.2, 2.0, 200)
    ens = qp.Ensemble(qp.mixmod, data=dict(means=(z + rng.normal(0, 0.05, 200))[:, None], stds=np.full((200, 1), 0.05),
                                           weights=np.ones((200, 1))))
    pz = str(tmp_path / "pz.hdf5")
    ens.write_to(pz)
    truth = write_catalog(tmp_path / "truth.hdf5", {"redshift": z})
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"PZCalibrate": {"n_knots": 10}, "ValidationGate": {"on_fail": "warn"}}))
    run_stage("PZCalibrate", str(cfg), calibration_pz=pz, calibration_truth=truth, calibrator=str(tmp_path / "cal"))
    out = describe(tmp_path / "cal", capsys)
    assert "calibrator" in out and "method: pit_global, fitted on 200 objects" in out and "PZCalibrate" in out
    run_stage("ValidationGate", str(cfg), pz=pz, truth=truth, report=str(tmp_path / "report"))
    out = describe(tmp_path / "report", capsys)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "report" in out and ("PASSED" if report["passed"] else "FAILED") in out
    assert f"of {len(report['checks'])} checks passed" in out and "pit_ks" in out


def test_describe_sacc_file(tmp_path, capsys):
    import sacc

    s = sacc.Sacc()
    z = np.linspace(0, 2, 50)
    s.add_tracer("NZ", "bin0", z, np.exp(-(z - 1) ** 2 / 0.1))
    s.add_ell_cl("galaxy_shear_cl_ee", "bin0", "bin0", np.array([10.0, 20.0, 30.0]), np.full(3, 1e-9))
    s.add_covariance(np.eye(3) * 1e-20)
    s.metadata["sigma8"] = 0.8
    s.save_fits(str(tmp_path / "cl.fits"))
    out = describe(tmp_path / "cl.fits", capsys)
    assert "sacc file" in out and "3 data points" in out and "bin0" in out and "covariance: yes" in out
    assert '"sigma8": 0.8' in out


def test_describe_simulations_tomography_and_samples(tmp_path, capsys):
    from calipers.core.nz_files import write_tomography
    from calipers.core.simulations import write_posterior_samples, write_simulations

    write_simulations(str(tmp_path / "sims.hdf5"), np.zeros((12, 2)), np.zeros((12, 5)),
                      {"simulator": "gaussian_linear", "options": {}, "param_names": ["a", "b"]}, {"stage": "Simulate"})
    out = describe(tmp_path / "sims.hdf5", capsys)
    assert "simulations" in out and "12 simulations of gaussian_linear" in out and "Simulate" in out
    write_tomography(str(tmp_path / "tomo.hdf5"), np.array([0, 1, 1, -1]), np.array([0.0, 1.0, 2.0]), np.array([1, 2]),
                     "mass", "zmedian", np.ones(4), None, {"stage": "TomographicBinning"})
    out = describe(tmp_path / "tomo.hdf5", capsys)
    assert "tomography" in out and "4 galaxies" in out and "[0.0, 1.0, 2.0]" in out
    write_posterior_samples(str(tmp_path / "post.hdf5"), np.zeros((30, 2)), ["a", "b"], np.zeros(30), np.zeros(5),
                            np.zeros(2), {"stage": "SBIPosterior"})
    out = describe(tmp_path / "post.hdf5", capsys)
    assert "posterior samples" in out and "30 samples of ['a', 'b']" in out


def test_describe_refuses_what_it_cannot_read(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert cli(["describe", str(tmp_path / "notes.txt")]) == 1
    assert "neither HDF5 nor FITS" in capsys.readouterr().err
    path = write_catalog(tmp_path / "cat.hdf5", {"z": np.arange(20000.0)})
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    assert cli(["describe", path]) == 1
    assert path in capsys.readouterr().err
    assert cli(["describe", str(tmp_path / "missing.hdf5")]) == 1


@pytest.mark.parametrize("kind", ["calibrator.json", "report.json"])
def test_describe_corrupt_json_directory(tmp_path, capsys, kind):
    (tmp_path / kind).write_text("{")
    assert cli(["describe", str(tmp_path)]) == 1
    assert os.path.join(str(tmp_path), kind) in capsys.readouterr().err
