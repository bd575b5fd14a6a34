"""The stage contract: base stage, file types, catalog iteration, provenance, devices."""
from calipers.core.errors import (
    CalipersError,
    CatalogError,
    ConfigError,
    GateFailed,
    ModelMismatchError,
)

__all__ = ["CalipersError", "CatalogError", "ConfigError", "GateFailed", "ModelMismatchError"]
