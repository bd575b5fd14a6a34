"""Spectrum sets (the spectrum file kind of DESIGN.md) and the per-row Fisher-bound files aligned to them.

Spectrum set: one HDF5 file with

- ``flux`` (N, n_pix) float32: the observed (noisy) flux, continuum-normalised for simulations,
- ``ivar`` (N, n_pix) float32: the pipeline's inverse variance per pixel, estimated from the noisy
  flux, in flux^-2; every value must be finite and > 0 (the regressors divide by it; a masked pixel
  has no representation yet),
- ``model_flux`` (N, n_pix) float32, optional: the noise-free flux (simulations only; the Fisher stage
  checks its Jacobian's model against it, and training redraws the noise from it every epoch),
- ``wavelength`` (n_pix,) float64: pixel centres in Angstrom (air), strictly increasing,
- group ``meta``: one 1-d dataset of length N per column (labels ``teff``, ``logg``, ``m_h``, the S/N
  ``snr``, ``star_id``, ...),
- attributes ``kind`` = ``"calipers.spectrum_set"``, ``units``, ``provenance`` (JSON; also stored as
  the ``provenance`` group every calipers output carries) and any further JSON attributes the
  writer is given (a simulated set has ``simulator``: the ``SpectraSimConfig.to_dict()`` that made
  it, and ``simulation``: seed, S/N plan and row order).

Writes are atomic: a file is written under a temporary name (``.<name>.<random>.tmp``) in the target's
directory and renamed when complete, so a crash leaves no partial set (and an earlier file of that
name untouched). :class:`SpectrumSetWriter` grows a set chunk by chunk (large simulations);
:func:`read_spectrum_set` and :func:`iterate_spectrum_set` read rows and refuse a non-finite flux or
a non-finite or non-positive ivar with the file, row, pixel and wavelength named.

Fisher bounds (:func:`write_fisher_bounds`): an HDF5 catalog (group ``fisher``, one row per row of a
spectrum set) with the per-row log g bounds of :mod:`calipers.spectra.fisher`.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from calipers.core.atomic import temporary_path
from calipers.core.catalog import open_hdf5
from calipers.core.errors import FileFormatError
from calipers.core.image_sets import meta_column_array
from calipers.core.provenance import write_provenance_hdf5

log = logging.getLogger(__name__)

KIND = "calipers.spectrum_set"
UNITS = ("flux, model_flux: flux density in the set's unit (continuum-normalised for simulated sets); "
         "ivar: flux^-2; wavelength: Angstrom (air)")
LABEL_COLUMNS: tuple[str, str, str] = ("teff", "logg", "m_h")
RESERVED_ATTRS = ("kind", "units", "provenance")
FISHER_KIND = "calipers.fisher_bounds"
FISHER_GROUP = "fisher"


class SpectrumSetError(FileFormatError):
    """A spectrum set that cannot be used: a non-finite flux, a non-finite or non-positive ivar, a
    missing dataset or meta column, shapes that do not agree. The message names the file, the row, the
    pixel (and its wavelength) or the column."""


# =============================================================================== in memory
@dataclass
class Spectra:
    """Rows of a spectrum set in memory.

    Attributes
    ----------
    wavelength : (n_pix,) float64, Angstrom (air).
    flux : (N, n_pix) float32, observed flux.
    ivar : (N, n_pix) float32, inverse variance estimated from the observed flux (> 0).
    meta : column name -> (N,) array (numbers, or strings as an object array).
    model_flux : (N, n_pix) float32 noise-free flux, or None.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    model_flux: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.wavelength = np.asarray(self.wavelength, dtype=np.float64)
        self.flux = np.asarray(self.flux)
        self.ivar = np.asarray(self.ivar)
        if self.flux.ndim != 2 or self.ivar.shape != self.flux.shape:
            raise ValueError(f"Spectra: flux {self.flux.shape} and ivar {self.ivar.shape} must both be (N, n_pix)")
        if self.wavelength.shape != (self.flux.shape[1],):
            raise ValueError(f"Spectra: wavelength has shape {self.wavelength.shape}; flux has {self.flux.shape[1]} "
                             "pixels")
        if self.model_flux is not None:
            self.model_flux = np.asarray(self.model_flux)
            if self.model_flux.shape != self.flux.shape:
                raise ValueError(f"Spectra: model_flux has shape {self.model_flux.shape}, flux {self.flux.shape}")
        self.meta = {k: np.asarray(v) for k, v in self.meta.items()}
        for k, v in self.meta.items():
            if v.shape != (len(self.flux),):
                raise ValueError(f"Spectra: meta column '{k}' has shape {v.shape}; there are {len(self.flux)} spectra")

    def __len__(self) -> int:
        return int(self.flux.shape[0])

    def take(self, rows: slice | np.ndarray | Sequence[int]) -> Spectra:
        """The spectra ``rows`` (a slice, an index array or a boolean mask)."""
        return Spectra(self.wavelength, self.flux[rows], self.ivar[rows], {k: v[rows] for k, v in self.meta.items()},
                       None if self.model_flux is None else self.model_flux[rows])

    def labels(self, names: Sequence[str] = LABEL_COLUMNS, source: str = "spectra") -> np.ndarray:
        """(N, len(names)) float64 array of the meta columns ``names`` (default Teff, log g, [M/H]);
        a missing column is a :class:`SpectrumSetError` naming ``source``."""
        missing = [c for c in names if c not in self.meta]
        if missing:
            raise SpectrumSetError(f"{source}: meta column(s) {missing} missing (columns: {sorted(self.meta)})")
        return np.stack([np.asarray(self.meta[c], dtype=np.float64) for c in names], axis=1)

    @staticmethod
    def concatenate(parts: Sequence[Spectra]) -> Spectra:
        """One :class:`Spectra` of ``parts`` in order (same wavelengths, meta columns and model_flux
        presence)."""
        if not parts:
            raise ValueError("Spectra.concatenate: nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if not np.array_equal(p.wavelength, first.wavelength) or set(p.meta) != set(first.meta) \
                    or (p.model_flux is None) != (first.model_flux is None):
                raise ValueError("Spectra.concatenate: parts differ in wavelengths, meta columns or model_flux")
        model = None if first.model_flux is None else np.concatenate([p.model_flux for p in parts])
        return Spectra(first.wavelength, np.concatenate([p.flux for p in parts]),
                       np.concatenate([p.ivar for p in parts]),
                       {k: np.concatenate([p.meta[k] for p in parts]) for k in first.meta}, model)


# =============================================================================== checks
def _first_bad(mask: np.ndarray) -> tuple[int, int]:
    row, pix = np.argwhere(mask)[0]
    return int(row), int(pix)


def check_spectra(flux: np.ndarray, ivar: np.ndarray, source: str, wavelength: np.ndarray | None = None,
                  rows: np.ndarray | int = 0, model_flux: np.ndarray | None = None) -> None:
    """Raise :class:`SpectrumSetError` if ``flux`` (or ``model_flux``) holds NaN or inf, or ``ivar`` is
    not finite or not > 0, naming ``source``, the first bad row (``rows``: the file row of the first
    array row, or one file row per array row), the pixel and its wavelength."""
    n = len(flux)
    row_of = (lambda i: int(rows) + i) if np.ndim(rows) == 0 else (lambda i: int(np.asarray(rows)[i]))

    def where(i: int, p: int) -> str:
        lam = f" ({wavelength[p]:.2f} A)" if wavelength is not None and len(wavelength) > p else ""
        return f"row {row_of(i)}, pixel {p}{lam}"

    arrays = [("flux", flux)] + ([("model_flux", model_flux)] if model_flux is not None else [])
    for what, arr in arrays:
        bad = ~np.isfinite(arr)
        if bad.any():
            i, p = _first_bad(bad)
            raise SpectrumSetError(f"{source}: {where(i, p)}: {what} is {arr[i, p]} ({int(bad.sum())} non-finite "
                                   f"value(s) in these {n} rows); spectra must be finite")
    bad = ~(np.isfinite(ivar) & (ivar > 0))
    if bad.any():
        i, p = _first_bad(bad)
        raise SpectrumSetError(f"{source}: {where(i, p)}: ivar is {ivar[i, p]} ({int(bad.sum())} bad value(s) in "
                               f"these {n} rows); an inverse variance must be finite and > 0")


def _check_wavelength(wavelength: np.ndarray, source: str) -> np.ndarray:
    lam = np.asarray(wavelength, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 2:
        raise SpectrumSetError(f"{source}: wavelength must be a 1-d array of >= 2 pixels, got shape {lam.shape}")
    if not np.all(np.isfinite(lam)) or np.any(lam <= 0) or np.any(np.diff(lam) <= 0):
        raise SpectrumSetError(f"{source}: wavelength must be finite, positive and strictly increasing "
                               "(Angstrom, pixel centres)")
    return lam


def _meta_array(values: Any, name: str, source: str) -> np.ndarray:
    return meta_column_array(values, name, SpectrumSetError, source)


def _string_attrs(provenance: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in provenance.items()}


# =============================================================================== writing
class SpectrumSetWriter:
    """Write a spectrum set chunk by chunk, atomically.

    The pixel grid is fixed when the writer is made; the meta columns by ``meta_dtypes`` or else by
    the first chunk appended. Use it as a context manager: leaving the block normally renames the
    finished file to ``path``, an exception removes it (``path`` is then untouched).

    Parameters
    ----------
    path : the spectrum set to write (replaced when complete).
    wavelength : (n_pix,) pixel centres, Angstrom (air), strictly increasing.
    with_model_flux : whether the set stores the noise-free ``model_flux`` (every chunk must then
        carry it, and none may otherwise).
    meta_dtypes : column -> dtype (``str`` for text) to fix the meta columns up front.
    attrs : further file attributes, name -> JSON-able value (e.g. ``simulator``), stored as JSON.
    provenance : stored as the ``provenance`` attribute (JSON) and group.
    compression : h5py compression of the spectra (None, "lzf", "gzip").
    """

    def __init__(self, path: str, wavelength: np.ndarray, with_model_flux: bool = False,
                 meta_dtypes: dict[str, Any] | None = None, attrs: dict[str, Any] | None = None,
                 provenance: dict | None = None, compression: str | None = None):
        self.path = str(path)
        self.wavelength = _check_wavelength(wavelength, self.path)
        self.with_model_flux = bool(with_model_flux)
        self.attrs = dict(attrs or {})
        clash = sorted(set(self.attrs) & set(RESERVED_ATTRS))
        if clash:
            raise ValueError(f"{self.path}: attributes {clash} are written by the spectrum set itself")
        for k, v in self.attrs.items():
            try:
                json.dumps(v)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{self.path}: attribute '{k}' is not JSON-able ({err})") from err
        self.provenance = dict(provenance or {})
        self._tmp = temporary_path(self.path)
        self._closed = False
        self._n = 0
        self._meta: list[str] | None = None
        try:
            self._file = h5py.File(self._tmp, "w")
            n_pix = self.wavelength.size
            chunk = (max(1, min(256, (1 << 20) // (4 * n_pix))), n_pix)
            names = ("flux", "ivar") + (("model_flux",) if self.with_model_flux else ())
            for name in names:
                self._file.create_dataset(name, shape=(0, n_pix), maxshape=(None, n_pix), dtype=np.float32,
                                          chunks=chunk, compression=compression)
            self._file.create_dataset("wavelength", data=self.wavelength)
            self._file.create_group("meta")
            if meta_dtypes is not None:
                self._create_meta({k: h5py.string_dtype() if v is str else np.dtype(v) for k, v in meta_dtypes.items()})
        except BaseException:
            self.abort()
            raise

    @property
    def n(self) -> int:
        """Spectra written so far."""
        return self._n

    def _create_meta(self, dtypes: dict) -> None:
        g = self._file["meta"]
        for k, dt in dtypes.items():
            g.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
        self._meta = list(dtypes)

    def append(self, chunk: Spectra) -> None:
        """Append the rows of ``chunk`` (checked first: nothing of a bad chunk is written)."""
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        where = f"{self.path} (chunk appended at row {self._n})"
        if not np.array_equal(np.asarray(chunk.wavelength, dtype=np.float64), self.wavelength):
            raise SpectrumSetError(f"{where}: its wavelengths differ from the set's ({self.wavelength.size} pixels, "
                                   f"{self.wavelength[0]:.2f}-{self.wavelength[-1]:.2f} A)")
        if (chunk.model_flux is not None) != self.with_model_flux:
            raise SpectrumSetError(f"{where}: the chunk {'has' if chunk.model_flux is not None else 'has no'} "
                                   f"model_flux but the set was made with with_model_flux={self.with_model_flux}")
        meta = {k: _meta_array(v, k, where) for k, v in chunk.meta.items()}
        check_spectra(chunk.flux, chunk.ivar, where, self.wavelength, self._n, chunk.model_flux)
        if self._meta is None:
            self._create_meta({k: (h5py.string_dtype() if v.dtype.kind == "O" else v.dtype) for k, v in meta.items()})
        if set(meta) != set(self._meta):
            raise SpectrumSetError(f"{where}: meta columns {sorted(meta)}; the set has {sorted(self._meta)}")
        n0, m = self._n, len(chunk)
        f = self._file
        arrays = [("flux", chunk.flux), ("ivar", chunk.ivar)]
        if self.with_model_flux:
            arrays.append(("model_flux", chunk.model_flux))
        for name, arr in arrays:
            f[name].resize((n0 + m, self.wavelength.size))
            f[name][n0:] = np.asarray(arr, dtype=np.float32)
        for k, v in meta.items():
            ds = f["meta"][k]
            ds.resize((n0 + m,))
            ds[n0:] = v
        self._n += m

    def close(self) -> str:
        """Finish the file and rename it to ``path``; returns ``path``."""
        if self._closed:
            return self.path
        try:
            if self._meta is None:
                self._create_meta({})
            f = self._file
            f.attrs["kind"] = KIND
            f.attrs["units"] = UNITS
            f.attrs["provenance"] = json.dumps(self.provenance, default=str)
            for k, v in self.attrs.items():
                f.attrs[k] = json.dumps(v)
            write_provenance_hdf5(f, _string_attrs(self.provenance))
            f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        log.info("wrote spectrum set %s (%d spectra of %d pixels)", self.path, self._n, self.wavelength.size)
        return self.path

    def abort(self) -> None:
        """Discard everything written (the temporary file is removed, ``path`` is untouched)."""
        self._closed = True
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - not opened, closed or broken: removing the file is what matters
            pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> SpectrumSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_spectrum_set(path: str, spectra: Spectra, attrs: dict[str, Any] | None = None,
                       provenance: dict | None = None, compression: str | None = None) -> str:
    """Write ``spectra`` as a spectrum set at ``path``, atomically; returns ``path``."""
    dtypes = {k: (str if _meta_array(v, k, path).dtype.kind == "O" else np.asarray(v).dtype)
              for k, v in spectra.meta.items()}
    with SpectrumSetWriter(path, spectra.wavelength, with_model_flux=spectra.model_flux is not None,
                           meta_dtypes=dtypes, attrs=attrs, provenance=provenance, compression=compression) as w:
        w.append(spectra)
    return path


# =============================================================================== reading
def _decode(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


class _SpectrumSetFile:
    """An open, validated spectrum set."""

    def __init__(self, f: h5py.File, path: str):
        self.f, self.path = f, path
        kind = _decode(f.attrs.get("kind"))
        if kind != KIND:
            raise SpectrumSetError(f"{path}: not a spectrum set (attribute kind = {kind!r}, expected {KIND!r})")
        for name in ("flux", "ivar", "wavelength"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise SpectrumSetError(f"{path}: spectrum set has no '{name}' dataset")
        self.flux, self.ivar = f["flux"], f["ivar"]
        if self.flux.ndim != 2 or self.ivar.shape != self.flux.shape:
            raise SpectrumSetError(f"{path}: 'flux' {self.flux.shape} and 'ivar' {self.ivar.shape} must both be "
                                   "(N, n_pix)")
        self.n, self.n_pix = (int(v) for v in self.flux.shape)
        self.wavelength = np.asarray(f["wavelength"][...], dtype=np.float64)
        if self.wavelength.shape != (self.n_pix,):
            raise SpectrumSetError(f"{path}: 'wavelength' has shape {self.wavelength.shape}; flux has {self.n_pix} "
                                   "pixels")
        self.model_flux = f["model_flux"] if "model_flux" in f else None
        if self.model_flux is not None and self.model_flux.shape != self.flux.shape:
            raise SpectrumSetError(f"{path}: 'model_flux' has shape {self.model_flux.shape}, flux {self.flux.shape}")
        if "meta" not in f or not isinstance(f["meta"], h5py.Group):
            raise SpectrumSetError(f"{path}: spectrum set has no 'meta' group")
        self.meta = f["meta"]
        for k, ds in self.meta.items():
            if not isinstance(ds, h5py.Dataset) or ds.shape != (self.n,):
                raise SpectrumSetError(f"{path}: meta column '{k}' has shape {getattr(ds, 'shape', None)}; "
                                       f"expected ({self.n},)")

    def columns(self, wanted: Sequence[str] | None) -> list[str]:
        have = list(self.meta)
        if wanted is None:
            return have
        missing = [c for c in wanted if c not in self.meta]
        if missing:
            raise SpectrumSetError(f"{self.path}: meta column(s) {missing} not in the spectrum set (columns: {have})")
        return list(wanted)

    def selection(self, rows: slice | Sequence[int] | np.ndarray | None) -> tuple[Any, np.ndarray, np.ndarray | None]:
        """(h5py selection, file rows in the order returned, permutation back to the caller's order)."""
        if rows is None or isinstance(rows, slice):
            start, stop, step = (rows or slice(None)).indices(self.n)
            if step < 1:
                raise ValueError(f"{self.path}: rows must be a slice with a positive step, got {rows}")
            return slice(start, stop, step), np.arange(start, stop, step), None
        idx = np.asarray(rows)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"{self.path}: rows must be a slice, None or a 1-d array of row numbers")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"{self.path}: rows {idx.min()}..{idx.max()} out of range; the set has {self.n} rows")
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        if np.any(np.diff(ordered) == 0):
            raise ValueError(f"{self.path}: repeated row numbers in rows")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return ordered, ordered, inverse

    def read_meta(self, sel: Any, columns: list[str], inverse: np.ndarray | None) -> dict[str, np.ndarray]:
        meta = {}
        for c in columns:
            ds = self.meta[c]
            a = ds.asstr()[sel] if h5py.check_string_dtype(ds.dtype) else ds[sel]
            a = np.asarray(a, dtype=object) if np.asarray(a).dtype.kind in "OSU" else np.asarray(a)
            meta[c] = a if inverse is None else a[inverse]
        return meta

    def read(self, rows, columns: list[str], with_model_flux: bool) -> Spectra:
        if with_model_flux and self.model_flux is None:
            raise SpectrumSetError(f"{self.path}: the spectrum set has no 'model_flux' dataset (noise-free spectra); "
                                   "simulate with keep_model_flux = true")
        sel, file_rows, inverse = self.selection(rows)
        try:
            if isinstance(sel, np.ndarray) and sel.size == 0:
                empty = np.zeros((0, self.n_pix), np.float32)
                flux, ivar, model = empty, empty.copy(), (empty.copy() if with_model_flux else None)
            else:
                flux = self.flux[sel]
                ivar = self.ivar[sel]
                model = self.model_flux[sel] if with_model_flux else None
            meta = self.read_meta(sel, columns, inverse)
        except OSError as err:
            raise SpectrumSetError(f"{self.path}: rows cannot be read; is the file truncated? ({err})") from err
        check_spectra(flux, ivar, self.path, self.wavelength, file_rows, model)
        if inverse is not None:
            flux, ivar = flux[inverse], ivar[inverse]
            model = None if model is None else model[inverse]
        return Spectra(self.wavelength, flux, ivar, meta, model)

    def attributes(self) -> dict[str, Any]:
        out = {}
        for k, v in self.f.attrs.items():
            if k in RESERVED_ATTRS:
                continue
            try:
                out[k] = json.loads(_decode(v))
            except (TypeError, json.JSONDecodeError):
                out[k] = _decode(v) if not isinstance(v, np.generic) else v.item()
        return out


def read_spectrum_set(path: str, rows: slice | Sequence[int] | np.ndarray | None = None,
                      columns: Sequence[str] | None = None, with_model_flux: bool = False) -> Spectra:
    """Read rows of a spectrum set: flux, ivar, the meta ``columns`` (all when None) and, with
    ``with_model_flux``, the noise-free flux (an error naming the file when the set has none).

    ``rows``: a slice (all rows when None) or an array of distinct row numbers (returned in the order
    given). A non-finite flux, or an ivar that is not finite and > 0, raises :class:`SpectrumSetError`
    naming the file, the first bad row, the pixel and its wavelength; a missing meta column names the
    column and the columns present.
    """
    with open_hdf5(path, "spectrum set (HDF5)") as f:
        s = _SpectrumSetFile(f, path)
        return s.read(rows, s.columns(columns), with_model_flux)


def read_spectrum_meta(path: str, columns: Sequence[str] | None = None,
                       rows: slice | Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The meta ``columns`` (all when None) of a spectrum set, without reading its spectra."""
    with open_hdf5(path, "spectrum set (HDF5)") as f:
        s = _SpectrumSetFile(f, path)
        sel, _, inverse = s.selection(rows)
        return s.read_meta(sel, s.columns(columns), inverse)


def iterate_spectrum_set(path: str, chunk_size: int, columns: Sequence[str] | None = None,
                         with_model_flux: bool = False) -> Iterator[tuple[int, Spectra]]:
    """Yield ``(start, chunk)`` over a spectrum set, ``chunk_size`` spectra at a time (the file stays
    open between chunks); each chunk is checked like :func:`read_spectrum_set`."""
    if int(chunk_size) < 1:
        raise ValueError(f"{path}: chunk_size must be >= 1, got {chunk_size}")
    with open_hdf5(path, "spectrum set (HDF5)") as f:
        s = _SpectrumSetFile(f, path)
        cols = s.columns(columns)
        if with_model_flux and s.model_flux is None:
            s.read(slice(0, 0), [], True)  # raises, naming the file
        for start in range(0, s.n, int(chunk_size)):
            yield start, s.read(slice(start, min(start + int(chunk_size), s.n)), cols, with_model_flux)


def spectrum_set_info(path: str) -> dict:
    """What a spectrum set holds, without reading its spectra: ``n``, ``n_pix``, ``wavelength_range``
    (first and last pixel, Angstrom), ``meta_columns``, ``has_model_flux``, ``units``, ``kind``,
    ``provenance``, ``attrs`` (every further attribute, JSON-decoded) and ``simulator`` (the simulator
    configuration dict of a simulated set, else None)."""
    with open_hdf5(path, "spectrum set (HDF5)") as f:
        s = _SpectrumSetFile(f, path)
        try:
            provenance = json.loads(_decode(f.attrs.get("provenance", "{}")))
        except (TypeError, json.JSONDecodeError):
            provenance = {}
        attrs = s.attributes()
        simulator = attrs.get("simulator")
        return {"n": s.n, "n_pix": s.n_pix, "wavelength_range": (float(s.wavelength[0]), float(s.wavelength[-1])),
                "meta_columns": list(s.meta), "has_model_flux": s.model_flux is not None,
                "units": str(_decode(f.attrs.get("units", ""))), "kind": KIND, "provenance": provenance,
                "attrs": attrs, "simulator": simulator if isinstance(simulator, dict) else None}


def read_spectrum_wavelength(path: str) -> np.ndarray:
    """The (n_pix,) pixel-centre wavelengths (Angstrom) of a spectrum set."""
    with open_hdf5(path, "spectrum set (HDF5)") as f:
        return _SpectrumSetFile(f, path).wavelength


# =============================================================================== Fisher bounds
def write_fisher_bounds(path: str, columns: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
                        provenance: dict | None = None) -> str:
    """Write per-row Fisher bounds as an HDF5 catalog (group ``fisher``, one 1-d dataset per column,
    row i = row i of the spectrum set they were computed for), atomically; ``attrs`` (JSON-able) are
    stored as JSON attributes of the group, with ``kind`` = ``"calipers.fisher_bounds"``."""
    arrays = {k: np.asarray(v) for k, v in columns.items()}
    lengths = {k: v.shape for k, v in arrays.items()}
    if not arrays or any(len(s) != 1 for s in lengths.values()) or len({s[0] for s in lengths.values()}) != 1:
        raise ValueError(f"{path}: Fisher-bound columns must be 1-d and of one length, got {lengths}")
    tmp = temporary_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            g = f.create_group(FISHER_GROUP)
            for k, v in arrays.items():
                g.create_dataset(k, data=v)
            g.attrs["kind"] = FISHER_KIND
            for k, v in (attrs or {}).items():
                g.attrs[k] = json.dumps(v)
            write_provenance_hdf5(f, _string_attrs(provenance or {}))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_fisher_bounds(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(columns, attrs) of a file written by :func:`write_fisher_bounds`."""
    with open_hdf5(path, "Fisher-bound catalog (HDF5)") as f:
        if FISHER_GROUP not in f or _decode(f[FISHER_GROUP].attrs.get("kind")) != FISHER_KIND:
            raise FileFormatError(f"{path}: not a Fisher-bound catalog (no group '{FISHER_GROUP}' of kind "
                                  f"{FISHER_KIND!r})")
        g = f[FISHER_GROUP]
        cols = {k: ds[...] for k, ds in g.items() if isinstance(ds, h5py.Dataset)}
        attrs = {k: json.loads(_decode(v)) for k, v in g.attrs.items() if k != "kind"}
        return cols, attrs


__all__ = ["FISHER_GROUP", "KIND", "LABEL_COLUMNS", "Spectra", "SpectrumSetError", "SpectrumSetWriter",
           "check_spectra", "iterate_spectrum_set", "read_fisher_bounds", "read_spectrum_meta",
           "read_spectrum_set", "read_spectrum_wavelength", "spectrum_set_info", "write_fisher_bounds",
           "write_spectrum_set"]
