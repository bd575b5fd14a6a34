"""Model directories: a JSON description + ``weights.pt`` (torch state dicts, no pickled code).

``weights.pt`` is loaded with ``torch.load(..., weights_only=True)``, which refuses anything but
tensors and plain containers, so opening a model never executes code. The algorithm packages
turn their models into (metadata, state dicts) and back; this module alone does the file I/O.

Checksums
---------
:func:`write_model_dir` stores, in the metadata's ``checksums`` field, the SHA-256 of the
``weights.pt`` bytes and of the canonical metadata (the metadata without ``checksums``, as JSON
with sorted keys and no whitespace). :func:`read_model_dir` verifies both before it unpickles
anything, so an edited metadata value (member count, activation, a fill value) or a flipped
weight byte is an error naming the file, not a model that quietly gives NaN or different p(z).
Directories written before checksums existed load with a logged warning. Either way the
algorithm then checks the values themselves (a null fill value, a member count that does not
match the state dicts, ...).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import zipfile

import torch

from calipers.core.errors import ModelFileError, ModelMismatchError
from calipers.core.provenance import read_json_object
from calipers.photoz.ensemble import BandMismatchError, DeepEnsemble, ModelStateError

log = logging.getLogger(__name__)

WEIGHTS_NAME = "weights.pt"
CHECKSUMS_KEY = "checksums"


def canonical_json(meta: dict) -> bytes:
    """The bytes a metadata checksum is taken over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_model_dir(directory: str, meta: dict, states: dict, meta_name: str = "metadata.json") -> None:
    """Write ``states`` (tensors in plain containers) as ``weights.pt`` and ``meta`` as JSON, with
    the SHA-256 checksums of both (see the module docstring) in ``meta[\"checksums\"]``."""
    if CHECKSUMS_KEY in meta:
        raise ValueError(f"model metadata may not contain the reserved key {CHECKSUMS_KEY!r}")
    os.makedirs(directory, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(states, buffer)
    weights = buffer.getvalue()
    plain = json.loads(json.dumps(meta))  # what a reader gets back: tuples as lists, keys as strings
    checksums = {WEIGHTS_NAME: sha256(weights), meta_name: sha256(canonical_json(plain))}
    with open(os.path.join(directory, WEIGHTS_NAME), "wb") as fh:
        fh.write(weights)
    with open(os.path.join(directory, meta_name), "w") as fh:
        json.dump(plain | {CHECKSUMS_KEY: checksums}, fh, indent=1)


def read_model_dir(directory: str, what: str = "calipers model", meta_name: str = "metadata.json"
                   ) -> tuple[dict, dict]:
    """(metadata without its checksums, state dicts) of a directory written by
    :func:`write_model_dir`, without executing code.

    Raises
    ------
    FileNotFoundError
        No metadata file or no ``weights.pt``.
    ModelFileError
        Invalid JSON, a checksum that does not match (a file modified after it was written, or
        corrupt), or a ``weights.pt`` torch cannot read (truncated, not a torch file, or holding
        anything but tensors and plain containers); the message names the file.
    """
    meta_path = os.path.join(directory, meta_name)
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{directory}: not a {what} directory (no {meta_name})")
    if not os.path.exists(weights_path):
        raise FileNotFoundError(f"{weights_path}: missing; a {what} directory needs {meta_name} and {WEIGHTS_NAME}")
    meta = read_json_object(meta_path, ModelFileError)
    with open(weights_path, "rb") as fh:
        weights = fh.read()
    checksums = meta.pop(CHECKSUMS_KEY, None)
    if checksums is None:
        log.warning("%s: written without checksums (before calipers stored them); its files cannot be "
                    "verified - rewrite it (retrain or re-save) to protect it", directory)
    else:
        if not isinstance(checksums, dict):
            raise ModelFileError(f"{meta_path}: '{CHECKSUMS_KEY}' must be a JSON object, got {checksums!r}")
        if checksums.get(meta_name) != sha256(canonical_json(meta)):
            raise ModelFileError(f"{meta_path}: the metadata was modified after it was written, or is corrupt "
                                 "(its SHA-256 does not match the one stored when it was written); "
                                 "restore the original file or retrain")
        if checksums.get(WEIGHTS_NAME) != sha256(weights):
            raise ModelFileError(f"{weights_path}: the weights were modified after they were written, or the file "
                                 f"is corrupt or truncated ({len(weights)} bytes; its SHA-256 does not match the one "
                                 f"in {meta_name}); restore the original file or retrain")
    try:
        states = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ModelFileError(f"{weights_path}: cannot be read as torch state dicts ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); the file is truncated, corrupt, "
                             "or holds something other than tensors (refused without executing it)") from err
    return meta, states


SUPPORT_KEY = "support"


def save_model(directory: str, ensemble: DeepEnsemble, support=None, card: dict | None = None) -> None:
    """Write a photo-z ensemble: ``metadata.json`` and ``weights.pt`` (with checksums).

    ``support``: the training sample's :class:`~calipers.validate.support.KNNSupport`, stored
    with the model (its labelled feature rows as a tensor in ``weights.pt``, the rest in the
    metadata) so that every p(z) made with the model can be flagged where the training sample
    gives it no support. ``card``: the model card (JSON-able), stored in the metadata."""
    meta, states = ensemble.state()
    if support is not None:
        state = support.to_dict()
        features = state.pop("labelled_features")
        meta[SUPPORT_KEY] = state
        states[SUPPORT_KEY] = {"labelled_features": torch.as_tensor(features, dtype=torch.float64)}
    if card is not None:
        meta["model_card"] = card
    write_model_dir(directory, meta, states)


def load_model_and_support(directory: str):
    """(ensemble, support or None, model card or None) of a directory written by
    :func:`save_model`; see :func:`load_model`."""
    from calipers.validate.support import KNNSupport

    meta, states = read_model_dir(directory, "calipers model")
    support_state, support_rows = meta.pop(SUPPORT_KEY, None), states.pop(SUPPORT_KEY, None)
    card = meta.pop("model_card", None)
    try:
        ensemble = DeepEnsemble.from_state(meta, states)
    except ModelStateError as err:
        raise ModelMismatchError(f"{directory}: {err}") from err
    support = None
    if (support_state is None) != (support_rows is None):
        raise ModelMismatchError(f"{directory}: the support region is stored only in part (metadata and weights "
                                 "disagree); retrain")
    if support_state is not None:
        try:
            rows = support_rows["labelled_features"].numpy()
            support = KNNSupport.from_dict(support_state | {"labelled_features": rows})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ModelMismatchError(f"{directory}: unusable support region: {err}") from err
        if rows.shape[1] != 2 * len(ensemble.bands) - 1:
            raise ModelMismatchError(f"{directory}: the support region has {rows.shape[1]} features, the model's "
                                     f"{len(ensemble.bands)} bands give {2 * len(ensemble.bands) - 1}")
    return ensemble, support, card


def load_model(directory: str) -> DeepEnsemble:
    """Load a photo-z ensemble written by :func:`save_model`, without executing code, after
    verifying its checksums and every metadata value (:class:`ModelMismatchError` naming the
    directory and what is wrong)."""
    return load_model_and_support(directory)[0]


def check_model_bands(ensemble: DeepEnsemble, bands: list[str], source: str = "catalog",
                      directory: str | None = None) -> None:
    """:meth:`DeepEnsemble.check_bands` raising :class:`ModelMismatchError` (the message names
    the model directory, when given, and the model's and the given band lists)."""
    try:
        ensemble.check_bands(bands, source=source)
    except BandMismatchError as err:
        raise ModelMismatchError(f"{directory}: {err}" if directory else str(err)) from err


def save_estimator(directory: str, net, config, theta_rows, x_rows, extra: dict | None = None) -> None:
    """Write an SBI estimator (see :func:`calipers.sbi.estimator_state`), with checksums."""
    from calipers.sbi import estimator_state

    write_model_dir(directory, *estimator_state(net, config, theta_rows, x_rows, extra))


def load_estimator(directory: str):
    """(net, config, metadata) of an SBI model directory, without executing code, after
    verifying its checksums (as :func:`load_model`)."""
    from calipers.sbi import estimator_from_state

    meta, state = read_model_dir(directory, "calipers SBI model")
    try:
        return estimator_from_state(meta, state)
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise ModelMismatchError(f"{directory}: {type(err).__name__}: {err}") from err
