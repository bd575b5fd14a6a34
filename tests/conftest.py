"""Shared fixtures and helpers for the calipers test suite.

Everything here is small: models have 2 members, 16 hidden units, 1 layer and a few epochs,
and catalogs have at most a few hundred rows, so the whole suite runs in well under a minute
of CPU time.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# One torch/OpenMP thread: the models are tiny, and on a shared, loaded machine several
# spinning OpenMP threads make training 10-50x slower (ceci runs stages the same way).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py
import numpy as np
import pytest
import torch
import yaml

from calipers.core.paths import resolve_path

from hypothesis import settings as _hyp_settings

# property tests draw the same examples every run, so CI never flakes on a rare seed
_hyp_settings.register_profile("calipers", derandomize=True, deadline=None)
_hyp_settings.load_profile("calipers")

torch.set_num_threads(1)

BANDS = ["u", "g", "r", "i", "z", "y"]
TRAIN_100 = "pkg://rail/examples_data/testdata/training_100gal.hdf5"
VALID_10 = "pkg://rail/examples_data/testdata/validation_10gal.hdf5"
DC2_TRAIN = "pkg://rail/examples_data/testdata/test_dc2_training_9816.hdf5"
GROUP = "photometry"
VENV_BIN = os.path.dirname(sys.executable)

# PZInform settings small enough to train in about a second on one CPU core
TINY_INFORM = {
    "seed": 0,
    "device": "cpu",
    "n_members": 2,
    "n_components": 3,
    "hidden": 16,
    "n_layers": 1,
    "max_epochs": 3,
    "patience": 5,
    "batch_size": 64,
}

# the same settings as EnsembleConfig keyword arguments
TINY_ENSEMBLE = {k: v for k, v in TINY_INFORM.items() if k != "device"}


def mag_col(band: str) -> str:
    return f"mag_{band}_lsst"


def err_col(band: str) -> str:
    return f"mag_err_{band}_lsst"


# ---------------------------------------------------------------------------- catalogs
def read_catalog(path: str, group: str = GROUP) -> dict[str, np.ndarray]:
    """Every column of a catalog group, as numpy arrays."""
    with h5py.File(resolve_path(path), "r") as f:
        g = f[group] if group else f
        return {k: v[:] for k, v in g.items() if isinstance(v, h5py.Dataset)}


def write_catalog(path, columns: dict[str, np.ndarray], group: str = GROUP) -> str:
    """Write ``columns`` as 1-d datasets of ``group`` (RAIL layout); return the path."""
    path = str(path)
    with h5py.File(path, "w") as f:
        g = f.require_group(group) if group else f
        for k, v in columns.items():
            g.create_dataset(k, data=np.asarray(v))
    return path


def subset(columns: dict[str, np.ndarray], rows: np.ndarray, drop=()) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in columns.items() if k not in drop}


def mags_errs(columns: dict[str, np.ndarray], bands=BANDS) -> tuple[np.ndarray, np.ndarray]:
    """(n, n_bands) magnitude and error arrays from catalog columns."""
    m = np.stack([np.asarray(columns[mag_col(b)], dtype=np.float32) for b in bands], axis=1)
    e = np.stack([np.asarray(columns[err_col(b)], dtype=np.float32) for b in bands], axis=1)
    return m, e


@pytest.fixture(scope="session")
def train100() -> dict[str, np.ndarray]:
    """RAIL's 100-galaxy training catalog."""
    return read_catalog(TRAIN_100)


@pytest.fixture(scope="session")
def valid10() -> dict[str, np.ndarray]:
    """RAIL's 10-galaxy validation catalog."""
    return read_catalog(VALID_10)


@pytest.fixture(scope="session")
def dc2() -> dict[str, np.ndarray]:
    """RAIL's 10k-row DC2 training catalog (sorted by redshift: sample it at random)."""
    return read_catalog(DC2_TRAIN)


def random_rows(n_total: int, n: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``n`` sorted random row indices out of ``n_total`` (optionally avoiding ``exclude``)."""
    pool = np.arange(n_total)
    if exclude is not None:
        pool = np.setdiff1d(pool, exclude)
    return np.sort(np.random.default_rng(seed).choice(pool, size=n, replace=False))


# ---------------------------------------------------------------------------- stages
def write_config(path, inform: dict | None = None, estimate: dict | None = None,
                 global_: dict | None = None) -> str:
    """Write a stage-configuration YAML (like stages/photoz.yml) and return its path."""
    cfg = {"global": {"hdf5_groupname": GROUP, **(global_ or {})}}
    if inform is not None:
        cfg["PZInform"] = inform
    if estimate is not None:
        cfg["PZEstimate"] = estimate
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return str(path)


def run_stage(stage_name: str, config: str, **io: str) -> None:
    """Run a calipers stage in-process exactly as ``python -m calipers`` does.

    The command line is parsed by the stage's own ceci parser and handed to
    ``ceci.PipelineStage.execute``, which calls ``validate()``, ``run()`` and ``finalize()``.
    """
    import calipers.stages  # noqa: F401  (registers the stages)
    from ceci import PipelineStage

    cls = PipelineStage.get_stage(stage_name)
    argv = [stage_name, *(f"--{k}={v}" for k, v in io.items()), f"--config={config}"]
    cls.execute(cls.parse_command_line(argv))


def inprogress(path) -> Path:
    """The name ceci writes an output to before renaming it."""
    p = Path(path)
    return p.parent / f"inprogress_{p.name}"


def leftovers(directory) -> list[str]:
    """Names in ``directory`` that look like (partial) stage outputs."""
    return sorted(n for n in os.listdir(directory) if n.startswith("inprogress_") or ".rank" in n or n.endswith(".tmp"))


def write_pipeline(tmp: Path, pipe: dict, stages: dict, **top) -> Path:
    """Write ``stages`` as ``tmp/config.yml`` and ``pipe`` (a ceci pipeline dict) as
    ``tmp/pipeline.yml``, its outputs and logs under ``tmp/out``, one thread per stage; ``top``
    overrides more of the pipeline's top-level keys (``inputs``)."""
    config = tmp / "config.yml"
    config.write_text(yaml.safe_dump(stages, sort_keys=False))
    pipe.update(config=str(config), output_dir=str(tmp / "out"), log_dir=str(tmp / "out" / "logs"), **top)
    pipe["site"]["max_threads"] = 1
    for stage in pipe["stages"]:
        stage["threads_per_process"] = 1
    path = tmp / "pipeline.yml"
    path.write_text(yaml.safe_dump(pipe, sort_keys=False))
    return path


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: the venv's bin first on PATH, few threads."""
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A ugrizy model trained by the PZInform stage on RAIL's 100-galaxy catalog."""
    d = tmp_path_factory.mktemp("tiny_model")
    cfg = write_config(d / "config.yml", inform=dict(TINY_INFORM, bands=BANDS))
    model = d / "model"
    run_stage("PZInform", cfg, training_catalog=TRAIN_100, model=str(model))
    return str(model)


@pytest.fixture(scope="session")
def griz_model_dir(tmp_path_factory) -> str:
    """A model trained on the g, r, i, z bands only."""
    d = tmp_path_factory.mktemp("griz_model")
    cfg = write_config(d / "config.yml", inform=dict(TINY_INFORM, bands=["g", "r", "i", "z"]))
    model = d / "model"
    run_stage("PZInform", cfg, training_catalog=TRAIN_100, model=str(model))
    return str(model)


# ---------------------------------------------------------------------------- MPI (simulated)
class ThreadComm:
    """The slice of an MPI communicator the stages use, for ranks running as threads."""

    def __init__(self, rank: int, size: int, barrier, shared: dict):
        self.rank, self.size, self.barrier, self.shared = rank, size, barrier, shared

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Barrier(self):
        self.barrier.wait()

    def bcast(self, obj, root=0):
        if self.rank == root:
            self.shared["bcast"] = obj
        self.barrier.wait()
        out = self.shared["bcast"]
        self.barrier.wait()
        return out

    def gather(self, obj, root=0):
        self.shared[("gather", self.rank)] = obj
        self.barrier.wait()
        out = [self.shared[("gather", r)] for r in range(self.size)] if self.rank == root else None
        self.barrier.wait()
        return out


def run_as_ranks(stage_cls, args: dict, size: int = 2) -> None:
    """Run a stage as ``size`` MPI-like ranks (threads sharing a ThreadComm); re-raise the first error."""
    import threading

    barrier = threading.Barrier(size, timeout=120)
    errors: list[BaseException] = []
    shared: dict = {}

    def rank_main(rank):
        try:
            stage = stage_cls(dict(args), comm=ThreadComm(rank, size, barrier, shared))
            assert stage.rank == rank and stage.size == size and stage.is_mpi()
            stage.validate()
            stage.run()
            stage.finalize()
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
