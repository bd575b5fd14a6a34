"""Files of the shear family (issue 21), as array sets (:mod:`calipers.core.array_sets`):

- stamps (``kind`` :data:`STAMPS`): per galaxy ``image[N, N]`` (float32, GalSim's ``[y, x]`` with y
  up); meta ``galaxy_id``, ``psf_index``, ``noise_sigma``, ``noise_key`` (the fixnoise generator's
  key: ring partners under +g and -g share it) and, when simulated, the truth (``g1, g2, e1, e2,
  eps1, eps2, sersic_n, hlr, snr, psf_fwhm`` and for ring sets ``pair_id, ring, shear_sign``); fixed
  ``psf_images[n_psf, N, N]`` (each PSF with the pixel, unit sum); attributes ``pixel_scale`` and
  ``simulator``.
- shear estimates (``kind`` :data:`ESTIMATES`): per galaxy ``mu[2]`` and ``sigma[2]`` (the
  ellipticity's mean and marginal widths, so the shared Gaussian-vector readers apply), the full
  ``covariance[2, 2]``, the metacal ``response[2, 2]`` and, after :class:`ShearCalibrate`, the
  calibrated ``shear[2]``; meta ``id`` and the stamps' meta.

:func:`read_stamps` refuses an even stamp size, a non-finite pixel (naming the file, the row and the
pixel), a missing or non-finite PSF, a ``psf_index`` without its PSF or a ``noise_sigma <= 0``.
"""
from __future__ import annotations

import numpy as np

from calipers.core.array_sets import array_set_info, read_array_set
from calipers.core.errors import FileFormatError

STAMPS = "calipers.shear_stamps"
ESTIMATES = "calipers.shear_estimates"

__all__ = ["ESTIMATES", "STAMPS", "read_stamps", "stamps_info"]


def stamps_info(path: str) -> dict:
    info = array_set_info(path, STAMPS)
    if "image" not in info["arrays"]:
        raise FileFormatError(f"{path}: a stamp set needs an 'image' array (it has {sorted(info['arrays'])})")
    n_y, n_x = info["arrays"]["image"]
    if n_y != n_x or n_y % 2 == 0:
        raise FileFormatError(f"{path}: stamps are {n_y}x{n_x}; the estimators need square stamps of odd size "
                              f"(exact 90-degree rotations about the central pixel)")
    psf = info["fixed"].get("psf_images")
    if psf is None:
        raise FileFormatError(f"{path}: no PSF: the fixed array 'psf_images' is missing; the estimator and "
                              f"metacalibration need each galaxy's PSF image")
    psf = np.asarray(psf)
    if psf.ndim != 3 or psf.shape[1:] != (n_y, n_x) or not np.all(np.isfinite(psf)) or np.any(psf.sum((1, 2)) <= 0):
        raise FileFormatError(f"{path}: 'psf_images' must be finite [n_psf, {n_y}, {n_x}] images with positive "
                              f"sums, got shape {psf.shape}")
    for col in ("galaxy_id", "psf_index", "noise_sigma", "noise_key"):
        if col not in info["meta_columns"]:
            raise FileFormatError(f"{path}: meta column '{col}' is missing (have {info['meta_columns']})")
    if "pixel_scale" not in info["attrs"]:
        raise FileFormatError(f"{path}: attribute 'pixel_scale' is missing")
    return info


def read_stamps(path: str, rows: slice | None = None) -> tuple[np.ndarray, dict, dict]:
    """``(images[n, N, N], meta, info)`` of a stamp set, checked."""
    info = stamps_info(path)
    arrays, meta = read_array_set(path, ["image"], rows, meta=None, kind=STAMPS)
    images = arrays["image"]
    first = 0 if rows is None or rows.start is None else rows.start
    bad = ~np.isfinite(images)
    if bad.any():
        r, y, x = (int(v[0]) for v in np.nonzero(bad))
        raise FileFormatError(f"{path}: non-finite pixel in column 'image', row {first + r}, pixel (y={y}, x={x}); "
                              f"{int(bad.sum())} such pixels in rows {first}..{first + len(images) - 1}")
    sig = np.asarray(meta["noise_sigma"])
    badr = np.flatnonzero(~(np.isfinite(sig) & (sig > 0)))
    if badr.size:
        raise FileFormatError(f"{path}: column 'noise_sigma', row {first + int(badr[0])}: {sig[badr[0]]} (must be > 0)")
    n_psf = len(info["fixed"]["psf_images"])
    idx = np.asarray(meta["psf_index"])
    badr = np.flatnonzero((idx < 0) | (idx >= n_psf))
    if badr.size:
        raise FileFormatError(f"{path}: column 'psf_index', row {first + int(badr[0])}: {idx[badr[0]]} but the file "
                              f"has {n_psf} PSF image(s)")
    return images, meta, info
