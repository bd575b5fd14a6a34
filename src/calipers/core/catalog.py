"""HDF5 catalogs: columns in a group, read in chunks, split across MPI ranks.

The layout is RAIL's: one group (e.g. ``photometry``; ``""`` for the file root) holding
one 1-d dataset per column, all of the same length.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import h5py
import numpy as np

from calipers.core.errors import CatalogError
from calipers.core.paths import resolve_path

log = logging.getLogger(__name__)


def _group(f: h5py.File, group: str, path: str) -> h5py.Group:
    if not group:
        return f
    if group not in f:
        raise CatalogError(f"{path}: no group '{group}' in the file (top-level keys: {sorted(f.keys())})")
    return f[group]


def catalog_info(path: str, group: str) -> tuple[int, list[str]]:
    """Return (number of rows, column names) of a catalog group."""
    path = resolve_path(path)
    with h5py.File(path, "r") as f:
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


def read_columns(path: str, group: str, columns: Sequence[str], start: int = 0, end: int | None = None) -> dict[str, np.ndarray]:
    """Read rows [start, end) of the given columns."""
    require_columns(path, group, columns)
    path = resolve_path(path)
    with h5py.File(path, "r") as f:
        g = _group(f, group, path)
        return {c: g[c][start:end] for c in columns}


def chunk_ranges(n_rows: int, chunk_size: int, rank: int = 0, size: int = 1) -> list[tuple[int, int]]:
    """Row ranges [start, end) of the chunks this rank handles (round-robin over chunks)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    starts = range(0, n_rows, chunk_size)
    return [(s, min(s + chunk_size, n_rows)) for i, s in enumerate(starts) if i % size == rank]


def iter_chunks(
    path: str, group: str, columns: Sequence[str], chunk_size: int, rank: int = 0, size: int = 1
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Yield (start, end, {column: array}) for this rank's chunks; memory is one chunk."""
    n = require_columns(path, group, columns)
    path = resolve_path(path)
    with h5py.File(path, "r") as f:
        g = _group(f, group, path)
        for start, end in chunk_ranges(n, chunk_size, rank, size):
            yield start, end, {c: g[c][start:end] for c in columns}
