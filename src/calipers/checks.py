"""Argument checks shared by the algorithm packages: plain values in, the checked value out, and a
``ValueError`` naming the argument otherwise (no files, no configs)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["checked_number", "gaussian_vectors"]


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


def gaussian_vectors(mu, sigma, y=None, what: str = "Gaussian vectors"):
    """``mu``, ``sigma`` (and ``y``) as float [N, K] arrays of one shape, finite, sigma > 0; a
    ValueError naming the first bad row and output otherwise."""
    arrays = [np.asarray(a, dtype=np.float64) for a in ((mu, sigma) if y is None else (mu, sigma, y))]
    shape = arrays[0].shape
    if len(shape) != 2 or any(a.shape != shape for a in arrays):
        raise ValueError(f"{what}: mu, sigma{'' if y is None else ' and y'} must be [N, K] arrays of one shape; got "
                         f"{[a.shape for a in arrays]}")
    for name, a in zip(("mu", "sigma", "y"), arrays):
        bad = np.argwhere(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"{what}: {name} is not finite at row {bad[0][0]}, output {bad[0][1]} "
                             f"({len(bad)} value(s) in all)")
    bad = np.argwhere(arrays[1] <= 0)
    if bad.size:
        raise ValueError(f"{what}: sigma must be positive; {arrays[1][tuple(bad[0])]} at row {bad[0][0]}, output "
                         f"{bad[0][1]} ({len(bad)} value(s) in all)")
    return arrays
