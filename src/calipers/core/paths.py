"""Resolve input paths, including files shipped inside installed packages.

A path of the form ``pkg://<package>/<path inside it>`` names a file inside an installed
(possibly namespace) package, e.g. ``pkg://rail/examples_data/testdata/training_100gal.hdf5``
for RAIL's DC2 test catalogs. This keeps pipelines portable: no site-packages path is
hard-coded and nothing is downloaded.

The package is located with :func:`importlib.util.find_spec`, which does not run the package's
code (only a parent package of a dotted name is imported, as Python requires), and the file
must lie inside the package's directory: an absolute inner path, ``..`` components or a symbolic
link leading out of the package are errors.
"""
from __future__ import annotations

import importlib.util
import os

PKG_PREFIX = "pkg://"


def _package_roots(path: str, package: str) -> list[str]:
    if not package or not all(part.isidentifier() for part in package.split(".")):
        raise FileNotFoundError(f"{path}: '{package}' is not a package name (pkg://<package>/<path inside it>)")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as err:
        spec = None
        reason = f" ({err})"
    else:
        reason = ""
    if spec is None:
        raise FileNotFoundError(
            f"{path}: package '{package}' is not installed (pip install the package that provides it){reason}"
        )
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:  # a plain module: its directory
        roots = [os.path.dirname(spec.origin)]
    if not roots:
        raise FileNotFoundError(f"{path}: package '{package}' has no directory to hold files")
    return roots


def resolve_path(path: str | os.PathLike) -> str:
    """Return a filesystem path for ``path``, resolving ``pkg://`` names.

    Raises
    ------
    FileNotFoundError
        If the package is not installed, the name is not a package name, the inner path is
        absolute or leads outside the package (``..``, symbolic links), or the file is not inside
        it; the message names the ``pkg://`` path.
    """
    path = os.fspath(path)
    if not path.startswith(PKG_PREFIX):
        return path
    package, _, inner = path[len(PKG_PREFIX):].partition("/")
    if not inner or os.path.isabs(inner) or inner.startswith(("/", "\\")):
        raise FileNotFoundError(f"{path}: the path inside package '{package}' must be relative, e.g. "
                                f"pkg://{package}/data/file.hdf5")
    if ".." in inner.replace("\\", "/").split("/"):
        raise FileNotFoundError(f"{path}: '..' is not allowed in a pkg:// path (it must stay inside package "
                                f"'{package}')")
    roots = _package_roots(path, package)
    for root in roots:
        real_root = os.path.realpath(root)
        candidate = os.path.realpath(os.path.join(real_root, inner))
        if os.path.commonpath([real_root, candidate]) != real_root:
            raise FileNotFoundError(f"{path}: resolves to {candidate}, outside package '{package}' ({real_root})")
        if os.path.exists(candidate):
            return os.path.join(root, inner)
    raise FileNotFoundError(f"{path}: '{inner}' not found inside package '{package}' (searched {roots})")
