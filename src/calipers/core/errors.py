"""Exceptions with messages a scientist can act on."""


class CalipersError(Exception):
    """Base class of every error calipers raises on purpose."""


class ConfigError(CalipersError, ValueError):
    """A stage configuration is invalid (unknown key, wrong type, bad value)."""


class CatalogError(CalipersError, ValueError):
    """An input catalog is missing columns or holds values that cannot be used."""


class ModelMismatchError(CalipersError, ValueError):
    """A saved model does not fit the data it is applied to (e.g. different bands)."""


class FileFormatError(CalipersError, ValueError):
    """A file cannot be read as what it should be (truncated, corrupt, another kind of file)."""


class OutputLocked(CalipersError):
    """Another live run holds the lock on an output directory or output."""


class ModelFileError(ModelMismatchError, FileFormatError):
    """A model directory's file is unreadable, truncated, or was modified after it was written
    (its checksum does not match); the message names the file."""


class GateFailed(CalipersError):
    """A validation gate rejected its input; the message lists each failed check."""

    def __init__(self, failures: list[str], report: str | None = None):
        self.failures = list(failures)
        self.report = report
        lines = "\n".join(f"  - {f}" for f in self.failures)
        where = f"\nReport: {report}" if report else ""
        super().__init__(f"Validation gate failed {len(self.failures)} check(s):\n{lines}{where}")


class DriftAlert(CalipersError):
    """A drift monitor with ``on_alert: error`` raised alerts; its outputs (the new state among
    them) are written before this is raised, so the stream can go on from them."""

    def __init__(self, alerts: list[dict], alert_file: str | None = None):
        self.alerts = list(alerts)
        lines = "\n".join(f"  - batch {a['batch']}: {a['statistic']} = {a['value']:.5g} ({a['rule']}, threshold "
                          f"{a['threshold']:.5g})" for a in self.alerts)
        where = f"\nAlert record: {alert_file}" if alert_file else ""
        super().__init__(f"Drift monitor raised {len(self.alerts)} alert(s):\n{lines}{where}")
