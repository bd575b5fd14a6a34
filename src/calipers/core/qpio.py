"""Streaming writes of qp ensembles: chunks go straight into pre-allocated HDF5 datasets.

The file has qp's own layout (``meta``, ``data``, ``ancil`` groups), so ``qp.read`` and RAIL's
evaluators open it unchanged; calipers adds a ``provenance`` group that qp ignores.
Under MPI (without a parallel HDF5 build) each rank writes its chunks to a part file and
rank 0 merges the parts chunk by chunk, so no rank ever holds the whole catalog.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from calipers.core.errors import FileFormatError

log = logging.getLogger(__name__)


class QPChunkWriter:
    """Write a qp ensemble of ``n_rows`` objects chunk by chunk.

    Parameters
    ----------
    path : str
        Output file (written in place; callers give a temporary name and rename at the end).
    n_rows : int
        Number of objects in the file.
    meta : dict
        qp ``meta`` table (from ``ensemble.build_tables()["meta"]``), e.g. pdf_name=mixmod.
    data_shapes : dict
        Column name -> per-object shape, e.g. ``{"weights": (50,), ...}``.
    ancil_names : sequence of str
        Per-object ancillary columns (point estimates, ids).
    provenance : dict, optional
        String attributes stored in a ``provenance`` group.
    background : bool
        Write each chunk in a background thread while the caller computes the next one (at most
        one chunk in flight: ``write`` first waits for the previous chunk, and re-raises its
        error). The arrays passed to ``write`` must not be modified afterwards.
    """

    def __init__(self, path: str, n_rows: int, meta: dict, data_shapes: dict, ancil_names: Sequence[str],
                 provenance: dict | None = None, dtype=np.float32, ancil_dtypes: dict | None = None,
                 background: bool = False):
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="qp-writer") if background else None
        self._pending = None
        self.file = None
        try:
            self.file = h5py.File(path, "w")
            self._layout(n_rows, meta, data_shapes, ancil_names, provenance, dtype, ancil_dtypes)
        except BaseException:
            # a failed setup leaves no open handle, no thread and no half-made file behind
            if self.file is not None:
                self.file.close()
                if os.path.exists(path):
                    os.remove(path)
            if self._pool is not None:
                self._pool.shutdown()
            raise

    def _layout(self, n_rows, meta, data_shapes, ancil_names, provenance, dtype, ancil_dtypes) -> None:
        g = self.file.create_group("meta")
        for k, v in meta.items():
            g.create_dataset(k, data=np.asarray(v))
        d = self.file.create_group("data")
        for k, shape in data_shapes.items():
            d.create_dataset(k, shape=(n_rows, *shape), dtype=dtype)
        a = self.file.create_group("ancil")
        ancil_dtypes = ancil_dtypes or {}
        for k in ancil_names:
            a.create_dataset(k, shape=(n_rows,), dtype=ancil_dtypes.get(k, np.float64))
        if provenance:
            p = self.file.create_group("provenance")
            for k, v in provenance.items():
                p.attrs[k] = v if isinstance(v, str) else json.dumps(v)

    def write(self, start: int, end: int, data: dict, ancil: dict) -> None:
        """Rows ``[start, end)``: ``data`` and ``ancil`` columns (name -> array)."""
        if self._pool is None:
            self._write(start, end, data, ancil)
            return
        self.flush()
        self._pending = self._pool.submit(self._write, start, end, data, ancil)

    def _write(self, start: int, end: int, data: dict, ancil: dict) -> None:
        for k, v in data.items():
            self.file["data"][k][start:end] = v
        for k, v in ancil.items():
            self.file["ancil"][k][start:end] = v

    def flush(self) -> None:
        """Wait for a background write in flight (re-raising its error)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()  # a failed background write is raised here
            return
        # the body failed: close anyway, but never let a closing error replace the body's own
        try:
            self.close()
        except Exception as err:  # noqa: BLE001 - logged; the body's exception propagates
            log.warning("%s: error while closing after a failure (%s: %s)", self.path, type(err).__name__, err)


def merge_parts(target: str, parts: Sequence[tuple[str, Sequence[tuple[int, int]]]]) -> None:
    """Copy rank part files into ``target`` (already created with full-size datasets).

    ``parts`` lists (part path, row ranges) in the order the rows were written to the part.
    """
    with h5py.File(target, "a") as out:
        for part, ranges in parts:
            with h5py.File(part, "r") as src:
                offset = 0
                for start, end in ranges:
                    n = end - start
                    for group in ("data", "ancil"):
                        for k in src[group]:
                            out[group][k][start:end] = src[group][k][offset:offset + n]
                    offset += n
            os.remove(part)


def qp_size(path: str) -> int:
    """Number of distributions in a qp HDF5 file (without loading it)."""
    from calipers.core.catalog import open_hdf5

    with open_hdf5(path, "qp ensemble (HDF5)") as f:
        if "meta" not in f or "pdf_name" not in f["meta"] or "data" not in f or not len(f["data"]):
            raise FileFormatError(f"{path}: not a qp ensemble (needs meta/pdf_name and a data group; "
                                  f"top-level keys {sorted(f.keys())})")
        first = next(iter(f["data"].values()))
        return first.shape[0]


class RowEnsemble:
    """Mixin for the ensembles :func:`read_qp_rows` returns: qp squeezes the per-object data of a
    one-distribution ensemble to 1-d (``(K,)`` instead of ``(1, K)``) and refuses to slice it,
    so a one-row chunk (e.g. row 20,000 of 20,001 at ``chunk_size`` 20,000) broke every
    consumer that indexes rows. Here a chunk of n rows always has ``(n, ...)`` data and slices
    like any other ensemble."""

    @property
    def objdata(self):
        data = super().objdata
        if self.npdf != 1:
            return data
        return {k: np.reshape(v, (1, *np.shape(v))) if np.ndim(v) < 2 else v for k, v in data.items()}

    def __getitem__(self, key):
        if self.npdf == 1 and isinstance(key, slice) and range(1)[key] == range(1):
            return self
        return super().__getitem__(key)


def read_qp_rows(path: str, start: int, end: int):
    """Rows [start, end) of a qp HDF5 file as a qp Ensemble (mixmod, interp, hist, ...).

    Reads only those rows (plus the small ``meta`` table), so an ensemble of any size can be
    processed chunk by chunk. A one-row chunk keeps its ``(1, ...)`` data shapes
    (:class:`RowEnsemble`). Errors name the file and the rows.
    """
    import qp

    from calipers.core.catalog import open_hdf5

    if end <= start:
        raise ValueError(f"{path}: empty row range {start}:{end}")
    with open_hdf5(path, "qp ensemble (HDF5)") as f:
        if "meta" not in f or "pdf_name" not in f["meta"] or "data" not in f:
            raise FileFormatError(f"{path}: not a qp ensemble (no meta/pdf_name or data group)")
        name = f["meta"]["pdf_name"][0]
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            meta = {k: f["meta"][k][()] for k in f["meta"]}
            data = {k: f["data"][k][start:end] for k in f["data"]}
            ancil = {k: f["ancil"][k][start:end] for k in f["ancil"]} if "ancil" in f else {}
        except OSError as err:
            raise FileFormatError(f"{path}: rows {start}:{end} cannot be read; is the file truncated? ({err})") from err
    cls = qp.stats.__dict__.get(name) or getattr(qp, name, None)
    if cls is None:
        raise ValueError(f"{path}: unknown qp parameterization {name!r}")
    shared = {k: (v[0] if np.ndim(v) == 2 and v.shape[0] == 1 else v) for k, v in meta.items()
              if k not in ("pdf_name", "pdf_version")}
    ens = _row_ensemble_class()(cls, data={**shared, **data})
    if ancil:
        ens.set_ancil(ancil)
    return ens


_ROW_ENSEMBLE = None


def _row_ensemble_class():
    global _ROW_ENSEMBLE
    if _ROW_ENSEMBLE is None:  # qp is imported lazily (it is slow to import)
        import qp

        _ROW_ENSEMBLE = type("RowEnsemble", (RowEnsemble, qp.Ensemble), {"__doc__": RowEnsemble.__doc__})
    return _ROW_ENSEMBLE
