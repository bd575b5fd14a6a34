"""Provenance carried by every calipers output: version, stage, config, input hashes."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Any

import calipers


def file_hash(path: str, block: int = 1 << 22) -> str:
    """SHA-256 of a file, or of every file in a directory (sorted by relative name)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(os.path.relpath(full, path).encode())
                h.update(file_hash(full, block).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def make_provenance(stage: str, config: dict[str, Any], inputs: dict[str, str]) -> dict[str, str]:
    """Build the provenance record (all values are strings, so they fit HDF5 attrs and JSON)."""
    hashes = {tag: file_hash(path) for tag, path in sorted(inputs.items()) if path and os.path.exists(path)}
    config_json = json.dumps(config, sort_keys=True, default=str)
    key = hashlib.sha256(
        json.dumps([calipers.__version__, stage, config_json, hashes], sort_keys=True).encode()
    ).hexdigest()
    return {
        "calipers_version": calipers.__version__,
        "stage": stage,
        "config": config_json,
        "input_hashes": json.dumps(hashes, sort_keys=True),
        "inputs": json.dumps(inputs, sort_keys=True),
        "run_key": key,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


def write_provenance_hdf5(h5file, provenance: dict[str, str]) -> None:
    """Store provenance as attributes of a ``provenance`` group of an open h5py file."""
    group = h5file.require_group("provenance")
    for key, value in provenance.items():
        group.attrs[key] = value


PROVENANCE_JSON = "provenance.json"


def write_provenance_json(directory: str, provenance: dict[str, str]) -> str:
    """Write the provenance of a directory output (model, calibrator) as ``provenance.json``."""
    path = os.path.join(directory, PROVENANCE_JSON)
    with open(path, "w") as fh:
        json.dump(provenance, fh, indent=2)
    return path


def read_json_object(path: str, error: type[Exception] = ValueError) -> dict:
    """The JSON object in ``path``; invalid JSON or another JSON value raises ``error`` naming
    the file (provenance, model metadata, calibrator specs)."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err}); the file is corrupt or was edited") from err
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_provenance(path: str) -> dict[str, str]:
    """Read provenance back from an HDF5 output or a directory output's ``provenance.json``
    ({} when the output carries none)."""
    if os.path.isdir(path):
        file = os.path.join(path, PROVENANCE_JSON)
        if not os.path.exists(file):
            return {}
        from calipers.core.errors import FileFormatError

        return read_json_object(file, FileFormatError)
    from calipers.core.catalog import open_hdf5

    with open_hdf5(path) as f:
        if "provenance" not in f:
            return {}
        return {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f["provenance"].attrs.items()}
