"""The selection function of a binary classifier: completeness per stratum of the data, with
exact intervals, and false-positive rates per class of impostor.

A lens finder (or any detector) is used with one threshold, fixed on the negatives at a target
false-positive rate. Its *selection function* says which fraction of the true positives it
recovers as a function of their properties (Einstein radius, lens magnitude) and of the data
quality (seeing, depth): the completeness in each bin, with a Clopper-Pearson interval, and a
status ``"insufficient data"`` (completeness NaN) where a bin holds fewer than ``min_count``
positives - a number with no support is never reported alone. Its false positives are split by
the class of the negative (spirals, rings, mergers, ...), each with its own interval.

Convention (shared with :mod:`calipers.validate.classification`): an object is selected when
``score > threshold``; a bin ``[edges[i], edges[i + 1])`` is half-open, so values outside
``[edges[0], edges[-1])`` fall in no bin (they are counted in ``n_outside``, not dropped silently).
Arrays in, dicts / a dataclass out; no file is opened here.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from calipers.validate.classification import clopper_pearson, threshold_at_fpr

logger = logging.getLogger(__name__)

__all__ = ["clopper_pearson", "completeness_table", "completeness_table_2d", "fpr_by_class", "SelectionFunction",
           "selection_function", "is_monotone_increasing"]

STATUS_OK = "ok"
STATUS_INSUFFICIENT = "insufficient data"


def _finite_column(values, name: str, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"column {name!r}: {what} must be 1-d, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"column {name!r}: {bad.size} {what} are NaN or infinite, first at row {bad[0]}; "
                         "remove or impute them before measuring the selection function")
    return arr


def _edges(edges, name: str) -> np.ndarray:
    e = np.asarray(edges, dtype=float)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError(f"column {name!r}: bin edges must be finite and strictly increasing with at least 2 values, "
                         f"got {np.asarray(edges).tolist()}")
    return e


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index of the half-open bin [edges[i], edges[i+1]) holding each value; -1 outside."""
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[(values < edges[0]) | (values >= edges[-1])] = -1
    return idx


def _counts(detected: np.ndarray, idx: np.ndarray, n_bins: int):
    inside = idx >= 0
    n = np.bincount(idx[inside], minlength=n_bins)
    k = np.bincount(idx[inside], detected[inside].astype(float), minlength=n_bins).astype(np.int64)
    return n, k


def _rates(n: np.ndarray, k: np.ndarray, cl: float, min_count: int):
    ok = n >= min_count
    lo, hi = clopper_pearson(k, n, cl)
    lo, hi = np.atleast_1d(lo).astype(float), np.atleast_1d(hi).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        comp = np.where(ok, k / np.maximum(n, 1), np.nan)
    lo, hi = np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)
    return comp, lo, hi, ok


def completeness_table(scores, threshold: float, values, edges, cl: float = 0.95, min_count: int = 50,
                       name: str = "") -> list[dict]:
    """Completeness of positives (``score > threshold``) in bins of one property.

    Parameters
    ----------
    scores : (n,) classifier score of each true positive (same scale as ``threshold``)
    threshold : the operating threshold (e.g. :func:`threshold_at_fpr` on the negatives)
    values : (n,) the property binned, in its own units (e.g. theta_E in arcsec, seeing FWHM in
        arcsec); NaN raises ValueError naming the column
    edges : bin edges, strictly increasing; bin i is ``[edges[i], edges[i + 1])``
    cl : confidence level of the Clopper-Pearson interval
    min_count : a bin with fewer positives gets ``status = "insufficient data"`` and NaN for the
        completeness and its interval (n and k still reported)
    name : the column name (used in messages and in each row)

    Returns
    -------
    list of rows (one per bin): ``name, edge_lo, edge_hi, n, k, completeness, lo, hi, half_width,
    status``; half_width is (hi - lo) / 2. Values outside the edges are logged (``n_outside``).
    """
    scores = _finite_column(scores, name, "scores")
    values = _finite_column(values, name)
    if scores.shape != values.shape:
        raise ValueError(f"column {name!r}: scores and values differ in length: {scores.size} vs {values.size}")
    edges = _edges(edges, name)
    idx = _bin_index(values, edges)
    n_outside = int(np.sum(idx < 0))
    if n_outside:
        logger.info("completeness_table: %d value(s) of %r outside [%g, %g) are in no bin", n_outside, name,
                    edges[0], edges[-1])
    n, k = _counts(scores > threshold, idx, edges.size - 1)
    comp, lo, hi, ok = _rates(n, k, cl, min_count)
    return [{"name": name, "edge_lo": float(edges[i]), "edge_hi": float(edges[i + 1]), "n": int(n[i]), "k": int(k[i]),
             "completeness": float(comp[i]), "lo": float(lo[i]), "hi": float(hi[i]),
             "half_width": float((hi[i] - lo[i]) / 2), "status": STATUS_OK if ok[i] else STATUS_INSUFFICIENT}
            for i in range(edges.size - 1)]


def completeness_table_2d(scores, threshold: float, values_x, edges_x, values_y, edges_y, cl: float = 0.95,
                          min_count: int = 50, name_x: str = "x", name_y: str = "y") -> dict:
    """Completeness in the cells of two properties (e.g. seeing x Einstein radius).

    Same conventions as :func:`completeness_table`. Returns a dict with ``name_x, name_y,
    edges_x, edges_y`` and (nx, ny) arrays ``n, k, completeness`` (NaN where insufficient),
    ``lo, hi, half_width`` and ``status`` (strings); ``n_outside`` counts objects in no cell.
    """
    scores = _finite_column(scores, f"{name_x}/{name_y}", "scores")
    vx, vy = _finite_column(values_x, name_x), _finite_column(values_y, name_y)
    if not (scores.shape == vx.shape == vy.shape):
        raise ValueError(f"columns {name_x!r}, {name_y!r}: scores and values differ in length: "
                         f"{scores.size}, {vx.size}, {vy.size}")
    ex, ey = _edges(edges_x, name_x), _edges(edges_y, name_y)
    nx, ny = ex.size - 1, ey.size - 1
    ix, iy = _bin_index(vx, ex), _bin_index(vy, ey)
    flat = np.where((ix >= 0) & (iy >= 0), ix * ny + iy, -1)
    n, k = _counts(scores > threshold, flat, nx * ny)
    comp, lo, hi, ok = _rates(n, k, cl, min_count)
    status = np.where(ok, STATUS_OK, STATUS_INSUFFICIENT).astype(object)
    return {"name_x": name_x, "name_y": name_y, "edges_x": ex, "edges_y": ey, "n": n.reshape(nx, ny),
            "k": k.reshape(nx, ny), "completeness": comp.reshape(nx, ny), "lo": lo.reshape(nx, ny),
            "hi": hi.reshape(nx, ny), "half_width": ((hi - lo) / 2).reshape(nx, ny),
            "status": status.reshape(nx, ny), "n_outside": int(np.sum(flat < 0)), "min_count": int(min_count),
            "cl": float(cl)}


def fpr_by_class(scores, threshold: float, classes, class_names, cl: float = 0.95) -> list[dict]:
    """False-positive rate of each class of negative at a threshold (``score > threshold``).

    ``classes`` holds, per negative, either an integer code indexing ``class_names`` or the class
    name itself. Returns one row per entry of ``class_names``: ``class, n, k, fpr, lo, hi``
    (Clopper-Pearson at ``cl``); a class with no member has ``fpr`` NaN and the interval (0, 1).
    """
    scores = _finite_column(scores, "class", "scores")
    names = [str(c) for c in class_names]
    cls = np.asarray(classes)
    if cls.shape != scores.shape:
        raise ValueError(f"fpr_by_class: classes and scores differ in length: {cls.size} vs {scores.size}")
    if cls.dtype.kind in "iu":
        bad = np.flatnonzero((cls < 0) | (cls >= len(names)))
        if bad.size:
            raise ValueError(f"fpr_by_class: class code {cls[bad[0]]} at row {bad[0]} is not an index of "
                             f"class_names ({len(names)} names)")
        code = cls.astype(np.int64)
    else:
        lookup = {c: i for i, c in enumerate(names)}
        as_str = cls.astype(str)
        unknown = sorted(set(np.unique(as_str)) - set(lookup))
        if unknown:
            raise ValueError(f"fpr_by_class: classes {unknown} are not in class_names {names}")
        code = np.array([lookup[c] for c in as_str], dtype=np.int64)
    selected = scores > threshold
    n = np.bincount(code, minlength=len(names))
    k = np.bincount(code, selected.astype(float), minlength=len(names)).astype(np.int64)
    lo, hi = clopper_pearson(k, n, cl)
    return [{"class": names[i], "n": int(n[i]), "k": int(k[i]), "fpr": float(k[i] / n[i]) if n[i] else float("nan"),
             "lo": float(lo[i]), "hi": float(hi[i])} for i in range(len(names))]


def _jsonable(obj):
    """numpy -> Python, NaN / inf -> None, recursively."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


_FLOAT_KEYS = {"completeness", "lo", "hi", "half_width", "fpr"}
_ARRAY_KEYS = {"edges_x", "edges_y", "n", "k", "completeness", "lo", "hi", "half_width", "status"}


def _nan(v):
    return float("nan") if v is None else v


def _key_2d(name_x: str, name_y: str) -> str:
    return f"{name_x}__{name_y}"


@dataclass
class SelectionFunction:
    """A classifier's selection function at one operating point.

    Attributes
    ----------
    threshold : the score threshold (``score > threshold`` is selected)
    fpr_target : the false-positive rate it was set at on the negatives
    strata : column name -> :func:`completeness_table` rows
    two_d : ``"x__y"`` (file-name safe) -> :func:`completeness_table_2d` dict
    fpr_classes : :func:`fpr_by_class` rows
    fpr, fpr_lo, fpr_hi : false-positive rate met on all negatives, with its interval
    completeness, completeness_lo, completeness_hi : over all positives, with its interval
    n_pos, n_neg, cl, min_count : sample sizes and settings
    """

    threshold: float
    fpr_target: float
    strata: dict = field(default_factory=dict)
    two_d: dict = field(default_factory=dict)
    fpr_classes: list = field(default_factory=list)
    fpr: float = float("nan")
    fpr_lo: float = float("nan")
    fpr_hi: float = float("nan")
    completeness: float = float("nan")
    completeness_lo: float = float("nan")
    completeness_hi: float = float("nan")
    n_pos: int = 0
    n_neg: int = 0
    cl: float = 0.95
    min_count: int = 50

    def to_dict(self) -> dict:
        """JSON-able dict (arrays -> lists, NaN -> None)."""
        return _jsonable({"threshold": self.threshold, "fpr_target": self.fpr_target, "strata": self.strata,
                          "two_d": self.two_d, "fpr_classes": self.fpr_classes, "fpr": self.fpr,
                          "fpr_lo": self.fpr_lo, "fpr_hi": self.fpr_hi, "completeness": self.completeness,
                          "completeness_lo": self.completeness_lo, "completeness_hi": self.completeness_hi,
                          "n_pos": self.n_pos, "n_neg": self.n_neg, "cl": self.cl, "min_count": self.min_count})

    @classmethod
    def from_dict(cls, d: dict) -> "SelectionFunction":
        """Inverse of :meth:`to_dict` (None -> NaN, 2-d tables back to numpy arrays)."""
        strata = {name: [{k: (_nan(v) if k in _FLOAT_KEYS else v) for k, v in row.items()} for row in rows]
                  for name, rows in d.get("strata", {}).items()}
        two_d = {}
        for key, table in d.get("two_d", {}).items():
            t = dict(table)
            for k in _ARRAY_KEYS & set(t):
                if k == "status":
                    t[k] = np.array(t[k], dtype=object)
                elif k in ("n", "k"):
                    t[k] = np.array(t[k], dtype=np.int64)
                else:
                    t[k] = np.array([[_nan(v) for v in r] for r in t[k]] if k not in ("edges_x", "edges_y")
                                    else t[k], dtype=float)
            two_d[key] = t
        fpr_classes = [{k: (_nan(v) if k in _FLOAT_KEYS else v) for k, v in row.items()}
                       for row in d.get("fpr_classes", [])]
        scalars = {k: _nan(d[k]) for k in ("threshold", "fpr_target", "fpr", "fpr_lo", "fpr_hi", "completeness",
                                          "completeness_lo", "completeness_hi", "cl") if k in d}
        ints = {k: int(d[k]) for k in ("n_pos", "n_neg", "min_count") if k in d}
        return cls(strata=strata, two_d=two_d, fpr_classes=fpr_classes, **scalars, **ints)


def selection_function(lens_scores, lens_meta: dict, neg_scores, neg_classes, class_names,
                       fpr_target: float = 1e-3, strata: dict | None = None,
                       pairs=(("psf_fwhm_r", "theta_e"),), min_count: int = 50,
                       cl: float = 0.95) -> SelectionFunction:
    """Measure the selection function at the threshold that gives ``fpr_target`` on the negatives.

    Parameters
    ----------
    lens_scores : (n_pos,) scores of the true positives (lenses)
    lens_meta : column name -> (n_pos,) property of each positive (theta_e in arcsec,
        psf_fwhm_r in arcsec, ...)
    neg_scores : (n_neg,) scores of the negatives; the threshold is
        :func:`~calipers.validate.classification.threshold_at_fpr` ``(neg_scores, fpr_target)``
        (n_neg must be at least 1 / fpr_target)
    neg_classes, class_names : class of each negative (code or name) and the class names, for
        :func:`fpr_by_class`
    strata : column name -> bin edges; one :func:`completeness_table` per column
    pairs : (x, y) column pairs for :func:`completeness_table_2d`; each column's edges come from
        ``strata``. Pass ``()`` for none.
    min_count, cl : as in :func:`completeness_table`

    A column of ``strata`` or ``pairs`` missing from ``lens_meta`` raises KeyError naming it and
    the columns there are.
    """
    strata = dict(strata or {})
    available = sorted(lens_meta)
    for col in list(strata) + [c for pair in pairs for c in pair]:
        if col not in lens_meta:
            raise KeyError(f"selection_function: column {col!r} is not in lens_meta (columns: {available})")
    for pair in pairs:
        for col in pair:
            if col not in strata:
                raise ValueError(f"selection_function: pair {tuple(pair)} needs bin edges for {col!r} in strata "
                                 f"(strata given for {sorted(strata)})")
    lens_scores = _finite_column(lens_scores, "lens_scores", "scores")
    neg_scores = _finite_column(neg_scores, "neg_scores", "scores")
    for col in sorted(set(strata) | {c for pair in pairs for c in pair}):
        if np.shape(lens_meta[col]) != lens_scores.shape:
            raise ValueError(f"selection_function: column {col!r} has {np.size(lens_meta[col])} rows, "
                             f"lens_scores has {lens_scores.size}")
    threshold = threshold_at_fpr(neg_scores, fpr_target)
    k_neg, k_pos = int(np.sum(neg_scores > threshold)), int(np.sum(lens_scores > threshold))
    f_lo, f_hi = clopper_pearson(k_neg, neg_scores.size, cl)
    c_lo, c_hi = clopper_pearson(k_pos, lens_scores.size, cl)
    tables = {col: completeness_table(lens_scores, threshold, lens_meta[col], edges, cl=cl, min_count=min_count,
                                      name=col) for col, edges in strata.items()}
    two_d = {_key_2d(x, y): completeness_table_2d(lens_scores, threshold, lens_meta[x], strata[x], lens_meta[y],
                                                  strata[y], cl=cl, min_count=min_count, name_x=x, name_y=y)
             for x, y in pairs}
    classes = fpr_by_class(neg_scores, threshold, neg_classes, class_names, cl=cl)
    return SelectionFunction(threshold=threshold, fpr_target=float(fpr_target), strata=tables, two_d=two_d,
                             fpr_classes=classes, fpr=k_neg / neg_scores.size, fpr_lo=f_lo, fpr_hi=f_hi,
                             completeness=k_pos / lens_scores.size if lens_scores.size else float("nan"),
                             completeness_lo=c_lo, completeness_hi=c_hi, n_pos=int(lens_scores.size),
                             n_neg=int(neg_scores.size), cl=float(cl), min_count=int(min_count))


def is_monotone_increasing(table: list[dict], tolerance_sigma: float = 2.0) -> bool:
    """Does the completeness rise (never fall significantly) along the bins of a table?

    Over the bins with status ``"ok"``, in bin order, every step from one to the next must satisfy
    ``c_next - c_prev >= -tolerance_sigma * sqrt(var_prev + var_next)``, with the binomial
    variance ``var = p (1 - p) / n`` at the smoothed proportion ``p = (k + 1/2) / (n + 1)`` (so a
    bin at completeness 0 or 1 still has a non-zero error). This checks "non-decreasing within
    the noise" - the shape expected of completeness against Einstein radius - not that it rises
    significantly; a flat table passes. Needs at least two ok bins (ValueError otherwise).
    """
    ok = [r for r in table if r["status"] == STATUS_OK]
    if len(ok) < 2:
        raise ValueError(f"is_monotone_increasing: needs at least 2 bins with enough data, got {len(ok)} "
                         f"of {len(table)}" + (f" for {table[0].get('name')!r}" if table else ""))
    n = np.array([r["n"] for r in ok], dtype=float)
    k = np.array([r["k"] for r in ok], dtype=float)
    p_smooth = (k + 0.5) / (n + 1.0)
    var = p_smooth * (1 - p_smooth) / n
    comp = k / n
    step = np.diff(comp)
    allowed = -tolerance_sigma * np.sqrt(var[1:] + var[:-1])
    worst = int(np.argmin(step - allowed))
    if step[worst] < allowed[worst]:
        logger.info("is_monotone_increasing: completeness falls from %.3f to %.3f between ok bins %d and %d "
                    "(more than %.1f sigma)", comp[worst], comp[worst + 1], worst, worst + 1, tolerance_sigma)
        return False
    return True
