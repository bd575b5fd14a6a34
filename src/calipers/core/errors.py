"""Exceptions with messages a scientist can act on."""


class CalipersError(Exception):
    """Base class of every error calipers raises on purpose."""


class ConfigError(CalipersError, ValueError):
    """A stage configuration is invalid (unknown key, wrong type, bad value)."""


class CatalogError(CalipersError, ValueError):
    """An input catalog is missing columns or holds values that cannot be used."""


class ModelMismatchError(CalipersError, ValueError):
    """A saved model does not fit the data it is applied to (e.g. different bands)."""


class GateFailed(CalipersError):
    """A validation gate rejected its input; the message lists each failed check."""

    def __init__(self, failures: list[str], report: str | None = None):
        self.failures = list(failures)
        self.report = report
        lines = "\n".join(f"  - {f}" for f in self.failures)
        where = f"\nReport: {report}" if report else ""
        super().__init__(f"Validation gate failed {len(self.failures)} check(s):\n{lines}{where}")
