"""The stage contract: base stage, file types, catalog iteration, provenance, devices."""
from calipers.core.errors import (
    CalipersError,
    CatalogError,
    ConfigError,
    FileFormatError,
    GateFailed,
    ModelMismatchError,
    OutputLocked,
)

__all__ = ["CalipersError", "CatalogError", "ConfigError", "FileFormatError", "GateFailed", "ModelMismatchError",
           "OutputLocked"]
