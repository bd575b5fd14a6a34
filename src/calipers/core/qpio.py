"""Streaming writes of qp ensembles: chunks go straight into pre-allocated HDF5 datasets.

The file has qp's own layout (``meta``, ``data``, ``ancil`` groups), so ``qp.read`` and RAIL's
evaluators open it unchanged; calipers adds a ``provenance`` group that qp ignores.
Under MPI (without a parallel HDF5 build) each rank writes its chunks to a part file and
rank 0 merges the parts chunk by chunk, so no rank ever holds the whole catalog.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np


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
        self.file = h5py.File(path, "w")
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

    def __exit__(self, *exc):
        self.close()


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
    with h5py.File(path, "r") as f:
        first = next(iter(f["data"].values()))
        return first.shape[0]


def read_qp_rows(path: str, start: int, end: int):
    """Rows [start, end) of a qp HDF5 file as a qp Ensemble (mixmod, interp, hist, ...).

    Reads only those rows (plus the small ``meta`` table), so an ensemble of any size can be
    processed chunk by chunk.
    """
    import qp

    with h5py.File(path, "r") as f:
        name = f["meta"]["pdf_name"][0]
        name = name.decode() if isinstance(name, bytes) else str(name)
        meta = {k: f["meta"][k][()] for k in f["meta"]}
        data = {k: f["data"][k][start:end] for k in f["data"]}
        ancil = {k: f["ancil"][k][start:end] for k in f["ancil"]} if "ancil" in f else {}
    cls = qp.stats.__dict__.get(name) or getattr(qp, name, None)
    if cls is None:
        raise ValueError(f"{path}: unknown qp parameterization {name!r}")
    shared = {k: (v[0] if np.ndim(v) == 2 and v.shape[0] == 1 else v) for k, v in meta.items()
              if k not in ("pdf_name", "pdf_version")}
    ens = qp.Ensemble(cls, data={**shared, **data})
    if ancil:
        ens.set_ancil(ancil)
    return ens
