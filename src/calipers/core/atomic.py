"""Atomic outputs: temporary names for files being written, and removing what a failed stage left.

Stages write their outputs under ceci's ``inprogress_`` names, which are renamed only when the
stage succeeds; what a failed stage leaves is removed with :func:`remove_path`. Writers of
growable files (image and spectrum sets) write under :func:`temporary_path` and rename at the end."""
from __future__ import annotations

import os
import shutil
import tempfile


def temporary_path(path: str) -> str:
    """A new, empty hidden file ``.<name>.<random>.tmp`` beside ``path`` (its directory is made),
    to be renamed onto ``path`` once complete (a rename within one directory is atomic)."""
    directory, base = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return tmp


def remove_path(path: str) -> None:
    """Remove a file or directory if it exists (no error otherwise)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
