"""Simulation files (``Simulate`` output), the simulator a file's spec describes, and posterior
sample files (``SBIPosterior`` output).

Simulations: group ``simulations`` with ``theta`` (n, n_params) and ``x`` (n, n_data) and an
attribute ``spec`` (JSON: ``simulator``, ``options``, ``param_names``). Posterior samples:
``samples`` (n, n_params), ``param_names``, ``log_prob``, ``x_observed``, ``theta_true``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from calipers.core.catalog import open_hdf5
from calipers.core.errors import FileFormatError
from calipers.core.provenance import write_provenance_hdf5

GROUP = "simulations"


def write_simulations(path: str, theta: np.ndarray, x: np.ndarray, spec: dict, provenance: dict) -> None:
    """Write (theta, x) and the simulator spec (see the module docstring)."""
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group(GROUP)
        g.create_dataset("theta", data=theta)
        g.create_dataset("x", data=x)
        g.attrs["spec"] = json.dumps(spec)
        write_provenance_hdf5(f, provenance)


def read_simulations(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(theta, x, spec) from a Simulate output; spec = {"simulator", "options", "param_names"}."""
    with open_hdf5(path, "simulations file (HDF5)") as f:
        if GROUP not in f:
            raise FileFormatError(f"{path}: no '{GROUP}' group; is it a Simulate output?")
        g = f[GROUP]
        try:
            return g["theta"][:], g["x"][:], json.loads(g.attrs["spec"])
        except (KeyError, OSError, json.JSONDecodeError) as err:
            raise FileFormatError(f"{path}: incomplete or corrupt '{GROUP}' group ({err})") from err


def simulator_from_spec(spec: dict):
    """The simulator a spec describes; an ``nz_path`` option (an NZEstimate output) is read here and
    handed to the simulator as arrays."""
    from calipers.core.nz_files import read_nz
    from calipers.sbi import make_simulator

    options = dict(spec["options"])
    if "nz_path" in options:
        nz_path = options.pop("nz_path")
        if not os.path.exists(nz_path):
            raise FileNotFoundError(f"{nz_path}: the n(z) file the simulator {spec['simulator']!r} was built from "
                                    "no longer exists")
        options["zgrid"], options["nz_fid"], options["nz_real"] = read_nz(nz_path)
    return make_simulator(spec["simulator"], **options)


def write_posterior_samples(path: str, samples: np.ndarray, param_names, log_prob: np.ndarray,
                            x_observed: np.ndarray, theta_true: np.ndarray, provenance: dict) -> None:
    """Write posterior samples of one observation (see the module docstring)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("samples", data=samples)
        f.create_dataset("param_names", data=np.array(list(param_names), dtype="S"))
        f.create_dataset("log_prob", data=log_prob)
        f.create_dataset("x_observed", data=x_observed)
        f.create_dataset("theta_true", data=theta_true)
        write_provenance_hdf5(f, provenance)
