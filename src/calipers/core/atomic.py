"""Removing partial outputs (files or directories) of a failed stage.

Stages write their outputs under ceci's ``inprogress_`` names, which are renamed only when the
stage succeeds; what a failed stage leaves is removed with :func:`remove_path`."""
from __future__ import annotations

import os
import shutil


def remove_path(path: str) -> None:
    """Remove a file or directory if it exists (no error otherwise)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
