"""HDF5 catalogs: columns in a group, read in chunks, split across MPI ranks.

The layout is RAIL's: one group (e.g. ``photometry``; ``""`` for the file root) holding
one 1-d dataset per column, all of the same length. Every reader here names the file, the group
and the column in its errors: a missing or truncated file, a missing group or column, a column
that is not 1-d or (where numbers are needed) not numeric.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import h5py
import numpy as np

from calipers.core.errors import CatalogError, FileFormatError
from calipers.core.paths import resolve_path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_hdf5(path: str, what: str = "HDF5 file") -> Iterator[h5py.File]:
    """Open an HDF5 file for reading; a missing file is a ``FileNotFoundError`` and a file that
    is not (or no longer) readable HDF5 - truncated, another format - a
    :class:`~calipers.core.errors.FileFormatError`, both naming the path."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (expected a {what})")
    if os.path.isdir(path):
        raise FileFormatError(f"{path}: is a directory, expected a {what}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise FileFormatError(f"{path}: cannot be read as a {what}: it is truncated, corrupt or not HDF5 ({err})") from err
    with f:
        yield f


def _group(f: h5py.File, group: str, path: str) -> h5py.Group:
    if not group:
        return f
    if group not in f:
        raise CatalogError(f"{path}: no group '{group}' in the file (top-level keys: {sorted(f.keys())})")
    return f[group]


def _check_column(ds: h5py.Dataset, path: str, group: str, name: str, numeric: bool) -> None:
    if ds.ndim != 1:
        raise CatalogError(f"{path}: column '{name}' of group '{group}' has shape {ds.shape}; a catalog column "
                           "must be 1-d (one value per row)")
    if numeric and ds.dtype.kind not in "biuf":
        raise CatalogError(f"{path}: column '{name}' of group '{group}' holds {ds.dtype} values; a numeric "
                           "column is needed")


def _read(g: h5py.Group, path: str, group: str, name: str, start: int, end: int | None, numeric: bool) -> np.ndarray:
    ds = g[name]
    if not isinstance(ds, h5py.Dataset):
        raise CatalogError(f"{path}: '{name}' in group '{group}' is a group, not a column")
    _check_column(ds, path, group, name, numeric)
    try:
        return ds[start:end]
    except OSError as err:
        raise FileFormatError(f"{path}: rows {start}:{end} of column '{name}' (group '{group}') cannot be read; "
                              f"is the file truncated? ({err})") from err


def catalog_info(path: str, group: str) -> tuple[int, list[str]]:
    """Return (number of rows, column names) of a catalog group."""
    path = resolve_path(path)
    with open_hdf5(path, "HDF5 catalog") as f:
        g = _group(f, group, path)
        cols = [k for k, v in g.items() if isinstance(v, h5py.Dataset)]
        lengths = {g[k].shape[0] for k in cols if g[k].ndim >= 1}
    if not cols:
        raise CatalogError(f"{path}: group '{group}' holds no columns")
    if len(lengths) != 1:
        raise CatalogError(f"{path}: columns of group '{group}' have different lengths {sorted(lengths)}")
    return lengths.pop(), cols


def require_columns(path: str, group: str, columns: Sequence[str]) -> int:
    """Check that every column exists; return the number of rows.

    Raises
    ------
    CatalogError
        Naming the file, the group and every missing column at once.
    """
    n, have = catalog_info(path, group)
    missing = [c for c in columns if c not in have]
    if missing:
        raise CatalogError(
            f"{resolve_path(path)}: group '{group}' is missing column(s) {missing}; "
            f"it has {sorted(have)}"
        )
    return n


def read_columns(path: str, group: str, columns: Sequence[str], start: int = 0, end: int | None = None,
                 numeric: bool = True) -> dict[str, np.ndarray]:
    """Read rows [start, end) of the given columns (each checked to be 1-d and, unless
    ``numeric`` is false, numeric; errors name the file, group and column)."""
    require_columns(path, group, columns)
    path = resolve_path(path)
    with open_hdf5(path, "HDF5 catalog") as f:
        g = _group(f, group, path)
        return {c: _read(g, path, group, c, start, end, numeric) for c in columns}


def chunk_ranges(n_rows: int, chunk_size: int, rank: int = 0, size: int = 1) -> list[tuple[int, int]]:
    """Row ranges [start, end) of the chunks this rank handles (round-robin over chunks)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    starts = range(0, n_rows, chunk_size)
    return [(s, min(s + chunk_size, n_rows)) for i, s in enumerate(starts) if i % size == rank]


def iter_chunks(
    path: str, group: str, columns: Sequence[str], chunk_size: int, rank: int = 0, size: int = 1,
    numeric: bool = True,
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Yield (start, end, {column: array}) for this rank's chunks; memory is one chunk."""
    n = require_columns(path, group, columns)
    path = resolve_path(path)
    with open_hdf5(path, "HDF5 catalog") as f:
        g = _group(f, group, path)
        for c in columns:
            _check_column(g[c], path, group, c, numeric)
        for start, end in chunk_ranges(n, chunk_size, rank, size):
            yield start, end, {c: _read(g, path, group, c, start, end, numeric) for c in columns}


def read_truth(path: str, group: str, column: str, n_expected: int, against: str) -> np.ndarray:
    """True values (e.g. redshifts) of a catalog column, checked to have one row per object of
    ``against`` (the file they are compared with, named in the error)."""
    z = read_columns(path, group, [column])[column]
    if len(z) != n_expected:
        raise ValueError(f"{against} holds {n_expected} p(z) but {path} has {len(z)} rows")
    return z


def check_matching_ids(source: str, dataset: str, catalog: str, group: str, id_column: str,
                       chunk_size: int = 1_000_000) -> bool:
    """Check that the object ids of ``source`` (its HDF5 dataset ``dataset``, e.g. a qp file's
    ``ancil/id``) equal the catalog's ``id_column`` row by row.

    Returns False (nothing compared) when ``id_column`` is empty or either side has no ids; True
    when every row matched.

    Raises
    ------
    CatalogError
        At the first row whose ids differ (or when the row counts differ), naming both files.
    """
    if not id_column:
        return False
    catalog = resolve_path(catalog)
    with open_hdf5(source) as fs, open_hdf5(catalog, "HDF5 catalog") as fc:
        if dataset not in fs:
            return False
        g = _group(fc, group, catalog)
        if id_column not in g:
            return False
        a, b = fs[dataset], g[id_column]
        _check_column(b, catalog, group, id_column, numeric=False)
        if a.shape[0] != b.shape[0]:
            raise CatalogError(f"{source} holds {a.shape[0]} objects but {catalog} has {b.shape[0]} rows")
        for start in range(0, a.shape[0], chunk_size):
            compare_ids(a[start:start + chunk_size], b[start:start + chunk_size], start, source, catalog,
                        id_column, f"'{dataset}'")
    return True


def compare_ids(ids: np.ndarray, catalog_ids: np.ndarray, start: int, source: str, catalog: str, id_column: str,
                source_name: str = "ancil 'id'") -> None:
    """Raise a :class:`~calipers.core.errors.CatalogError` at the first row (counted from the
    file start: ``start`` is the chunk's first row) whose id in ``source`` differs from the
    catalog's."""
    ids, catalog_ids = np.asarray(ids), np.asarray(catalog_ids)
    if ids.shape != catalog_ids.shape:
        raise CatalogError(f"{source} and {catalog}: rows {start}:{start + len(ids)} hold {len(ids)} and "
                           f"{len(catalog_ids)} ids")
    bad = np.flatnonzero(ids != catalog_ids)
    if bad.size:
        i = int(bad[0])
        raise CatalogError(
            f"{source} and {catalog} are not in the same row order: row {start + i} has id {ids[i].tolist()!r} in "
            f"{source} ({source_name}) but {catalog_ids[i].tolist()!r} in {catalog} (column '{id_column}'); "
            f"{bad.size} of rows {start}:{start + len(ids)} differ")


# ---------------------------------------------------------------------------- writing, row by row
def growable_catalog(path: str, group: str, dtypes: dict, provenance: dict):
    """Open a new HDF5 catalog whose columns grow as rows are appended: (file, group)."""
    f = h5py.File(path, "w")
    g = f.create_group(group) if group else f
    for k, dt in dtypes.items():
        g.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dt, chunks=True)
    prov = f.create_group("provenance")
    for key, value in provenance.items():
        prov.attrs[key] = value
    return f, g


def append_rows(g, data: dict, keep: np.ndarray) -> None:
    """Append the rows ``keep`` (boolean mask) of the columns ``data`` to the group made by
    :func:`growable_catalog`."""
    m = int(keep.sum())
    if m == 0:
        return
    for k, d in g.items():
        if isinstance(d, h5py.Dataset):
            d.resize((d.shape[0] + m,))
            d[-m:] = data[k][keep]
