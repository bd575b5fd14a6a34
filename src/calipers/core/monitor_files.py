"""Files of the drift monitors (issue 22): the state carried from batch to batch (JSON), the
monitoring table (HDF5, one row per batch) and the alert record (JSON). All written atomically.

A state file is ``{"format": "calipers-monitor-state", "version": 1, "monitor": ...}``; a **fresh**
state (``monitor`` null, :func:`write_fresh_state`) starts a stream. A monitor refuses a state
written by another kind of monitor or with other detector settings, naming what differs.
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from calipers.core.atomic import remove_path, temporary_path
from calipers.core.calibrators import write_json_atomic
from calipers.core.errors import FileFormatError

FORMAT = "calipers-monitor-state"
VERSION = 1


def fresh_state() -> dict:
    return {"format": FORMAT, "version": VERSION, "monitor": None}


def write_fresh_state(path: str) -> str:
    """Write the state that starts a stream (no batches seen)."""
    write_json_atomic(path, fresh_state())
    return path


def read_state(path: str, monitor: str, settings: dict) -> dict | None:
    """The state in ``path``: None when fresh; else its dict, after checking that ``monitor`` and
    ``settings`` (the detector settings that must not change along a stream) match."""
    try:
        with open(path) as fh:
            state = json.load(fh)
    except FileNotFoundError:
        raise FileFormatError(f"{path}: no monitor state file (start a stream with a fresh one: "
                              f"calipers.core.monitor_files.write_fresh_state)") from None
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{path}: not a JSON monitor state ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FileFormatError(f"{path}: not a calipers monitor state (its 'format' is not {FORMAT!r})")
    if state.get("version") != VERSION:
        raise FileFormatError(f"{path}: monitor state version {state.get('version')!r}, this calipers reads {VERSION}")
    if state.get("monitor") is None:
        return None
    if state["monitor"] != monitor:
        raise FileFormatError(f"{path}: a state of the {state['monitor']!r} monitor, not of {monitor!r}")
    old = state.get("settings", {})
    differ = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if differ:
        detail = ", ".join(f"{k}: {old.get(k)!r} in the state, {settings.get(k)!r} now" for k in differ)
        raise FileFormatError(f"{path}: the stream was started with other detector settings ({detail}); "
                              "start a new stream with a fresh state to change them")
    return state


def write_state(path: str, state: dict) -> None:
    write_json_atomic(path, state)


def write_monitor_table(path: str, rows: list[dict], provenance: dict | None = None) -> None:
    """One row per batch in group ``monitor``: every numeric or boolean entry of the rows as a
    column (missing entries NaN)."""
    columns = []
    for r in rows:
        for k, v in r.items():
            if k not in columns and isinstance(v, (bool, int, float, np.integer, np.floating)):
                columns.append(k)
    tmp = temporary_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("monitor")
            for k in columns:
                g.create_dataset(k, data=np.array([float(r.get(k, np.nan)) for r in rows], dtype=np.float64))
            if provenance:
                f.attrs["provenance"] = json.dumps(provenance, default=str)
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def write_alert(path: str, record: dict) -> None:
    write_json_atomic(path, record)
