"""Calibrator directories: ``calibrator.json`` (method, grid, parameters, feature definition, the
model whose p(z) it was fitted on) and, for ``pit_local``, ``weights.pt`` (torch state dicts,
loaded with ``weights_only=True``: opening a calibrator never executes code)."""
from __future__ import annotations

import json
import os

from calipers.core.errors import FileFormatError, ModelMismatchError
from calipers.core.provenance import read_json_object

METHODS = ("pit_global", "pit_local", "conformal")
CALIBRATOR_JSON = "calibrator.json"
WEIGHTS = "weights.pt"


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


def load_calibrator(directory: str):
    """(method, calibrator object, spec) from a calibrator directory, without executing code.

    Raises
    ------
    FileNotFoundError
        No directory or no ``calibrator.json``.
    FileFormatError
        Corrupt JSON, truncated or unreadable ``weights.pt``, or entries missing from the spec;
        the message names the file.
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
