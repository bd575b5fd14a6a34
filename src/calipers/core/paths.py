"""Resolve input paths, including files shipped inside installed packages.

A path of the form ``pkg://<package>/<path inside it>`` names a file inside an installed
(possibly namespace) package, e.g. ``pkg://rail/examples_data/testdata/training_100gal.hdf5``
for RAIL's DC2 test catalogs. This keeps pipelines portable: no site-packages path is
hard-coded and nothing is downloaded.
"""
from __future__ import annotations

import importlib
import os

PKG_PREFIX = "pkg://"


def resolve_path(path: str | os.PathLike) -> str:
    """Return a filesystem path for ``path``, resolving ``pkg://`` names.

    Raises
    ------
    FileNotFoundError
        If the package is not installed or the file is not inside it.
    """
    path = os.fspath(path)
    if not path.startswith(PKG_PREFIX):
        return path
    package, _, inner = path[len(PKG_PREFIX):].partition("/")
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise FileNotFoundError(
            f"{path}: package '{package}' is not installed (pip install the package that provides it)"
        ) from err
    roots = list(getattr(module, "__path__", [])) or [os.path.dirname(module.__file__)]
    for root in roots:
        candidate = os.path.join(root, inner)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"{path}: '{inner}' not found inside package '{package}' (searched {roots})")
