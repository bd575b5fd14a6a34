"""Photometry preprocessing with explicit non-detection handling.

Non-detections
--------------
A magnitude is treated as a **non-detection** when it is NaN, +-inf, or has absolute value
>= ``sentinel_abs`` (default 90, which catches the 99 / -99 / 99.0 sentinels of DC2 and RAIL).
A non-detected magnitude is replaced by that band's *fill magnitude* - the 99.5th
percentile of the detected magnitudes in the training catalog, a proxy for the limiting
magnitude - its error by ``max_err`` (1 mag), and a per-band flag (1 = non-detected) is
passed to the network, so that the model knows the value is an upper limit, not a
measurement. Errors that are NaN, inf or <= 0 are treated the same way; finite errors are
clipped to ``[min_err, max_err]`` (a 1-mag error carries no more information than a
non-detection).

Nothing is silently zero-filled: the number of non-detections per band is available from
:meth:`PhotometryPreprocessor.count_nondetections` and is logged by the stages.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


def nondetected(mags: np.ndarray, errs: np.ndarray | None = None, sentinel_abs: float = 90.0) -> np.ndarray:
    """Boolean mask of non-detections (see module docstring)."""
    bad = ~np.isfinite(mags) | (np.abs(mags) >= sentinel_abs)
    if errs is not None:
        bad |= ~np.isfinite(errs) | (errs <= 0)
    return bad


@dataclass
class PhotometryPreprocessor:
    """Turn raw magnitudes and errors into clean arrays plus non-detection flags.

    Parameters
    ----------
    bands : list of str
        Band names in order (e.g. ``["u", "g", "r", "i", "z", "y"]``).
    fill_mags : list of float, optional
        Replacement magnitude per band for non-detections; set by :meth:`fit`.
    """

    bands: list[str]
    fill_mags: list[float] = field(default_factory=list)
    sentinel_abs: float = 90.0
    min_err: float = 1e-3
    max_err: float = 1.0
    fill_percentile: float = 99.5

    def fit(self, mags: np.ndarray, errs: np.ndarray) -> "PhotometryPreprocessor":
        """Set the fill magnitudes from a training catalog."""
        mags = self._check(mags, errs)
        bad = nondetected(mags, errs, self.sentinel_abs)
        fills = []
        for j, band in enumerate(self.bands):
            good = mags[~bad[:, j], j]
            if good.size == 0:
                raise ValueError(f"band '{band}': every training magnitude is a non-detection; cannot fit")
            fills.append(float(np.percentile(good, self.fill_percentile)))
        self.fill_mags = fills
        return self

    def _check(self, mags: np.ndarray, errs: np.ndarray) -> np.ndarray:
        mags = np.asarray(mags)
        if mags.ndim != 2 or mags.shape[1] != len(self.bands) or np.shape(errs) != mags.shape:
            raise ValueError(
                f"expected magnitudes and errors of shape (n, {len(self.bands)}) for bands {self.bands}; "
                f"got {mags.shape} and {np.shape(errs)}"
            )
        return mags

    def transform(self, mags: np.ndarray, errs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (clean magnitudes, clean errors, non-detection flags), all float32 (n, n_bands)."""
        if not self.fill_mags:
            raise RuntimeError("PhotometryPreprocessor.transform called before fit")
        mags = self._check(mags, errs)
        errs = np.asarray(errs)
        bad = nondetected(mags, errs, self.sentinel_abs)
        fill = np.asarray(self.fill_mags, dtype=np.float32)[None, :]
        m = np.where(bad, fill, mags).astype(np.float32)
        e = np.where(bad, self.max_err, np.clip(np.nan_to_num(errs, nan=self.max_err), self.min_err, self.max_err))
        return m, e.astype(np.float32), bad.astype(np.float32)

    def count_nondetections(self, mags: np.ndarray, errs: np.ndarray) -> dict[str, int]:
        """Number of non-detections per band."""
        bad = nondetected(np.asarray(mags), np.asarray(errs), self.sentinel_abs)
        return {b: int(n) for b, n in zip(self.bands, bad.sum(axis=0))}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PhotometryPreprocessor":
        return cls(**d)
