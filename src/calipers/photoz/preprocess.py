"""Photometry preprocessing with explicit non-detection and missing-error handling.

Non-detections
--------------
A magnitude is treated as a **non-detection** when it is NaN, +-inf, or has absolute value
>= ``sentinel_abs`` (default 90, which catches the 99 / -99 / 99.0 sentinels of DC2 and RAIL).
A non-detected magnitude is replaced by that band's *fill magnitude* - the 99.5th
percentile of the detected magnitudes in the training catalog, a proxy for the limiting
magnitude - its error by ``max_err`` (1 mag), and a per-band flag (1 = non-detected) is
passed to the network, so that the model knows the value is an upper limit, not a
measurement. :meth:`PhotometryPreprocessor.nondetection_treatment` gives these replacement
values; the ensemble's band-dropout augmentation applies the same treatment to detected
magnitudes during training, so that the network has seen every band missing.

Missing errors
--------------
An error that is NaN, +-inf or <= 0 on a *detected* magnitude is a missing error, not a
non-detection: the magnitude is kept (flag 0) and the error is replaced by the **typical error
at that magnitude in that band** - the median training error of the detected galaxies of
similar magnitude (``n_error_bins`` equal-count magnitude bins per band, linearly interpolated
between bin medians, constant beyond the first and last bin). A preprocessor saved before this
error curve existed (empty ``error_curve_mags``) uses ``max_err`` instead. Finite errors are
clipped to ``[min_err, max_err]`` (a 1-mag error carries no more information than a
non-detection). The cleaned magnitudes and errors are always finite, so the features are too.

Nothing is silently zero-filled: the number of non-detections per band is available from
:meth:`PhotometryPreprocessor.count_nondetections` and of replaced errors from
:meth:`PhotometryPreprocessor.count_missing_errors`; the stages log them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np


def nondetected(mags: np.ndarray, sentinel_abs: float = 90.0) -> np.ndarray:
    """Boolean mask of non-detected magnitudes: NaN, +-inf or ``|m| >= sentinel_abs``."""
    mags = np.asarray(mags)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(mags) | (np.abs(mags) >= sentinel_abs)


def missing_errors(errs: np.ndarray) -> np.ndarray:
    """Boolean mask of unusable errors: NaN, +-inf or <= 0."""
    errs = np.asarray(errs)
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(errs) & (errs > 0))


@dataclass
class PhotometryPreprocessor:
    """Turn raw magnitudes and errors into clean arrays plus non-detection flags.

    Parameters
    ----------
    bands : list of str
        Band names in order (e.g. ``["u", "g", "r", "i", "z", "y"]``).
    fill_mags : list of float, optional
        Replacement magnitude per band for non-detections; set by :meth:`fit`.
    sentinel_abs : float
        Magnitudes with ``|m| >=`` this are non-detections.
    min_err, max_err : float
        Errors are clipped to this range (mag); ``max_err`` is a non-detection's error.
    fill_percentile : float
        Percentile of the detected training magnitudes used as the fill magnitude.
    n_error_bins : int
        Equal-count magnitude bins per band of the typical-error curve.
    error_curve_mags, error_curve_errs : list of list of float, optional
        Per band, the median magnitude and median error of each bin; set by :meth:`fit`.
    """

    bands: list[str]
    fill_mags: list[float] = field(default_factory=list)
    sentinel_abs: float = 90.0
    min_err: float = 1e-3
    max_err: float = 1.0
    fill_percentile: float = 99.5
    n_error_bins: int = 20
    error_curve_mags: list[list[float]] = field(default_factory=list)
    error_curve_errs: list[list[float]] = field(default_factory=list)

    def fit(self, mags: np.ndarray, errs: np.ndarray) -> "PhotometryPreprocessor":
        """Set the fill magnitudes and the typical-error curves from a training catalog."""
        mags, errs = self._check(mags, errs)
        bad = nondetected(mags, self.sentinel_abs)
        no_err = missing_errors(errs)
        fills, curve_m, curve_e = [], [], []
        for j, band in enumerate(self.bands):
            good = mags[~bad[:, j], j].astype(np.float64)
            if good.size == 0:
                raise ValueError(f"band '{band}': every training magnitude is a non-detection; cannot fit")
            fills.append(float(np.percentile(good, self.fill_percentile)))
            usable = ~bad[:, j] & ~no_err[:, j]
            m = mags[usable, j].astype(np.float64)
            e = np.clip(errs[usable, j].astype(np.float64), self.min_err, self.max_err)
            order = np.argsort(m, kind="stable")
            parts = np.array_split(order, min(self.n_error_bins, m.size)) if m.size else []
            curve_m.append([float(np.median(m[p])) for p in parts])
            curve_e.append([float(np.median(e[p])) for p in parts])
        self.fill_mags, self.error_curve_mags, self.error_curve_errs = fills, curve_m, curve_e
        return self

    def _check(self, mags: np.ndarray, errs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mags, errs = np.asarray(mags), np.asarray(errs)
        if mags.ndim != 2 or mags.shape[1] != len(self.bands) or errs.shape != mags.shape:
            raise ValueError(
                f"expected magnitudes and errors of shape (n, {len(self.bands)}) for bands {self.bands}; "
                f"got {mags.shape} and {errs.shape}"
            )
        return mags, errs

    def typical_errors(self, mags: np.ndarray) -> np.ndarray:
        """The typical training error at each (detected) magnitude, per band: (n, n_bands) float64.
        ``max_err`` for a band without an error curve (a preprocessor saved before the curves existed,
        or a band whose training errors were all missing)."""
        mags = np.asarray(mags, dtype=np.float64)
        out = np.full(mags.shape, self.max_err)
        for j in range(min(len(self.error_curve_mags), mags.shape[1])):
            xp, fp = self.error_curve_mags[j], self.error_curve_errs[j]
            if xp:
                out[:, j] = np.interp(mags[:, j], xp, fp)
        return out

    def nondetection_treatment(self) -> tuple[np.ndarray, float]:
        """(fill magnitude per band (n_bands,) float32, error of a non-detection): what a
        non-detected magnitude and its error are replaced by (its flag is 1)."""
        if not self.fill_mags:
            raise RuntimeError("PhotometryPreprocessor used before fit")
        return np.asarray(self.fill_mags, dtype=np.float32), float(self.max_err)

    def transform(self, mags: np.ndarray, errs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (clean magnitudes, clean errors, non-detection flags), all float32 (n, n_bands)
        and finite; see the module docstring for the rules."""
        fill, nd_err = self.nondetection_treatment()
        mags, errs = self._check(mags, errs)
        bad = nondetected(mags, self.sentinel_abs)
        no_err = missing_errors(errs) & ~bad
        m = np.where(bad, fill[None, :], mags).astype(np.float32)
        e = np.where(no_err, self.typical_errors(m) if no_err.any() else 0.0, errs)
        with np.errstate(invalid="ignore"):
            e = np.where(bad, nd_err, np.clip(e, self.min_err, self.max_err))
        return m, e.astype(np.float32), bad.astype(np.float32)

    def count_nondetections(self, mags: np.ndarray, errs: np.ndarray | None = None) -> dict[str, int]:
        """Number of non-detected magnitudes per band (``errs`` is not needed; a missing error on
        a detected magnitude is not a non-detection: see :meth:`count_missing_errors`)."""
        bad = nondetected(np.asarray(mags), self.sentinel_abs)
        return {b: int(n) for b, n in zip(self.bands, bad.sum(axis=0))}

    def count_missing_errors(self, mags: np.ndarray, errs: np.ndarray) -> dict[str, int]:
        """Number of detected magnitudes per band whose error was missing (NaN, inf or <= 0) and
        was replaced by the typical error at that magnitude."""
        mags, errs = self._check(mags, errs)
        replaced = missing_errors(errs) & ~nondetected(mags, self.sentinel_abs)
        return {b: int(n) for b, n in zip(self.bands, replaced.sum(axis=0))}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PhotometryPreprocessor":
        """Rebuild from :meth:`to_dict` output, checking every value (a ``ValueError`` names the
        first unusable one). Dicts saved before the error curves existed load with none."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocessor: expected a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"preprocessor: unknown field(s) {unknown}")
        bands = d.get("bands")
        if not isinstance(bands, list) or not bands or not all(isinstance(b, str) and b for b in bands):
            raise ValueError(f"preprocessor: 'bands' must be a non-empty list of band names, got {bands!r}")
        prep = cls(**d)
        _finite_list("fill_mags", prep.fill_mags, len(bands))
        for name in ("sentinel_abs", "min_err", "max_err", "fill_percentile"):
            value = getattr(prep, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"preprocessor: '{name}' must be a finite positive number, got {value!r}")
        if prep.min_err >= prep.max_err:
            raise ValueError(f"preprocessor: need min_err < max_err, got {prep.min_err} and {prep.max_err}")
        if isinstance(prep.n_error_bins, bool) or not isinstance(prep.n_error_bins, int) or prep.n_error_bins < 1:
            raise ValueError(f"preprocessor: 'n_error_bins' must be a positive integer, got {prep.n_error_bins!r}")
        curves = (prep.error_curve_mags, prep.error_curve_errs)
        if any(curves):
            for name, curve in zip(("error_curve_mags", "error_curve_errs"), curves):
                if not isinstance(curve, list) or len(curve) != len(bands):
                    raise ValueError(f"preprocessor: '{name}' must hold one list per band ({len(bands)})")
            for j, (xp, fp) in enumerate(zip(*curves)):
                _finite_list(f"error_curve_mags[{j}]", xp, len(fp))
                _finite_list(f"error_curve_errs[{j}]", fp, len(xp))
                if np.any(np.diff(xp) < 0) or any(v <= 0 for v in fp):
                    raise ValueError(f"preprocessor: band '{bands[j]}' error curve must have increasing "
                                     "magnitudes and positive errors")
        return prep


def _finite_list(name: str, values, length: int) -> None:
    if (not isinstance(values, list) or len(values) != length
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        raise ValueError(f"preprocessor: '{name}' must be a list of {length} finite numbers, got {values!r}")
