"""Config options and column helpers that several stage families share.

Stage modules never import each other; what two of them both need (the catalog column options,
the truth-catalog options, the gate options, the default bands) lives here, once.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from calipers.core.stage import Param

DEFAULT_BANDS = ["u", "g", "r", "i", "z", "y"]

CATALOG_OPTIONS = {
    "hdf5_groupname": Param(str, "photometry", msg="Group of the HDF5 catalog holding the columns ('' for the root)"),
    "mag_column": Param(str, "mag_{band}_lsst", msg="Magnitude column name pattern; {band} is replaced by each band"),
    "err_column": Param(str, "mag_err_{band}_lsst", msg="Magnitude-error column name pattern"),
}

TRUTH_OPTIONS = {
    "hdf5_groupname": Param(str, "photometry", msg="Group of the truth catalog holding the columns"),
    "redshift_column": Param(str, "redshift", msg="True-redshift column of the truth catalog"),
    "id_column": Param(str, "id", msg="Object-id column of the truth catalog; when both it and the p(z) ancil "
                                      "carry ids they must match row by row ('' = do not compare)"),
}

GATE_OPTIONS = {
    "on_fail": Param(str, "error", msg="error (stop the pipeline) or warn (log and go on; for exploration only)"),
}


def band_columns(config: Mapping, bands: Sequence[str]) -> tuple[list[str], list[str]]:
    """(magnitude columns, error columns) of ``bands`` from the ``mag_column``/``err_column`` patterns."""
    return ([config["mag_column"].format(band=b) for b in bands], [config["err_column"].format(band=b) for b in bands])


def model_catalog_columns(config: Mapping, tag: str = "catalog") -> dict:
    """``required_columns`` of a stage that applies a photo-z model to the catalog input ``tag``:
    the configured bands' magnitude and error columns (none when ``bands`` is empty: the model's
    bands, known only once the model exists)."""
    bands = list(config["bands"])
    mags, errs = band_columns(config, bands) if bands else ([], [])
    return {tag: (config["hdf5_groupname"], mags + errs)}


def stack(cols: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Columns ``names`` of a chunk as one (n, len(names)) float32 array."""
    return np.stack([np.asarray(cols[n], dtype=np.float32) for n in names], axis=1)
