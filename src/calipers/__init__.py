"""calipers: pipeline stages for trustworthy machine learning in survey science.

Algorithms live in plain sub-packages that take arrays (``calipers.photoz``, ...);
file handling, configuration and parallelism live in ``calipers.core`` and the ceci
stages in ``calipers.stages``.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calipers")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
