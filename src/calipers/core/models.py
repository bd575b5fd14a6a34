"""Model directories: a JSON description + ``weights.pt`` (torch state dicts, no pickled code).

``weights.pt`` is loaded with ``torch.load(..., weights_only=True)``, which refuses anything but
tensors and plain containers, so opening a model never executes code. The algorithm packages
turn their models into (metadata, state dicts) and back; this module alone does the file I/O.
"""
from __future__ import annotations

import json
import os

import torch

from calipers.core.errors import ModelMismatchError
from calipers.photoz.ensemble import DeepEnsemble


def write_model_dir(directory: str, meta: dict, states: dict, meta_name: str = "metadata.json") -> None:
    """Write ``meta`` as JSON and ``states`` (tensors in plain containers) as ``weights.pt``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, meta_name), "w") as fh:
        json.dump(meta, fh, indent=1)
    torch.save(states, os.path.join(directory, "weights.pt"))


def read_model_dir(directory: str, what: str = "calipers model", meta_name: str = "metadata.json"
                   ) -> tuple[dict, dict]:
    """(metadata, state dicts) of a directory written by :func:`write_model_dir`, without executing code."""
    meta_path = os.path.join(directory, meta_name)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{directory}: not a {what} directory (no {meta_name})")
    with open(meta_path) as fh:
        meta = json.load(fh)
    states = torch.load(os.path.join(directory, "weights.pt"), map_location="cpu", weights_only=True)
    return meta, states


def save_model(directory: str, ensemble: DeepEnsemble) -> None:
    """Write a photo-z ensemble: ``metadata.json`` and ``weights.pt``."""
    write_model_dir(directory, *ensemble.state())


def load_model(directory: str) -> DeepEnsemble:
    """Load a photo-z ensemble written by :func:`save_model`, without executing code."""
    meta, states = read_model_dir(directory, "calipers model")
    try:
        return DeepEnsemble.from_state(meta, states)
    except ModelMismatchError as err:
        raise ModelMismatchError(f"{directory}: {err}") from err


def save_estimator(directory: str, net, config, theta_rows, x_rows, extra: dict | None = None) -> None:
    """Write an SBI estimator (see :func:`calipers.sbi.estimator_state`)."""
    from calipers.sbi import estimator_state

    write_model_dir(directory, *estimator_state(net, config, theta_rows, x_rows, extra))


def load_estimator(directory: str):
    """(net, config, metadata) of an SBI model directory, without executing code."""
    from calipers.sbi import estimator_from_state

    meta, state = read_model_dir(directory, "calipers SBI model")
    try:
        return estimator_from_state(meta, state)
    except ValueError as err:
        raise ValueError(f"{directory}: {err}") from err
