"""The few shared file types every calipers stage declares (ceci ``DataFile`` subclasses).

- :class:`HDF5Catalog`  - columns (1-d datasets) in a group, RAIL layout;
- :class:`QPEnsembleFile` - a qp ensemble in HDF5, readable by ``qp.read``;
- :class:`ModelDir`     - a directory with ``metadata.json`` and torch state dicts (no pickle);
- :class:`ReportDir`    - a directory with ``report.json``, PNG figures and ``index.html``;
- :class:`SaccFile`     - a sacc FITS file (C_ell data vector, covariance, n(z) tracers).
"""
from __future__ import annotations

from ceci.file_types import DataFile, Directory, HDFFile


class HDF5Catalog(HDFFile):
    """HDF5 catalog: one 1-d dataset per column inside a group."""

    suffix = "hdf5"


class QPEnsembleFile(HDFFile):
    """A qp ensemble (``meta``/``data``/``ancil`` groups) plus calipers ``provenance``."""

    suffix = "hdf5"


class ModelDir(Directory):
    """A model directory: ``metadata.json`` + ``weights.pt`` (state dicts, ``weights_only`` loadable)."""

    suffix = ""


class ReportDir(Directory):
    """A report directory: ``report.json``, PNG figures and an HTML page."""

    suffix = ""


class SaccFile(DataFile):
    """A sacc data file (FITS): data vector, covariance and tracers, read by ``sacc.Sacc.load_fits``."""

    suffix = "fits"


class SimulationFile(HDFFile):
    """Simulations: ``simulations/theta`` (n, n_params) and ``simulations/x`` (n, n_data), with the
    simulator's name and options in the group's attributes."""

    suffix = "hdf5"


class SamplesFile(HDFFile):
    """Posterior samples: ``samples`` (n, n_params), ``param_names``, ``log_prob``."""

    suffix = "hdf5"
