"""Array sets: HDF5 files of per-object arrays with a leading row axis, a metadata table and fixed
arrays, written chunk by chunk and atomically (the generic form of the image and spectrum sets;
transit light curves and Gaussian-vector predictions use it).

Layout: datasets ``<name>[N, ...]`` (the per-object arrays), group ``fixed`` (arrays shared by every
row: a wavelength grid), group ``meta`` (one [N] column each), attributes ``kind`` (what the set
holds, checked on reading), ``provenance`` and further JSON attributes.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from calipers.core.atomic import temporary_path
from calipers.core.catalog import open_hdf5
from calipers.core.errors import FileFormatError
from calipers.core.provenance import write_provenance_hdf5

log = logging.getLogger(__name__)

__all__ = ["ArraySetWriter", "array_set_info", "read_array_set"]

_RESERVED = ("kind", "provenance")


class ArraySetWriter:
    """Write an array set chunk by chunk; as a context manager, leaving the block normally renames
    the finished file onto ``path``, an exception removes it (``path`` is then untouched).

    Parameters
    ----------
    path : the file to write
    kind : what the set holds (stored, and checked by :func:`read_array_set`)
    arrays : name -> (trailing shape, dtype) of each per-row array
    fixed : name -> array stored once
    attrs : name -> JSON-able value
    provenance : stored as the ``provenance`` attribute (JSON) and group
    """

    def __init__(self, path: str, kind: str, arrays: dict[str, tuple[tuple[int, ...], Any]],
                 fixed: dict[str, np.ndarray] | None = None, attrs: dict[str, Any] | None = None,
                 provenance: dict | None = None):
        self.path, self.kind = str(path), kind
        self.shapes = {k: (tuple(int(s) for s in shape), np.dtype(dt)) for k, (shape, dt) in arrays.items()}
        self.attrs = dict(attrs or {})
        clash = sorted(set(self.attrs) & set(_RESERVED))
        if clash:
            raise ValueError(f"{self.path}: attributes {clash} are written by the array set itself")
        for k, v in self.attrs.items():
            try:
                json.dumps(v)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{self.path}: attribute '{k}' is not JSON-able ({err})") from err
        self.provenance = dict(provenance or {})
        self._tmp = temporary_path(self.path)
        self._closed, self._n, self._meta = False, 0, None
        try:
            self._file = h5py.File(self._tmp, "w")
            for name, (shape, dt) in self.shapes.items():
                per_row = max(1, int(np.prod(shape, dtype=np.int64)) * dt.itemsize)
                chunk_rows = max(1, min(256, (1 << 20) // per_row))
                self._file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dt,
                                          chunks=(chunk_rows, *shape))
            g = self._file.create_group("fixed")
            for name, value in (fixed or {}).items():
                g.create_dataset(name, data=np.asarray(value))
            self._file.create_group("meta")
        except BaseException:
            self.abort()
            raise

    @property
    def n(self) -> int:
        return self._n

    def append(self, rows: dict[str, np.ndarray], meta: dict[str, np.ndarray] | None = None) -> None:
        """Append the rows of every per-row array (all of them, one row count, the declared trailing
        shapes) and of the meta columns (the same columns every time)."""
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        where = f"{self.path} (chunk appended at row {self._n})"
        if set(rows) != set(self.shapes):
            raise FileFormatError(f"{where}: arrays {sorted(rows)}; the set has {sorted(self.shapes)}")
        counts = {np.shape(v)[0] for v in rows.values()} | {np.shape(v)[0] for v in (meta or {}).values()}
        if len(counts) != 1:
            raise FileFormatError(f"{where}: arrays and meta columns have different row counts {sorted(counts)}")
        m = counts.pop()
        for name, value in rows.items():
            if np.shape(value)[1:] != self.shapes[name][0]:
                raise FileFormatError(f"{where}: '{name}' has rows of shape {np.shape(value)[1:]}, the set "
                                      f"{self.shapes[name][0]}")
        meta = {k: np.asarray(v) for k, v in (meta or {}).items()}
        if self._meta is None:
            for k, v in meta.items():
                dt = h5py.string_dtype() if v.dtype.kind in "OU" else v.dtype
                self._file["meta"].create_dataset(k, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
            self._meta = sorted(meta)
        if sorted(meta) != self._meta:
            raise FileFormatError(f"{where}: meta columns {sorted(meta)}; the set has {self._meta}")
        n0 = self._n
        for name, value in rows.items():
            ds = self._file[name]
            ds.resize((n0 + m, *self.shapes[name][0]))
            ds[n0:] = np.asarray(value, dtype=self.shapes[name][1])
        for k, v in meta.items():
            ds = self._file["meta"][k]
            ds.resize((n0 + m,))
            ds[n0:] = v.astype(object) if v.dtype.kind == "U" else v
        self._n += m

    def close(self) -> str:
        if self._closed:
            return self.path
        try:
            f = self._file
            f.attrs["kind"] = self.kind
            f.attrs["provenance"] = json.dumps(self.provenance, default=str)
            for k, v in self.attrs.items():
                f.attrs[k] = json.dumps(v)
            write_provenance_hdf5(f, {k: str(v) for k, v in self.provenance.items()})
            f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        log.info("wrote %s %s (%d rows)", self.kind, self.path, self._n)
        return self.path

    def abort(self) -> None:
        self._closed = True
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - not opened, closed or broken: removing the file is what matters
            pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> ArraySetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _check_kind(f: h5py.File, path: str, kind: str | None) -> str:
    found = f.attrs.get("kind")
    found = found.decode() if isinstance(found, bytes) else found
    if kind is not None and found != kind:
        raise FileFormatError(f"{path}: holds {found!r}, expected {kind!r}")
    return found


def array_set_info(path: str, kind: str | None = None) -> dict:
    """Rows, the per-row arrays' shapes, the meta columns, the fixed arrays and the attributes."""
    with open_hdf5(path, "array set (HDF5)") as f:
        found = _check_kind(f, path, kind)
        arrays = {k: tuple(v.shape[1:]) for k, v in f.items() if isinstance(v, h5py.Dataset)}
        counts = {f[k].shape[0] for k in arrays}
        if len(counts) > 1:
            raise FileFormatError(f"{path}: the arrays have different row counts {sorted(counts)}")
        attrs = {}
        for k, v in f.attrs.items():
            if k == "kind":
                continue
            try:
                attrs[k] = json.loads(v)
            except (TypeError, ValueError):
                attrs[k] = v
        return {"kind": found, "n": counts.pop() if counts else 0, "arrays": arrays,
                "meta_columns": sorted(f["meta"]) if "meta" in f else [],
                "fixed": {k: np.asarray(v) for k, v in f["fixed"].items()} if "fixed" in f else {}, "attrs": attrs}


def read_array_set(path: str, names: Sequence[str] | None = None, rows: slice | None = None,
                   meta: Sequence[str] | None = (), kind: str | None = None) -> tuple[dict, dict]:
    """``(arrays, meta)`` of rows ``rows`` (all by default): the per-row arrays ``names`` (all by
    default) and the meta columns ``meta`` (None = all). Errors name the file and what is missing."""
    rows = slice(None) if rows is None else rows
    with open_hdf5(path, "array set (HDF5)") as f:
        _check_kind(f, path, kind)
        have = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
        names = have if names is None else list(names)
        missing = sorted(set(names) - set(have))
        if missing:
            raise FileFormatError(f"{path}: no array(s) {missing} (it has {sorted(have)})")
        cols = sorted(f["meta"]) if meta is None else list(meta)
        missing = sorted(set(cols) - set(f["meta"]))
        if missing:
            raise FileFormatError(f"{path}: no meta column(s) {missing} (it has {sorted(f['meta'])})")
        try:
            arrays = {k: f[k][rows] for k in names}
            values = {}
            for k in cols:
                v = f["meta"][k][rows]
                values[k] = v.astype(str) if v.dtype.kind in "OS" else v
        except OSError as err:
            raise FileFormatError(f"{path}: rows {rows} cannot be read; is the file truncated? ({err})") from err
    return arrays, values
