"""Argument checks shared by the algorithm packages: plain values in, the checked value out, and a
``ValueError`` naming the argument otherwise (no files, no configs)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["checked_number"]


def checked_number(name: str, value: Any, kind: type, low: float | None = None, high: float | None = None,
                   low_open: bool = False) -> Any:
    """``value`` checked as an int (``kind=int``) or a finite float in [low, high] (``(low, high]``
    with ``low_open``); ``name`` names it in errors (e.g. ``LensSimConfig.n_pix``). Booleans are refused."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if kind is int:
        if not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    else:
        if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} = {value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ValueError(f"{name} = {value!r} must be <= {high}")
    return value
