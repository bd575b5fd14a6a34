"""Per-object feature matrices read from catalogs: cleaned magnitudes plus adjacent colours, or
explicit columns. Used by the local (feature-conditioned) calibrator and by the shift test, so
both read features the same way, from one place."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from calipers.core import catalog
from calipers.core.options import stack


def photometry_features(mags: np.ndarray, errs: np.ndarray, preprocessor) -> np.ndarray:
    """Cleaned magnitudes (non-detections and missing errors handled by ``preprocessor``, a
    :class:`~calipers.photoz.preprocess.PhotometryPreprocessor`) followed by the adjacent
    colours m_i - m_(i+1): an (n, 2 n_bands - 1) array."""
    clean = preprocessor.transform(mags, errs)[0]
    return np.hstack([clean, clean[:, :-1] - clean[:, 1:]])


def read_photometry_features(path: str, group: str, bands: Sequence[str], mag_columns: Sequence[str],
                             err_columns: Sequence[str], preprocessor=None, start: int = 0, end: int | None = None):
    """(features, preprocessor) of catalog rows [start, end); the preprocessor is fitted on these
    rows when none is given (so a reference catalog's fill values can be reused for a target)."""
    from calipers.photoz.preprocess import PhotometryPreprocessor

    cols = catalog.read_columns(path, group, list(mag_columns) + list(err_columns), start, end)
    m, e = stack(cols, mag_columns), stack(cols, err_columns)
    prep = preprocessor or PhotometryPreprocessor(list(bands)).fit(m, e)
    return photometry_features(m, e, prep), prep


def read_features(path: str, spec: Mapping, start: int = 0, end: int | None = None) -> np.ndarray:
    """Feature matrix of catalog rows [start, end) for local calibration, as described by
    ``spec`` (saved in the calibrator): explicit ``feature_columns``, or cleaned magnitudes plus
    adjacent colours (``mag_columns``, ``err_columns``, ``preprocessor``).

    Raises
    ------
    ValueError
        Naming the file and the first row whose features are not finite.
    """
    from calipers.photoz.preprocess import PhotometryPreprocessor

    group = spec["hdf5_groupname"]
    if spec["feature_columns"]:
        cols = catalog.read_columns(path, group, spec["feature_columns"], start, end)
        x = stack(cols, spec["feature_columns"])
    else:
        prep = PhotometryPreprocessor.from_dict(spec["preprocessor"])
        x, _ = read_photometry_features(path, group, prep.bands, spec["mag_columns"], spec["err_columns"], prep,
                                        start, end)
    bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if bad.size:
        raise ValueError(f"{path}: calibration features not finite in {bad.size} row(s), first at row {start + bad[0]}")
    return x


def with_ancil_features(x: np.ndarray, ancil: Mapping | None, spec: Mapping, path: str, start: int = 0) -> np.ndarray:
    """The catalog features ``x`` of rows [start, start + n) followed by the distributions' own ancil
    columns ``spec["ancil_columns"]`` (e.g. a model's predicted width), with the natural log taken of
    every feature named in ``spec["log_columns"]`` (catalog or ancil names; they must be > 0).
    A spec without those keys (a calibrator from before they existed) gives ``x`` unchanged.

    Raises
    ------
    ValueError
        Naming ``path`` (the distributions' file), the column and the first bad row: an ancil column
        missing, not finite, or a log feature not positive.
    """
    ancil_cols = list(spec.get("ancil_columns", []))
    logs = set(spec.get("log_columns", []))
    if not ancil_cols and not logs:
        return x
    parts = [np.asarray(x, dtype=float)]
    names = list(spec.get("feature_columns") or [f"photometry_{k}" for k in range(x.shape[1])])
    for col in ancil_cols:
        if not ancil or col not in ancil:
            raise ValueError(f"{path}: ancil column '{col}' (a calibration feature) missing; the ancil holds "
                             f"{sorted(ancil or {})}")
        v = np.asarray(ancil[col], dtype=float).reshape(-1)
        if v.size != len(x):
            raise ValueError(f"{path}: ancil column '{col}' has {v.size} rows for {len(x)} objects")
        parts.append(v[:, None])
        names.append(col)
    out = np.hstack(parts)
    for k, name in enumerate(names):
        if name in logs:
            bad = np.flatnonzero(~(out[:, k] > 0))
            if bad.size:
                raise ValueError(f"{path}: calibration feature '{name}' must be > 0 for its log, got {out[bad[0], k]} "
                                 f"at row {start + bad[0]}")
            out[:, k] = np.log(out[:, k])
    bad = np.flatnonzero(~np.all(np.isfinite(out), axis=1))
    if bad.size:
        raise ValueError(f"{path}: calibration features not finite in {bad.size} row(s), first at row {start + bad[0]}")
    return out

