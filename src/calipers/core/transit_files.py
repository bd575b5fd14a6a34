"""Files of the transit family (issue 20) and of Gaussian-vector predictions, as array sets
(:mod:`calipers.core.array_sets`):

- light curves (``kind`` :data:`LIGHT_CURVES`): per planet ``flux[K, T]`` and ``white[T]``
  (float32), ``time[T]`` (days from mid-transit), ``ld[K, 2]``, ``ld_white[2]`` and, when simulated,
  the true ``depth[K]``; meta ``planet_id``, the ephemeris (``period``, ``a_rs``, ``inclination``)
  and the simulated truth; fixed ``wavelength`` and ``bin_edges`` (um); attribute ``simulator``.
- depths (``kind`` :data:`DEPTHS`): per planet ``d_hat``, ``sigma_hat``, ``rms``, ``beta`` [K] and
  the true ``depth`` when known; meta ``planet_id``, ``white_depth``, ``white_sigma``, ``white_rms``.
- Gaussian vectors (``kind`` :data:`GAUSSIAN_VECTORS`): ``mu[K]``, ``sigma[K]`` per object; meta
  ``id``; fixed ``wavelength`` when the outputs are wavelength bins; attribute ``outputs`` (what the
  K outputs are).

Readers refuse a file of another kind, a non-finite value or a sigma <= 0, naming the file, the row
and the column (bin).
"""
from __future__ import annotations

import numpy as np

from calipers.core.array_sets import array_set_info, read_array_set
from calipers.core.errors import FileFormatError

LIGHT_CURVES = "calipers.transit_light_curves"
DEPTHS = "calipers.transit_depths"
GAUSSIAN_VECTORS = "calipers.gaussian_vectors"
EPHEMERIS = ("period", "a_rs", "inclination")

__all__ = ["DEPTHS", "EPHEMERIS", "GAUSSIAN_VECTORS", "LIGHT_CURVES", "check_finite", "read_gaussian_vectors",
           "read_gaussian_with_truth"]


def check_finite(path: str, name: str, values: np.ndarray, first_row: int = 0, axes=("row", "bin", "time index"),
                 positive: bool = False) -> None:
    """A :class:`FileFormatError` naming ``path``, the array and the first bad index (row numbers
    offset by ``first_row``) when ``values`` has a NaN/inf (or, with ``positive``, a value <= 0)."""
    v = np.asarray(values)
    bad = ~np.isfinite(v) if not positive else ~(np.isfinite(v) & (v > 0))
    where = np.argwhere(bad)
    if where.size:
        idx = list(where[0])
        idx[0] += first_row
        loc = ", ".join(f"{a} {i}" for a, i in zip(axes, idx))
        what = "not finite" if not np.isfinite(v[tuple(where[0])]) else "not > 0"
        raise FileFormatError(f"{path}: '{name}' is {what} ({v[tuple(where[0])]}) at {loc} "
                              f"({int(bad.sum())} value(s) in all); nothing was written")


def read_gaussian_vectors(path: str, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """``(mu, sigma, meta, info)`` of a Gaussian-vector file, checked (finite, sigma > 0)."""
    info = array_set_info(path, GAUSSIAN_VECTORS)
    arrays, meta = read_array_set(path, ["mu", "sigma"], rows, meta=None, kind=GAUSSIAN_VECTORS)
    first = 0 if rows is None or rows.start is None else rows.start
    check_finite(path, "mu", arrays["mu"], first, ("row", "output"))
    check_finite(path, "sigma", arrays["sigma"], first, ("row", "output"), positive=True)
    return arrays["mu"], arrays["sigma"], meta, info


def read_gaussian_with_truth(pred_path: str, truth_path: str, truth_array: str, truth_id_column: str = ""):
    """``(mu, sigma, y, ids, info)``: Gaussian-vector predictions and the truth array ``truth_array``
    of an array set, matched row by row (same shape and, when ``truth_id_column`` is given, the same
    ids in the same order; errors name both files)."""
    mu, sigma, meta, info = read_gaussian_vectors(pred_path)
    tinfo = array_set_info(truth_path)
    if truth_array not in tinfo["arrays"]:
        raise FileFormatError(f"{truth_path}: no array '{truth_array}' (it has {sorted(tinfo['arrays'])})")
    arrays, tmeta = read_array_set(truth_path, [truth_array], meta=[truth_id_column] if truth_id_column else [])
    y = np.asarray(arrays[truth_array], dtype=np.float64)
    if y.shape != mu.shape:
        raise FileFormatError(f"{pred_path} holds predictions of shape {mu.shape} but {truth_path} has "
                              f"'{truth_array}' of shape {y.shape}")
    check_finite(truth_path, truth_array, y, 0, ("row", "output"))
    if truth_id_column and not np.array_equal(np.asarray(tmeta[truth_id_column]), np.asarray(meta["id"])):
        row = int(np.flatnonzero(np.asarray(tmeta[truth_id_column]) != np.asarray(meta["id"]))[0])
        raise FileFormatError(f"row {row}: id {meta['id'][row]} in {pred_path} but {truth_id_column} "
                              f"{tmeta[truth_id_column][row]} in {truth_path}; the files must hold the same objects "
                              "in the same order")
    return mu, sigma, y, meta["id"], info
