"""Real MPI runs (OpenMPI + mpi4py, 2 ranks): outputs equal the serial run's, bit for bit.

CI installs OpenMPI and mpi4py, and there these tests must run: with CI=true a missing MPI is a
failure, not a skip. Elsewhere they are skipped when ``mpirun`` or mpi4py is absent.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_INFORM, subprocess_env
from test_pipeline import catalogs, pipeline_files  # noqa: F401  (catalogs is a fixture)

MPI_STAGES = {"PZInform", "PZEstimateCalibration", "PZEstimate", "PZApplyCalibration", "ValidationGate"}


@pytest.fixture(scope="module")
def mpi_env() -> dict:
    have = shutil.which("mpirun") and importlib.util.find_spec("mpi4py") is not None
    if not have:
        msg = "OpenMPI (mpirun) and mpi4py are needed for the MPI tests"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + ": CI must install them (.ci/run)")
        pytest.skip(msg)
    env = subprocess_env()
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               OMP_NUM_THREADS="1")
    return env


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("provenance"):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def assert_same_h5(a: Path, b: Path, rtol: float = 0.0) -> None:
    """Every dataset equal (bit for bit unless ``rtol`` > 0 for floating-point data)."""
    x, y = h5_arrays(a), h5_arrays(b)
    assert x.keys() == y.keys(), (a, sorted(x), sorted(y))
    for k in x:
        if rtol and np.issubdtype(np.asarray(x[k]).dtype, np.floating):
            np.testing.assert_allclose(x[k], y[k], rtol=rtol, atol=0, err_msg=f"{a.name}:{k}")
        else:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"{a.name}:{k}")


def test_photoz_mpi_pipeline_equals_serial(tmp_path, catalogs, mpi_env):  # noqa: F811
    """pipelines/photoz_mpi.yml with 2 ranks (ceci launches mpirun) and with 1: same outputs."""
    train, test = catalogs
    outs = {}
    for label, nproc in (("serial", 1), ("mpi", 2)):
        d = tmp_path / label
        d.mkdir()
        pipe = pipeline_files(d, train, test, inform=dict(TINY_INFORM, max_epochs=4, n_members=3),
                              estimate={"chunk_size": 32}, gate={"on_fail": "warn", "chunk_size": 32},
                              name="photoz_mpi", stages_name="photoz_target_split", extra={"PZApplyCalibration": {"chunk_size": 32}})
        spec = yaml.safe_load(pipe.read_text())
        spec["site"]["max_threads"] = 2
        for st in spec["stages"]:
            st["nprocess"] = nproc if st["name"] in MPI_STAGES else 1
        pipe.write_text(yaml.safe_dump(spec, sort_keys=False))
        proc = subprocess.run(["ceci", str(pipe)], capture_output=True, text=True, env=mpi_env, cwd=d, timeout=600)
        assert proc.returncode == 0, f"{label}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outs[label] = d / "out"
    serial, mpi = outs["serial"], outs["mpi"]
    w1 = torch.load(serial / "model" / "weights.pt", weights_only=True)
    w2 = torch.load(mpi / "model" / "weights.pt", weights_only=True)
    assert w1.keys() == w2.keys() and sorted(w1) == ["member_0", "member_1", "member_2", "support"]
    for k in w1:  # every member's weights and the support region's training rows
        for name in w1[k]:
            assert torch.equal(w1[k][name], w2[k][name]), f"{k}.{name}"
    assert (mpi / "model" / "provenance.json").read_text().count('"mpi_ranks": "2"') == 1
    for f in ("calibration_pz.hdf5", "pz.hdf5", "calibrated_pz.hdf5"):
        assert_same_h5(serial / f, mpi / f)
    r1 = yaml.safe_load((serial / "report" / "report.json").read_text())
    r2 = yaml.safe_load((mpi / "report" / "report.json").read_text())
    assert r1["metrics"] == r2["metrics"]
    assert not [p for p in mpi.iterdir() if ".rank" in p.name or p.name.startswith("inprogress_")]


def mpirun(env, stage: str, cfg: Path, nproc: int, **io) -> None:
    cmd = ["mpirun", "-n", str(nproc), "python", "-m", "calipers", stage, "--mpi", f"--config={cfg}",
           *(f"--{k}={v}" for k, v in io.items())]
    if nproc == 1:
        cmd = cmd[3:]
        cmd.remove("--mpi")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def test_simulate_and_nz_over_two_ranks_equal_serial(tmp_path, mpi_env):
    from cosmology.test_cosmology_stages import toy_pz

    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump({
        "Simulate": {"simulator": "gaussian_linear", "simulator_options": {"dim": 3}, "n_simulations": 700,
                     "block_size": 100},
        "TomographicBinning": {"n_bins": 3, "zmax_bins": 2.5},
        "NZEstimate": {"n_realizations": 20, "method": "both", "chunk_size": 700}}))
    pz, _ = toy_pz(tmp_path / "toy")
    tomo = tmp_path / "tomo.hdf5"
    mpirun(mpi_env, "TomographicBinning", cfg, 1, pz=pz, tomography=tomo)
    for n in (1, 2):
        mpirun(mpi_env, "Simulate", cfg, n, simulations=tmp_path / f"sims{n}.hdf5")
        mpirun(mpi_env, "NZEstimate", cfg, n, pz=pz, tomography=tomo, nz=tmp_path / f"nz{n}.hdf5")
    assert_same_h5(tmp_path / "sims1.hdf5", tmp_path / "sims2.hdf5")
    # n(z): every chunk's contribution (and its random draws) is the same, but rank sums are added
    # in another order than the serial running sum, so floating-point sums agree to rounding only
    assert_same_h5(tmp_path / "nz1.hdf5", tmp_path / "nz2.hdf5", rtol=1e-12)


def test_a_failing_rank_stops_the_whole_job(tmp_path, mpi_env):
    """An error on one rank aborts every rank (no hang) and leaves no output or part file."""
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump({"ValidationGate": {"chunk_size": 10}}))
    bad = tmp_path / "pz.hdf5"
    with h5py.File(bad, "w") as f:  # a qp-looking file whose p(z) rows cannot be read
        f["meta/pdf_name"] = np.array([b"nosuchkind"])
        f["data/yvals"] = np.zeros((40, 3))
    truth = tmp_path / "truth.hdf5"
    with h5py.File(truth, "w") as f:
        f["photometry/redshift"] = np.linspace(0.1, 1, 40)
    cmd = ["mpirun", "-n", "2", "python", "-m", "calipers", "ValidationGate", "--mpi", f"--config={cfg}",
           f"--pz={bad}", f"--truth={truth}", f"--report={tmp_path / 'report'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=mpi_env, timeout=120)
    assert proc.returncode != 0
    assert "unknown qp parameterization" in proc.stdout + proc.stderr
    # (.calipers may keep rank 0's output lock if the abort killed it first: stale, taken over by the next run)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".calipers") == ["cfg.yml", "pz.hdf5", "truth.hdf5"]


def test_lens_simulate_train_score_over_two_ranks_equal_serial(tmp_path, mpi_env):
    """LensSimulate (blocks split over ranks), LensTrain (members over ranks) and LensScore (chunks
    over ranks) give the serial outputs bit for bit."""
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(yaml.safe_dump({
        "LensSimulate": {"n_images": 640, "block_size": 64, "chunk_size": 128, "seed": 3},
        "LensTrain": {"n_members": 2, "max_epochs": 1, "batch_size": 64, "widths": [8, 8, 16], "head_hidden": 8,
                      "device": "cpu", "export_onnx": False},
        "LensScore": {"mc_samples": 3, "batch_size": 64, "chunk_size": 128, "device": "cpu"}}))
    for n in (1, 2):
        images = tmp_path / f"images{n}.hdf5"
        mpirun(mpi_env, "LensSimulate", cfg, n, images=images)
        mpirun(mpi_env, "LensTrain", cfg, n, images=images, model=tmp_path / f"model{n}")
        mpirun(mpi_env, "LensScore", cfg, n, model=tmp_path / f"model{n}", images=images,
               predictions=tmp_path / f"pred{n}.hdf5")
    assert_same_h5(tmp_path / "images1.hdf5", tmp_path / "images2.hdf5")
    w1 = torch.load(tmp_path / "model1" / "weights.pt", weights_only=True)
    w2 = torch.load(tmp_path / "model2" / "weights.pt", weights_only=True)
    assert sorted(w1) == sorted(w2) == ["member_0", "member_1"]
    for k in w1:
        for name in w1[k]:
            assert torch.equal(w1[k][name], w2[k][name]), f"{k}.{name}"
    assert_same_h5(tmp_path / "pred1.hdf5", tmp_path / "pred2.hdf5")
    assert not [p for p in tmp_path.iterdir() if ".rank" in p.name]
