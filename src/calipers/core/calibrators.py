"""Calibrator directories: ``calibrator.json`` (method, grid, parameters, feature definition, the
model whose p(z) it was fitted on) and, for ``pit_local``, ``weights.pt`` (torch state dicts,
loaded with ``weights_only=True``: opening a calibrator never executes code).

A calibrator fitted on an importance-weighted calibration set (covariate shift) records it in
``calibrator.json`` under ``importance_weights``: the catalog column the weights came from, the
catalog, the number of rows, the Kish effective sample size (``ess``) and its fraction of the
rows (``ess_fraction``), and the calibration set's PIT summary unweighted and weighted
(:func:`importance_weights_info`). A weighted conformal calibrator also stores its weights (one
per calibration score); without them it would silently be an unweighted one, so loading refuses
it."""
from __future__ import annotations

import json
import os

from calipers.core.errors import FileFormatError, ModelMismatchError
from calipers.core.provenance import read_json_object

METHODS = ("pit_global", "pit_local", "conformal")
CALIBRATOR_JSON = "calibrator.json"
WEIGHTS = "weights.pt"
IMPORTANCE_WEIGHTS = "importance_weights"
_IMPORTANCE_KEYS = ("column", "ess", "ess_fraction")


def save_calibrator(directory: str, spec: dict, states: dict | None = None) -> None:
    """Write ``spec`` as ``calibrator.json`` and, when given, ``states`` as ``weights.pt``."""
    os.makedirs(directory, exist_ok=True)
    if states is not None:
        import torch

        torch.save(states, os.path.join(directory, WEIGHTS))
    with open(os.path.join(directory, CALIBRATOR_JSON), "w") as fh:
        json.dump(spec, fh)


def read_calibrator_spec(directory: str) -> dict:
    """The ``calibrator.json`` of a calibrator directory (errors name the file)."""
    path = os.path.join(directory, CALIBRATOR_JSON)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such calibrator directory")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: not a calibrator directory (no {CALIBRATOR_JSON})")
    return read_json_object(path, FileFormatError)


def importance_weights_info(spec: dict) -> dict | None:
    """The ``importance_weights`` record of a calibrator spec (column, catalog, n_rows, ess,
    ess_fraction, min_ess_fraction, max_weight, pit_summary), or None for an unweighted fit."""
    return spec.get(IMPORTANCE_WEIGHTS) or None


def _check_importance_weights(spec: dict, path: str, method: str) -> None:
    if method == "conformal" and spec.get("weights") is not None:
        import numpy as np

        w = np.asarray(spec["weights"], dtype=float)
        bad = np.flatnonzero(~(np.isfinite(w) & (w >= 0)))
        if bad.size or not w.sum() > 0:
            first = f"first at entry {bad[0]}" if bad.size else "all zero"
            raise FileFormatError(f"{path}: the conformal calibrator's 'weights' must be finite and non-negative, "
                                  f"not all zero ({first}); the file is corrupt or was edited")
    record = spec.get(IMPORTANCE_WEIGHTS)
    if record is None:
        return
    if not isinstance(record, dict) or any(k not in record for k in _IMPORTANCE_KEYS):
        raise FileFormatError(f"{path}: '{IMPORTANCE_WEIGHTS}' must be a mapping with {list(_IMPORTANCE_KEYS)}, "
                              f"got {record!r}; the file is corrupt or was edited")
    if method == "conformal":
        n_scores, weights = len(spec.get("scores") or []), spec.get("weights")
        if weights is None or len(weights) != n_scores:
            got = "none" if weights is None else str(len(weights))
            raise FileFormatError(f"{path}: a conformal calibrator fitted with importance weights (column "
                                  f"'{record['column']}') must store one weight per calibration score ({n_scores}), "
                                  f"got {got}; the file is incomplete or was edited")


def load_calibrator(directory: str):
    """(method, calibrator object, spec) from a calibrator directory, without executing code.

    Raises
    ------
    FileNotFoundError
        No directory or no ``calibrator.json``.
    FileFormatError
        Corrupt JSON, truncated or unreadable ``weights.pt``, or entries missing from the spec
        (a malformed ``importance_weights`` record, or a weighted conformal calibrator without
        its weights); the message names the file.
    ModelMismatchError
        An unknown calibration method.
    """
    from calipers.calibrate import ConformalPredictiveDistribution, LocalPITRecalibrator, PITRecalibrator

    spec = read_calibrator_spec(directory)
    path = os.path.join(directory, CALIBRATOR_JSON)
    method = spec.get("method")
    if method not in METHODS:
        raise ModelMismatchError(f"{path}: unknown calibration method {method!r}; expected one of {METHODS}")
    if "zgrid" not in spec or len(spec["zgrid"]) != 3:
        raise FileFormatError(f"{path}: no redshift grid ('zgrid': [zmin, zmax, n]); the file is not a complete "
                              "calibrator")
    _check_importance_weights(spec, path, method)
    try:
        if method == "pit_global":
            return method, PITRecalibrator.from_dict(spec), spec
        if method == "conformal":
            return method, ConformalPredictiveDistribution.from_dict(spec), spec
        states = load_weights(os.path.join(directory, WEIGHTS))
        return method, LocalPITRecalibrator.from_state(spec, states), spec
    except FileFormatError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise FileFormatError(f"{directory}: the {method} calibrator cannot be rebuilt from its files "
                              f"({type(err).__name__}: {err}); it is incomplete or corrupt") from err


def load_weights(path: str) -> dict:
    """Torch state dicts from ``path`` with ``weights_only=True`` (no code runs); a missing,
    truncated or foreign file is an error naming it."""
    import pickle
    import zipfile

    import torch

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused something: never load it
        raise FileFormatError(f"{path}: refused, it holds more than tensors and plain containers ({err})") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise FileFormatError(f"{path}: cannot be read as torch weights; is it truncated or corrupt? ({err})") from err


# ----------------------------------------------------------------------------- classifier calibrators

CLASSIFIER_CALIBRATOR_KIND = "calipers.classifier_calibrator"


def json_default(o):
    """``json.dump`` default: numpy scalars and arrays as plain numbers and lists."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-able: {type(o).__name__}")


def write_json_atomic(path: str, payload: dict) -> None:
    """Write ``payload`` as JSON (numpy scalars and arrays allowed) to a temporary name, then rename."""
    tmp = f"{path}.partial"
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=1, default=json_default)
    os.replace(tmp, path)


def write_classifier_calibrator(path: str, fusion: str, calibrator, fit: dict, provenance: dict,
                                stacking=None) -> None:
    """A fitted classifier calibration as one JSON file: the member fusion (with the
    :class:`~calipers.calibrate.classification.StackedFusion` weights when ``fusion`` is
    ``"stacked"``), the :class:`~calipers.calibrate.classification.ClassifierCalibrator`
    (``to_dict``), the fit summary."""
    if (fusion == "stacked") != (stacking is not None):
        raise ValueError("write_classifier_calibrator: stacking weights go with fusion 'stacked' only")
    doc = {"kind": CLASSIFIER_CALIBRATOR_KIND, "fusion": fusion, "calibrator": calibrator.to_dict(), "fit": fit,
           "provenance": provenance}
    if stacking is not None:
        doc["stacking"] = stacking.to_dict()
    write_json_atomic(path, doc)


def read_stacking(path: str, spec: dict):
    """The :class:`StackedFusion` of a calibrator file whose fusion is ``"stacked"`` (else None)."""
    from calipers.calibrate.classification import StackedFusion

    if spec.get("fusion") != "stacked":
        return None
    try:
        return StackedFusion.from_dict(spec["stacking"])
    except (KeyError, ValueError, TypeError) as err:
        raise FileFormatError(f"{path}: fusion 'stacked' without valid stacking weights: {err}") from err


def read_classifier_calibrator(path: str):
    """(fusion, ClassifierCalibrator, spec) from :func:`write_classifier_calibrator`'s file; errors
    name the file."""
    from calipers.calibrate.classification import ClassifierCalibrator

    spec = read_json_object(path, FileFormatError)
    if spec.get("kind") != CLASSIFIER_CALIBRATOR_KIND:
        raise FileFormatError(f"{path}: not a classifier calibrator (kind={spec.get('kind')!r})")
    try:
        return spec["fusion"], ClassifierCalibrator.from_dict(spec["calibrator"]), spec
    except (KeyError, ValueError, TypeError) as err:
        raise FileFormatError(f"{path}: malformed classifier calibrator: {err}") from err
