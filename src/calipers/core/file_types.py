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


class ImageSetFile(HDFFile):
    """An image set (cutouts): ``data`` (N, bands, H, W), ``ivar`` (same), a ``meta`` group of
    columns (:mod:`calipers.core.image_sets`)."""

    suffix = "hdf5"


class SpectrumSetFile(HDFFile):
    """A spectrum set: ``flux`` (N, n_pix), ``ivar`` (same), optional noise-free ``model_flux``,
    ``wavelength`` (n_pix,) and a ``meta`` group of columns (:mod:`calipers.core.spectrum_sets`)."""

    suffix = "hdf5"


class ClassPredictionsFile(HDFFile):
    """Class probabilities: ``logit[N]``, ``prob[N]``, ``member_logits[M, N]``, ``member_logit_var[M, N]``
    and the images' metadata in ``meta`` (:mod:`calipers.core.class_predictions`)."""

    suffix = "hdf5"


class CutoutIndex(DataFile):
    """The index of a directory of FITS cutouts: a CSV (or HDF5) table with a ``file`` column and the
    labels and metadata of each cutout."""

    suffix = "csv"


class JSONFile(DataFile):
    """A JSON document (a fitted calibrator, a selection function)."""

    suffix = "json"


class TransitLightCurveFile(HDFFile):
    """Transit light curves per planet and wavelength bin, an array set
    (:mod:`calipers.core.transit_files`)."""

    suffix = "hdf5"


class TransitDepthFile(HDFFile):
    """Extracted transit depths per planet and bin, an array set (:mod:`calipers.core.transit_files`)."""

    suffix = "hdf5"


class GaussianVectorFile(HDFFile):
    """Gaussian vectors ``mu[N, K]``, ``sigma[N, K]`` with meta ``id``, an array set
    (:mod:`calipers.core.transit_files`)."""

    suffix = "hdf5"


class ArraySetFile(HDFFile):
    """Any array set (:mod:`calipers.core.array_sets`): per-row arrays, ``meta`` and ``fixed`` groups."""

    suffix = "hdf5"
