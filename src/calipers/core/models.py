"""Model directories: ``metadata.json`` + ``weights.pt`` (torch state dicts, no pickled code).

``weights.pt`` is loaded with ``torch.load(..., weights_only=True)``, which refuses anything but
tensors and plain containers, so opening a model never executes code.
"""
from __future__ import annotations

import json
import os

import torch

from calipers.core.errors import ModelMismatchError
from calipers.photoz.ensemble import DeepEnsemble


def save_model(directory: str, ensemble: DeepEnsemble) -> None:
    """Write ``metadata.json`` and ``weights.pt`` into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    meta, states = ensemble.state()
    with open(os.path.join(directory, "metadata.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
    torch.save(states, os.path.join(directory, "weights.pt"))


def load_model(directory: str) -> DeepEnsemble:
    """Load a model directory written by :func:`save_model`, without executing code."""
    meta_path = os.path.join(directory, "metadata.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{directory}: not a calipers model directory (no metadata.json)")
    with open(meta_path) as fh:
        meta = json.load(fh)
    states = torch.load(os.path.join(directory, "weights.pt"), map_location="cpu", weights_only=True)
    try:
        return DeepEnsemble.from_state(meta, states)
    except ModelMismatchError as err:
        raise ModelMismatchError(f"{directory}: {err}") from err
