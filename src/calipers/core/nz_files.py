"""Tomography and n(z) files: what ``TomographicBinning`` and ``NZEstimate`` write and the
n(z) gate, ``TheoryCl`` and the C_ell simulator read.

- tomography (HDF5): group ``tomography`` with ``bin`` (per galaxy, -1 = unbinned), the point
  estimate used, the p(z) file's ``id`` when it had one, and attributes ``edges``, ``counts``,
  ``assign_by``;
- n(z) (a qp ``interp`` ensemble): rows ``0..n_bins-1`` the fiducial n(z), then ``n_realizations``
  blocks of ``n_bins`` rows; ancil ``bin`` and ``realization`` (-1 for the fiducial).
"""
from __future__ import annotations

import json

import numpy as np

from calipers.core.catalog import open_hdf5
from calipers.core.errors import FileFormatError
from calipers.core.provenance import write_provenance_hdf5

TOMO_GROUP = "tomography"


def write_tomography(path: str, bins: np.ndarray, edges: np.ndarray, counts: np.ndarray, assign_by: str,
                     point_kind: str, zpoint: np.ndarray, ids: np.ndarray | None, provenance: dict) -> None:
    """Write a tomography file (see the module docstring)."""
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group(TOMO_GROUP)
        g.create_dataset("bin", data=bins)
        g.create_dataset(point_kind, data=zpoint)
        if ids is not None:
            g.create_dataset("id", data=ids)
        g.attrs["edges"] = json.dumps([float(e) for e in edges])
        g.attrs["counts"] = json.dumps(np.asarray(counts).tolist())
        g.attrs["assign_by"] = assign_by
        write_provenance_hdf5(f, provenance)


def read_tomography(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(bin per galaxy, bin edges) from a TomographicBinning output."""
    with open_hdf5(path, "tomography file (HDF5)") as f:
        if TOMO_GROUP not in f:
            raise FileFormatError(f"{path}: no '{TOMO_GROUP}' group; is it a TomographicBinning output?")
        g = f[TOMO_GROUP]
        try:
            return g["bin"][:], np.asarray(json.loads(g.attrs["edges"]), dtype=float)
        except (KeyError, OSError, json.JSONDecodeError) as err:
            raise FileFormatError(f"{path}: incomplete or corrupt tomography group ({err})") from err


def write_nz(path: str, zgrid: np.ndarray, fiducial: np.ndarray, realizations: np.ndarray, provenance: dict) -> None:
    """Write fiducial n(z) (n_bins, nz) and realizations (n_real, n_bins, nz) as a qp interp
    ensemble (see the module docstring), with ``provenance``."""
    import h5py
    import qp

    nb = len(fiducial)
    n_real = len(realizations)
    yvals = np.concatenate([fiducial, np.asarray(realizations).reshape(-1, len(zgrid))])
    ens = qp.Ensemble(qp.interp, data={"xvals": zgrid, "yvals": yvals})
    ens.set_ancil({"bin": np.tile(np.arange(nb), 1 + n_real), "realization": np.repeat(np.arange(-1, n_real), nb)})
    ens.write_to(path)
    with h5py.File(path, "a") as f:
        write_provenance_hdf5(f, provenance)


def read_nz(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zgrid, fiducial (n_bins, nz), realizations (n_real, n_bins, nz)) from an NZEstimate output."""
    import qp

    with open_hdf5(path, "n(z) file (qp HDF5)"):
        pass  # a missing or unreadable file is named here, before qp's own error
    try:
        ens = qp.read(path)
    except Exception as err:  # noqa: BLE001 - qp raises many kinds; name the file
        raise FileFormatError(f"{path}: cannot be read as a qp ensemble ({type(err).__name__}: {err})") from err
    if ens.ancil is None or "realization" not in ens.ancil or "bin" not in ens.ancil:
        raise FileFormatError(f"{path}: not an NZEstimate output (no 'realization'/'bin' ancil)")
    zgrid = np.asarray(ens.metadata["xvals"], dtype=float).ravel()
    y = np.asarray(ens.objdata["yvals"], dtype=float)
    r, b = np.asarray(ens.ancil["realization"]), np.asarray(ens.ancil["bin"])
    nb = int(b.max()) + 1
    fid = y[r < 0][np.argsort(b[r < 0])]
    n_real = int(r.max()) + 1
    real = np.empty((n_real, nb, len(zgrid)))
    real[r[r >= 0], b[r >= 0]] = y[r >= 0]
    return zgrid, fid, real
