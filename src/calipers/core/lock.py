"""Locks that stop two runs from writing the same outputs at once.

Two runs sharing an output directory corrupt each other silently: one's failure cleanup deletes
the other's in-progress file, and a model directory can mix files of both. So:

- ``calipers run`` holds ``<output_dir>/.calipers/run.lock`` for the whole pipeline (and tells
  its stages so through the ``CALIPERS_RUN_LOCK`` environment variable);
- every calipers stage (rank 0 only under MPI: the ranks of one stage never lock each other out)
  holds ``<dir>/.calipers/locks/<output name>.lock`` for each of its outputs from the start of
  its run until its outputs have their final names, and refuses to start while a *live* run
  lock of another run is held on that directory.

A lock file holds the holder's pid, host, start time and command (JSON). A lock whose holder is
a dead process on this host is stale (a run killed with ``kill -9``): it is taken over with a
warning. A lock held from another host cannot be checked and is honoured; its message says to
remove the file when no run is active there.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import time

from calipers.core.errors import OutputLocked

log = logging.getLogger(__name__)

LOCK_DIR = ".calipers"
RUN_LOCK_ENV = "CALIPERS_RUN_LOCK"


def run_lock_path(output_dir: str) -> str:
    """The lock file ``calipers run`` holds for an output directory."""
    return os.path.join(os.path.abspath(output_dir), LOCK_DIR, "run.lock")


def output_lock_path(output: str) -> str:
    """The lock file a stage holds while it writes ``output`` (its final name)."""
    output = os.path.abspath(output)
    return os.path.join(os.path.dirname(output), LOCK_DIR, "locks", os.path.basename(output) + ".lock")


def read_holder(path: str) -> dict | None:
    """The holder record of a lock file (None when it cannot be read or parsed)."""
    try:
        with open(path) as fh:
            holder = json.load(fh)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def holder_alive(holder: dict) -> bool:
    """Whether the process holding a lock still runs (assumed so when it is on another host)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('started', '?')}"
            f" ({holder.get('command', '')})")


class Lock:
    """An exclusive lock file (see the module docstring). Use as a context manager or with
    :meth:`acquire` / :meth:`release`.

    Parameters
    ----------
    path : str
        The lock file.
    what : str
        What it protects, for messages (e.g. "output directory data/photoz").
    """

    def __init__(self, path: str, what: str):
        self.path = path
        self.what = what
        self.held = False
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "command": " ".join(sys.argv)[:300]}

    def acquire(self) -> "Lock":
        """Take the lock.

        Raises
        ------
        OutputLocked
            When a live process holds it, naming the lock file and the holder's pid and host.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for attempt in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is None:  # being written by its creator right now, or garbage
                    if attempt < 20:
                        time.sleep(0.05)
                        continue
                    raise OutputLocked(f"{self.what} is locked by {self.path}, whose content cannot be read; "
                                       "if no calipers run is active, delete that file") from None
                if holder.get("pid") == self.record["pid"] and holder.get("host") == self.record["host"]:
                    raise OutputLocked(f"{self.what} is already locked by this process ({self.path})")
                if holder_alive(holder):
                    raise OutputLocked(
                        f"{self.what} is in use by another run: lock file {self.path} is held by {_describe(holder)}. "
                        "Wait for that run to finish or use another output directory (if that process is not a "
                        "calipers run, delete the lock file)") from None
                log.warning("taking over the stale lock %s of a run that is no longer alive (%s)", self.path,
                            _describe(holder))
                if read_holder(self.path) == holder:  # nobody took it over in between
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(self.record, fh)
            self.held = True
            return self
        raise OutputLocked(f"{self.what}: could not take the lock {self.path}")

    def release(self) -> None:
        """Give the lock up (only if this object holds it and the file is still ours)."""
        if not self.held:
            return
        self.held = False
        holder = read_holder(self.path)
        if holder is not None and holder.get("pid") == self.record["pid"] and holder.get("host") == self.record["host"]:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        _remove_empty_parents(os.path.dirname(self.path))

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _remove_empty_parents(directory: str) -> None:
    """Remove ``.calipers/locks`` and ``.calipers`` when nothing else is left in them."""
    for d in (directory, os.path.dirname(directory)):
        if os.path.basename(d) not in (LOCK_DIR, "locks"):
            continue
        try:
            os.rmdir(d)
        except OSError:
            return


def check_run_lock(directory: str) -> None:
    """Refuse to write into ``directory`` while another live ``calipers run`` holds it (a lock
    held by the run this process belongs to, named by ``CALIPERS_RUN_LOCK``, is fine)."""
    path = run_lock_path(directory)
    if not os.path.exists(path):
        return
    if os.environ.get(RUN_LOCK_ENV) == path:
        return
    holder = read_holder(path)
    if holder is not None and not holder_alive(holder):
        return  # stale: the next calipers run takes it over
    who = _describe(holder) if holder else "an unreadable holder record"
    raise OutputLocked(f"output directory {os.path.abspath(directory)} is in use by a calipers run: lock file "
                       f"{path} is held by {who}")


def output_locks(outputs: list[str]) -> list[Lock]:
    """Take the lock of each output in turn (all or none: on a refusal, release those taken)."""
    taken: list[Lock] = []
    try:
        for d in sorted({os.path.dirname(os.path.abspath(o)) for o in outputs}):
            check_run_lock(d)
        for out in outputs:
            taken.append(Lock(output_lock_path(out), f"output {os.path.abspath(out)}").acquire())
    except BaseException:
        for lock in taken:
            lock.release()
        raise
    return taken
