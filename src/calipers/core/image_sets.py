"""Image sets (the cutout file kind of DESIGN.md) and FITS cutout directories.

Image set: one HDF5 file with

- ``data`` (N, n_bands, H, W) float32: sky-subtracted images in electrons per second,
- ``ivar`` (same shape) float32: 1 / variance per pixel, in (e-/s)^-2 (0 = no information),
- group ``meta``: one 1-d dataset of length N per column (truth, labels, observing conditions),
- attributes ``kind`` = ``"calipers.image_set"``, ``bands`` (JSON list), ``pixel_scale``
  (arcsec/pixel), ``zero_points`` (JSON: band -> magnitude of 1 e-/s), ``class_names`` (JSON list:
  what the codes of ``meta/object_class`` mean), ``units`` and ``provenance`` (JSON); the provenance
  is also stored as the ``provenance`` group every calipers output carries.

Writes are atomic: a file is written under a temporary name (``.<name>.<random>.tmp``) in the
target's directory and renamed when complete, so a crash leaves no partial image set (and an
earlier file of that name untouched). :class:`ImageSetWriter` grows a set chunk by chunk (large
simulations); :func:`read_image_set` and :func:`iterate_image_set` read rows and refuse
non-finite pixels with the file, row, band and pixel named.

FITS cutouts (how survey teams store them): one file per object with an empty primary HDU and,
per band, an image HDU named by the band (``EXTNAME = "G"``) and one with its inverse variance
(``EXTNAME = "IVAR_G"``), header keys ``BAND``, ``PIXSCALE`` (arcsec/pixel), ``ZP`` (zero point:
the magnitude of 1 e-/s) and ``BUNIT``; plus an index table (CSV, or HDF5 with
one dataset per column) whose ``file`` column names each file (relative to the index's directory
unless absolute) and whose other columns are the metadata (``object_id``, ``label``, ...).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import h5py
import numpy as np

from calipers.core.atomic import temporary_path
from calipers.core.catalog import open_hdf5
from calipers.core.errors import FileFormatError
from calipers.core.provenance import write_provenance_hdf5
from calipers.lens.simulate import BANDS, CLASS_NAMES, CutoutSet

log = logging.getLogger(__name__)

KIND = "calipers.image_set"
UNITS = "data: electron/s (sky-subtracted); ivar: (electron/s)^-2"
IVAR_MODES = ("hdu", "estimate")


class CutoutError(FileFormatError):
    """Cutouts that cannot be used: a missing band or inverse-variance HDU, a wrong image shape,
    non-finite pixels, an index without its ``file`` column. The message names the file, the band
    or HDU, the column and the row."""


# =============================================================================== checks
def check_finite_cutouts(data: np.ndarray, ivar: np.ndarray, source: str, row_offset: int = 0,
                         bands: Sequence[str] | None = None) -> None:
    """Raise :class:`CutoutError` if ``data`` or ``ivar`` (N, bands, H, W) hold NaN or inf, or
    ``ivar`` is negative, naming ``source``, the first bad image row (``row_offset`` + index), the
    band and the pixel."""
    names = list(bands) if bands is not None else [str(j) for j in range(data.shape[1])]
    for arr, what in ((data, "data"), (ivar, "ivar")):
        finite = np.isfinite(arr)
        if not finite.all():
            row, band, y, x = (int(v) for v in np.argwhere(~finite)[0])
            raise CutoutError(
                f"{source}: image row {row_offset + row}, band '{names[band]}': {what} holds {arr[row, band, y, x]} "
                f"at pixel (y={y}, x={x}) ({int((~finite).sum())} non-finite value(s) in rows {row_offset}:"
                f"{row_offset + len(arr)}); cutouts must be finite (give a bad pixel a finite value and ivar = 0)")
    negative = ivar < 0
    if negative.any():
        row, band, y, x = (int(v) for v in np.argwhere(negative)[0])
        raise CutoutError(f"{source}: image row {row_offset + row}, band '{names[band]}': ivar is negative "
                          f"({ivar[row, band, y, x]}) at pixel (y={y}, x={x}); an inverse variance must be >= 0")


def _json_attr(f: h5py.File, name: str, path: str) -> Any:
    try:
        return json.loads(f.attrs[name])
    except KeyError:
        raise FileFormatError(f"{path}: image set attribute '{name}' is missing") from None
    except (TypeError, json.JSONDecodeError) as err:
        raise FileFormatError(f"{path}: image set attribute '{name}' is not valid JSON ({err})") from err


def meta_column_array(values, name: str, error: type[Exception] = FileFormatError, source: str = "") -> np.ndarray:
    """A metadata column as numbers, or as str objects (bytes decoded); anything else raises ``error``
    naming the column (and ``source``, the file, when given). Shared by the image and spectrum sets."""
    a = np.asarray(values)
    if a.dtype.kind in "biuf":
        return a
    if a.dtype.kind in "US" or (a.dtype.kind == "O" and all(isinstance(v, (str, bytes)) for v in a.ravel())):
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in a], dtype=object)
    where = f"{source}: " if source else ""
    raise error(f"{where}meta column '{name}' holds {a.dtype} values; numbers or strings are needed")


def _meta_array(values: np.ndarray, name: str) -> np.ndarray:
    return meta_column_array(values, name, CutoutError)


# =============================================================================== writing


class ImageSetWriter:
    """Write an image set chunk by chunk, atomically.

    ``ImageSetWriter(path, provenance=...)`` takes its geometry (bands, size, pixel scale, zero
    points, meta columns) from the first chunk appended; :meth:`create` fixes it up front (so an
    empty set can be written). Use it as a context manager: leaving the block normally renames the
    finished file to ``path``, an exception removes it.

    Parameters
    ----------
    path : the image set to write (replaced when complete).
    provenance : stored as the ``provenance`` attribute (JSON) and group.
    class_names : names of the ``meta/object_class`` codes.
    compression : h5py compression of ``data``/``ivar`` (None, "lzf", "gzip").
    """

    def __init__(self, path: str, provenance: dict | None = None, class_names: Sequence[str] = CLASS_NAMES,
                 compression: str | None = None):
        self.path = str(path)
        self.provenance = dict(provenance or {})
        self.class_names = [str(c) for c in class_names]
        self.compression = compression
        self._tmp = temporary_path(self.path)
        try:
            self._file = h5py.File(self._tmp, "w")
        except BaseException:
            os.remove(self._tmp)
            raise
        self._geometry: dict | None = None
        self._n = 0
        self._closed = False

    @classmethod
    def create(cls, path: str, n_pix: int, bands: Sequence[str] = BANDS, pixel_scale: float = 0.263,
               zero_points: dict[str, float] | None = None, provenance: dict | None = None,
               class_names: Sequence[str] = CLASS_NAMES, meta_dtypes: dict[str, Any] | None = None,
               compression: str | None = None) -> ImageSetWriter:
        """A writer whose geometry is fixed now: ``n_pix`` x ``n_pix`` cutouts in ``bands`` and, if
        given, the meta columns and their dtypes (otherwise taken from the first chunk)."""
        w = cls(path, provenance=provenance, class_names=class_names, compression=compression)
        try:
            w._start(tuple(bands), int(n_pix), int(n_pix), float(pixel_scale), dict(zero_points or {}), meta_dtypes)
        except BaseException:
            w.abort()
            raise
        return w

    @property
    def n(self) -> int:
        """Images written so far."""
        return self._n

    def _start(self, bands: tuple, height: int, width: int, pixel_scale: float, zero_points: dict,
               meta_dtypes: dict | None) -> None:
        f = self._file
        shape = (0, len(bands), height, width)
        chunk = (max(1, min(64, (1 << 22) // (4 * len(bands) * height * width))), len(bands), height, width)
        for name in ("data", "ivar"):
            f.create_dataset(name, shape=shape, maxshape=(None,) + shape[1:], dtype=np.float32, chunks=chunk,
                             compression=self.compression)
        f.create_group("meta")
        self._geometry = {"bands": bands, "height": height, "width": width, "pixel_scale": pixel_scale,
                          "zero_points": {str(k): float(v) for k, v in zero_points.items()}, "meta": None}
        if meta_dtypes is not None:
            self._create_meta({k: np.dtype(v) if v is not str else h5py.string_dtype() for k, v in meta_dtypes.items()})

    def _create_meta(self, dtypes: dict) -> None:
        g = self._file["meta"]
        for k, dt in dtypes.items():
            g.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
        self._geometry["meta"] = list(dtypes)

    def append(self, chunk: CutoutSet) -> None:
        """Append the images of ``chunk`` (a :class:`~calipers.lens.simulate.CutoutSet` or anything
        with ``data, ivar, meta, bands, pixel_scale, zero_points``)."""
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        data = np.asarray(chunk.data)
        ivar = np.asarray(chunk.ivar)
        bands = tuple(str(b) for b in chunk.bands)
        if data.ndim != 4 or ivar.shape != data.shape or data.shape[1] != len(bands):
            raise CutoutError(f"{self.path}: a chunk must have data and ivar of one shape (N, {len(bands)} bands, "
                              f"H, W); got data {data.shape}, ivar {ivar.shape}, bands {bands}")
        meta = {k: _meta_array(v, k) for k, v in chunk.meta.items()}
        for k, v in meta.items():
            if v.ndim != 1 or len(v) != len(data):
                raise CutoutError(f"{self.path}: meta column '{k}' has shape {v.shape}; the chunk has {len(data)} "
                                  "images")
        check_finite_cutouts(data, ivar, f"{self.path} (chunk appended at row {self._n})", self._n, bands)
        if self._geometry is None:
            self._start(bands, data.shape[2], data.shape[3], float(chunk.pixel_scale), dict(chunk.zero_points), None)
        geo = self._geometry
        if bands != geo["bands"] or data.shape[2:] != (geo["height"], geo["width"]):
            raise CutoutError(f"{self.path}: chunk at row {self._n} has bands {bands} of {data.shape[2:]} pixels; the "
                              f"set has {geo['bands']} of {(geo['height'], geo['width'])}")
        if not np.isclose(float(chunk.pixel_scale), geo["pixel_scale"], rtol=1e-9, atol=0):
            raise CutoutError(f"{self.path}: chunk at row {self._n} has pixel scale {chunk.pixel_scale}; the set has "
                              f"{geo['pixel_scale']}")
        if geo["meta"] is None:
            self._create_meta({k: (h5py.string_dtype() if v.dtype.kind == "O" else v.dtype) for k, v in meta.items()})
        if set(meta) != set(geo["meta"]):
            raise CutoutError(f"{self.path}: chunk at row {self._n} has meta columns {sorted(meta)}; the set has "
                              f"{sorted(geo['meta'])}")
        n0, m = self._n, len(data)
        f = self._file
        for name, arr in (("data", data), ("ivar", ivar)):
            f[name].resize((n0 + m,) + f[name].shape[1:])
            f[name][n0:] = arr.astype(np.float32, copy=False)
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
            if self._geometry is None:
                raise ValueError(f"{self.path}: no images were appended; use ImageSetWriter.create(...) to write "
                                 "an empty image set")
            geo = self._geometry
            if geo["meta"] is None:
                self._create_meta({})
            f = self._file
            f.attrs["kind"] = KIND
            f.attrs["bands"] = json.dumps(list(geo["bands"]))
            f.attrs["pixel_scale"] = geo["pixel_scale"]
            f.attrs["zero_points"] = json.dumps(geo["zero_points"])
            f.attrs["class_names"] = json.dumps(self.class_names)
            f.attrs["units"] = UNITS
            f.attrs["provenance"] = json.dumps(self.provenance, default=str)
            write_provenance_hdf5(f, {k: v if isinstance(v, str) else json.dumps(v, default=str)
                                      for k, v in self.provenance.items()})
            f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        log.info("wrote image set %s (%d images)", self.path, self._n)
        return self.path

    def abort(self) -> None:
        """Discard everything written (the temporary file is removed, ``path`` is untouched)."""
        self._closed = True
        try:
            self._file.close()
        except Exception:  # already closed or broken: removing the file is what matters
            pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> ImageSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_image_set(path: str, cutouts: CutoutSet, provenance: dict | None = None,
                    class_names: Sequence[str] = CLASS_NAMES, compression: str | None = None) -> None:
    """Write ``cutouts`` as an image set at ``path``, atomically (temporary file + rename)."""
    meta_dtypes = {k: (str if _meta_array(v, k).dtype.kind == "O" else np.asarray(v).dtype)
                   for k, v in cutouts.meta.items()}
    data = np.asarray(cutouts.data)
    if data.ndim != 4 or data.shape[2] != data.shape[3]:
        raise CutoutError(f"{path}: cutouts must be (N, bands, n_pix, n_pix), got {data.shape}")
    w = ImageSetWriter.create(path, data.shape[2], tuple(cutouts.bands), cutouts.pixel_scale, cutouts.zero_points,
                              provenance=provenance, class_names=class_names, meta_dtypes=meta_dtypes,
                              compression=compression)
    with w:
        w.append(cutouts)


# =============================================================================== reading
class _ImageSetFile:
    """An open, validated image set."""

    def __init__(self, f: h5py.File, path: str):
        self.f, self.path = f, path
        kind = f.attrs.get("kind")
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind != KIND:
            raise FileFormatError(f"{path}: not an image set (attribute kind = {kind!r}, expected {KIND!r})")
        for name in ("data", "ivar"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise FileFormatError(f"{path}: image set has no '{name}' dataset")
        self.data, self.ivar = f["data"], f["ivar"]
        if self.data.ndim != 4 or self.ivar.shape != self.data.shape:
            raise FileFormatError(f"{path}: 'data' {self.data.shape} and 'ivar' {self.ivar.shape} must both be "
                                  "(N, bands, H, W)")
        if "meta" not in f or not isinstance(f["meta"], h5py.Group):
            raise FileFormatError(f"{path}: image set has no 'meta' group")
        self.meta = f["meta"]
        self.n = int(self.data.shape[0])
        for k, ds in self.meta.items():
            if not isinstance(ds, h5py.Dataset) or ds.shape != (self.n,):
                raise FileFormatError(f"{path}: meta column '{k}' has shape {getattr(ds, 'shape', None)}; "
                                      f"expected ({self.n},)")
        self.bands = tuple(_json_attr(f, "bands", path))
        if len(self.bands) != self.data.shape[1]:
            raise FileFormatError(f"{path}: {self.data.shape[1]} bands in 'data' but attribute bands = {self.bands}")
        self.pixel_scale = float(f.attrs.get("pixel_scale", np.nan))
        self.zero_points = _json_attr(f, "zero_points", path)

    def columns(self, wanted: Sequence[str] | None) -> list[str]:
        have = list(self.meta)
        if wanted is None:
            return have
        missing = [c for c in wanted if c not in self.meta]
        if missing:
            raise CutoutError(f"{self.path}: meta column(s) {missing} not in the image set (columns: {have})")
        return list(wanted)

    def read(self, start: int, stop: int, columns: list[str], step: int = 1) -> CutoutSet:
        sl = slice(start, stop, step)
        try:
            data = self.data[sl]
            ivar = self.ivar[sl]
            meta = {}
            for c in columns:
                ds = self.meta[c]
                meta[c] = (ds.asstr()[sl] if h5py.check_string_dtype(ds.dtype) else ds[sl])
                if meta[c].dtype.kind == "O":
                    meta[c] = np.asarray(meta[c], dtype=object)
        except OSError as err:
            raise FileFormatError(f"{self.path}: rows {start}:{stop} cannot be read; is the file truncated? ({err})") \
                from err
        if step == 1:
            check_finite_cutouts(data, ivar, self.path, start, self.bands)
        else:
            rows = np.arange(start, stop, step)
            try:
                check_finite_cutouts(data, ivar, self.path, 0, self.bands)
            except CutoutError:  # name the file row, not the position in the strided selection
                bad = int(np.argwhere(~np.isfinite(data) | ~np.isfinite(ivar) | (ivar < 0))[0][0])
                check_finite_cutouts(data[bad:bad + 1], ivar[bad:bad + 1], self.path, int(rows[bad]), self.bands)
        return CutoutSet(data, ivar, meta, self.bands, self.pixel_scale, self.zero_points)


def read_image_set(path: str, rows: slice | None = None, columns: Sequence[str] | None = None) -> CutoutSet:
    """Read rows ``rows`` (a slice; all when None) of an image set: data, ivar and the meta
    ``columns`` (all when None). Non-finite pixels or negative ivar raise :class:`CutoutError`
    naming the file, the first bad row, the band and the pixel."""
    if rows is not None and not isinstance(rows, slice):
        raise TypeError(f"{path}: rows must be a slice or None, got {type(rows).__name__}")
    with open_hdf5(path, "image set (HDF5)") as f:
        s = _ImageSetFile(f, path)
        start, stop, step = (rows or slice(None)).indices(s.n)
        return s.read(start, stop, s.columns(columns), step)


def iterate_image_set(path: str, chunk_size: int, columns: Sequence[str] | None = None
                      ) -> Iterator[tuple[int, CutoutSet]]:
    """Yield ``(start, chunk)`` over an image set, ``chunk_size`` images at a time (the file stays
    open between chunks); each chunk is checked like :func:`read_image_set`."""
    if int(chunk_size) < 1:
        raise ValueError(f"{path}: chunk_size must be >= 1, got {chunk_size}")
    with open_hdf5(path, "image set (HDF5)") as f:
        s = _ImageSetFile(f, path)
        cols = s.columns(columns)
        for start in range(0, s.n, int(chunk_size)):
            yield start, s.read(start, min(start + int(chunk_size), s.n), cols)


def image_set_info(path: str) -> dict:
    """What an image set holds, without reading its pixels: ``n``, ``shape`` (N, bands, H, W),
    ``bands``, ``meta_columns``, ``pixel_scale``, ``zero_points``, ``class_names``, ``units``,
    ``kind``, ``provenance``."""
    with open_hdf5(path, "image set (HDF5)") as f:
        s = _ImageSetFile(f, path)
        prov = f.attrs.get("provenance", "{}")
        try:
            provenance = json.loads(prov)
        except (TypeError, json.JSONDecodeError):
            provenance = {}
        units = f.attrs.get("units", "")
        return {"n": s.n, "shape": tuple(int(v) for v in s.data.shape), "bands": list(s.bands),
                "meta_columns": list(s.meta), "pixel_scale": s.pixel_scale, "zero_points": s.zero_points,
                "class_names": _json_attr(f, "class_names", path) if "class_names" in f.attrs else [],
                "units": units.decode() if isinstance(units, bytes) else str(units), "kind": KIND,
                "provenance": provenance}


# =============================================================================== FITS cutouts
def _format_value(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, (int, np.integer, bool, np.bool_)):
        return str(int(v))
    return str(v)


def write_fits_cutouts(directory: str, cutouts: CutoutSet, index_name: str = "index.csv") -> str:
    """Write one FITS file per image into ``directory`` (primary HDU empty; per band an image HDU
    ``EXTNAME = band.upper()`` and one ``IVAR_<BAND>``; header keys BAND, PIXSCALE, ZP, BUNIT) and an
    index CSV (columns ``file``, ``object_id``, ``label`` when present, then every meta column).
    Files are named ``cutout_<object_id>.fits`` (the row number when there is no ``object_id``).
    The index is written last and atomically. Returns the index path."""
    from astropy.io import fits

    os.makedirs(directory, exist_ok=True)
    n = len(cutouts.data)
    meta = {k: np.asarray(v) for k, v in cutouts.meta.items()}
    ids = meta["object_id"] if "object_id" in meta else np.arange(n)
    if len(np.unique(ids)) != n:
        raise CutoutError(f"{directory}: object_id values are not unique; they name the FITS files")
    files = []
    for i in range(n):
        name = f"cutout_{ids[i]}.fits"
        hdus = [fits.PrimaryHDU()]
        hdus[0].header["OBJID"] = _format_value(ids[i])
        hdus[0].header["NBANDS"] = len(cutouts.bands)
        for prefix, arr, unit in (("", cutouts.data, "electron/s"), ("IVAR_", cutouts.ivar, "(electron/s)**-2")):
            for j, b in enumerate(cutouts.bands):
                h = fits.ImageHDU(np.asarray(arr[i, j], dtype=np.float32), name=f"{prefix}{b.upper()}")
                h.header["BAND"] = b
                h.header["PIXSCALE"] = (float(cutouts.pixel_scale), "arcsec / pixel")
                if b in cutouts.zero_points and np.isfinite(cutouts.zero_points[b]):
                    h.header["ZP"] = (float(cutouts.zero_points[b]), "mag of 1 e-/s")
                h.header["BUNIT"] = unit
                hdus.append(h)
        fits.HDUList(hdus).writeto(os.path.join(directory, name), overwrite=True)
        files.append(name)
    columns = ["file", "object_id"] + (["label"] if "label" in meta else [])
    columns += [k for k in meta if k not in columns]
    index = os.path.join(directory, index_name)
    tmp = temporary_path(index)
    try:
        with open(tmp, "w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(columns)
            for i in range(n):
                row = [files[i], _format_value(ids[i])]
                row += [_format_value(meta[k][i]) for k in columns[2:]]
                wr.writerow(row)
        os.replace(tmp, index)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return index


def _parse_column(values: list[str]) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=object)


def read_cutout_index(path: str) -> dict[str, np.ndarray]:
    """The index table of a FITS cutout directory: a CSV with a header row, or an HDF5 file with
    one 1-d dataset per column (at the root, or in the first group holding a ``file`` column)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such cutout index")
    if path.lower().endswith((".h5", ".hdf5", ".hdf")):
        with open_hdf5(path, "cutout index (HDF5)") as f:
            group = f
            if "file" not in f:
                for v in f.values():
                    if isinstance(v, h5py.Group) and "file" in v:
                        group = v
                        break
            cols = {}
            for k, ds in group.items():
                if isinstance(ds, h5py.Dataset) and ds.ndim == 1:
                    a = ds.asstr()[...] if h5py.check_string_dtype(ds.dtype) else ds[...]
                    cols[k] = np.asarray(a, dtype=object) if a.dtype.kind in "OSU" else a
            if cols and len({len(v) for v in cols.values()}) != 1:
                raise CutoutError(f"{path}: index columns have different lengths "
                                  f"{ {k: len(v) for k, v in cols.items()} }")
    else:
        try:
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError) as err:
            raise CutoutError(f"{path}: cannot be read as a CSV cutout index ({err})") from err
        if not rows:
            raise CutoutError(f"{path}: the cutout index is empty (no header row)")
        header = [h.strip() for h in rows[0]]
        body = rows[1:]
        for i, r in enumerate(body):
            if len(r) != len(header):
                raise CutoutError(f"{path}: index row {i} has {len(r)} fields, the header has {len(header)}")
        cols = {h: _parse_column([r[j] for r in body]) for j, h in enumerate(header)}
    if "file" not in cols:
        raise CutoutError(f"{path}: the cutout index has no column 'file' (columns: {list(cols)}); it must name "
                          "the FITS file of each row")
    cols["file"] = np.asarray([str(v) for v in cols["file"]], dtype=object)
    return cols


def _robust_sky_sigma(image: np.ndarray) -> float:
    from astropy.stats import sigma_clipped_stats

    _, _, std = sigma_clipped_stats(image, sigma=3.0, maxiters=10, stdfunc="mad_std")
    return float(std)


def read_fits_cutouts(index_path: str, bands: Sequence[str] = BANDS, n_pix: int | None = None,
                      base_dir: str | None = None, ivar: str = "hdu", pixel_scale: float | None = None) -> CutoutSet:
    """Read the FITS cutouts listed in an index (CSV or HDF5, see :func:`read_cutout_index`).

    Parameters
    ----------
    index_path : the index; its ``file`` column names each FITS file (relative to ``base_dir``).
    bands : bands to read, one image HDU each (``EXTNAME`` = band, case-insensitive).
    n_pix : required size (n_pix x n_pix); None = the first file's.
    base_dir : directory of relative file names (default: the index's directory).
    ivar : ``"hdu"``: read the ``IVAR_<BAND>`` HDUs (an error when one is missing);
        ``"estimate"``: ignore them and use, per image and band, a constant 1 / sigma^2 with sigma
        the MAD standard deviation of the 3-sigma-clipped pixels: the sky noise. It leaves out the
        sources' own Poisson noise, so it overstates the inverse variance on bright objects.
    pixel_scale : arcsec/pixel when the headers carry no ``PIXSCALE`` (headers that do must agree).

    Every problem raises :class:`CutoutError` naming the file, its index row, the band / HDU and,
    for bad pixels, the first pixel; nothing is returned for a partly bad set.
    """
    from astropy.io import fits

    if ivar not in IVAR_MODES:
        raise ValueError(f"ivar must be one of {IVAR_MODES}, got {ivar!r}")
    bands = tuple(str(b) for b in bands)
    if not bands:
        raise ValueError("read_fits_cutouts: no bands requested")
    index = read_cutout_index(index_path)
    n = len(index["file"])
    if n == 0:
        raise CutoutError(f"{index_path}: the cutout index lists no files")
    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(index_path))
    expected = (int(n_pix), int(n_pix)) if n_pix is not None else None
    datas, ivars = [], []
    scale, zps = (float(pixel_scale) if pixel_scale is not None else None), {}
    first_file = None
    for i, name in enumerate(index["file"]):
        path = name if os.path.isabs(name) else os.path.join(base, name)
        where = f"{path} (index {index_path}, row {i})"
        if not os.path.exists(path):
            raise CutoutError(f"{where}: file does not exist (column 'file' = {name!r})")
        try:
            hdul = fits.open(path, memmap=False)
        except (OSError, ValueError) as err:
            raise CutoutError(f"{where}: cannot be read as FITS ({err})") from err
        with hdul:
            by_name = {h.name.upper(): h for h in hdul}
            img = np.empty((len(bands),) + (expected or (0, 0)), dtype=np.float32)
            inv = np.empty_like(img)
            for j, b in enumerate(bands):
                key = b.upper()
                if key not in by_name:
                    raise CutoutError(f"{where}: no HDU with EXTNAME '{key}' for band '{b}' "
                                      f"(HDUs: {[h.name for h in hdul]})")
                hdu = by_name[key]
                if hdu.data is None or hdu.data.ndim != 2:
                    raise CutoutError(f"{where}: HDU '{key}' (band '{b}') holds no 2-d image "
                                      f"(shape {None if hdu.data is None else hdu.data.shape})")
                shape = tuple(hdu.data.shape)
                if expected is None:
                    if shape[0] != shape[1]:
                        raise CutoutError(f"{where}: band '{b}' image is {shape[0]}x{shape[1]} pixels; cutouts must "
                                          "be square")
                    expected, first_file = shape, where
                    img = np.empty((len(bands),) + expected, dtype=np.float32)
                    inv = np.empty_like(img)
                if shape != expected:
                    if j > 0:
                        raise CutoutError(f"{where}: band '{b}' image is {shape[0]}x{shape[1]} pixels but band "
                                          f"'{bands[0]}' is {expected[0]}x{expected[1]} (bands of different shapes)")
                    what = f"n_pix = {n_pix}" if n_pix is not None else f"the first cutout, {first_file}"
                    raise CutoutError(f"{where}: band '{b}' image is {shape[0]}x{shape[1]} pixels; expected "
                                      f"{expected[0]}x{expected[1]} ({what})")
                a = np.asarray(hdu.data, dtype=np.float32)
                bad = ~np.isfinite(a)
                if bad.any():
                    y, x = (int(v) for v in np.argwhere(bad)[0])
                    raise CutoutError(f"{where}: band '{b}' (HDU '{key}') holds {a[y, x]} at pixel (y={y}, x={x}) "
                                      f"({int(bad.sum())} non-finite pixel(s)); cutouts must be finite")
                img[j] = a
                hdr = hdu.header
                if "PIXSCALE" in hdr:
                    ps = float(hdr["PIXSCALE"])
                    if scale is None:
                        scale = ps
                    elif not np.isclose(ps, scale, rtol=1e-6, atol=0):
                        raise CutoutError(f"{where}: band '{b}' has PIXSCALE = {ps} but {scale} was "
                                          f"{'given' if pixel_scale is not None else 'read from the earlier cutouts'}")
                zp = hdr.get("ZP", hdr.get("MAGZERO", np.nan))
                zp = float(zp) if zp is not None else np.nan
                if b not in zps:
                    zps[b] = zp
                elif not (np.isnan(zp) and np.isnan(zps[b])) and not np.isclose(zp, zps[b], rtol=0, atol=1e-6):
                    raise CutoutError(f"{where}: band '{b}' has zero point ZP = {zp} but the earlier cutouts have "
                                      f"{zps[b]}; images on different flux scales cannot share a set")
                if ivar == "estimate":
                    sigma = _robust_sky_sigma(a)
                    if not np.isfinite(sigma) or sigma <= 0:
                        raise CutoutError(f"{where}: band '{b}': the sky noise estimated from the image is {sigma}; "
                                          "cannot make an inverse variance (is the image constant?)")
                    inv[j] = 1.0 / sigma ** 2
                    continue
                ikey = f"IVAR_{key}"
                if ikey not in by_name:
                    raise CutoutError(f"{where}: no HDU '{ikey}' with the inverse variance of band '{b}' (HDUs: "
                                      f"{[h.name for h in hdul]}); pass ivar='estimate' to use the sky noise of the "
                                      "image instead")
                ihdu = by_name[ikey]
                if ihdu.data is None or tuple(ihdu.data.shape) != expected:
                    raise CutoutError(f"{where}: HDU '{ikey}' (band '{b}') has shape "
                                      f"{None if ihdu.data is None else ihdu.data.shape}; expected {expected}")
                ia = np.asarray(ihdu.data, dtype=np.float32)
                bad = ~np.isfinite(ia) | (ia < 0)
                if bad.any():
                    y, x = (int(v) for v in np.argwhere(bad)[0])
                    raise CutoutError(f"{where}: HDU '{ikey}' (band '{b}') holds {ia[y, x]} at pixel (y={y}, x={x}); "
                                      "an inverse variance must be finite and >= 0")
                inv[j] = ia
            datas.append(img)
            ivars.append(inv)
    if scale is None:
        raise CutoutError(f"{index_path}: no PIXSCALE header key in the cutouts (e.g. {first_file}); pass pixel_scale")
    meta = {k: v for k, v in index.items() if k != "file"}
    return CutoutSet(np.stack(datas), np.stack(ivars), meta, bands, scale, zps)


__all__ = ["CutoutError", "ImageSetWriter", "check_finite_cutouts", "image_set_info", "iterate_image_set",
           "read_cutout_index", "read_fits_cutouts", "read_image_set", "write_fits_cutouts", "write_image_set"]
