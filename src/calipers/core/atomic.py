"""Atomic outputs: write to a temporary name next to the target, then rename."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


def remove_path(path: str) -> None:
    """Remove a file or directory if it exists (no error otherwise)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(target: str, directory: bool = False) -> Iterator[str]:
    """Yield a temporary path; on success rename it onto ``target``, on error delete it.

    ``os.replace`` is atomic on POSIX for files in the same directory, so readers see either
    the old file, the complete new one, or nothing - never a half-written file.
    """
    parent = os.path.dirname(os.path.abspath(target)) or "."
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(target)
    if directory:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
        os.close(fd)
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    if directory and os.path.isdir(target):
        shutil.rmtree(target)
    if not directory:  # mkstemp creates 0600; give the file the usual umask-based mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)
