"""Gate logic: compare metrics with thresholds, list every failed check with value and threshold."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Check:
    """One gate check: ``value`` must satisfy ``op`` against ``threshold``."""

    name: str
    value: float
    op: str  # "<=", ">=", "abs<=" (|value - target| <= threshold, target in `target`)
    threshold: float
    target: float = 0.0
    why: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None or not math.isfinite(self.value):
            return False
        if self.op == "<=":
            return self.value <= self.threshold
        if self.op == ">=":
            return self.value >= self.threshold
        if self.op == "abs<=":
            return abs(self.value - self.target) <= self.threshold
        raise ValueError(f"unknown comparison {self.op!r}")

    def describe(self) -> str:
        if self.op == "abs<=":
            rule = f"|{self.name} - {self.target:g}| <= {self.threshold:g}"
        else:
            rule = f"{self.name} {self.op} {self.threshold:g}"
        verdict = "ok" if self.passed else "FAILED"
        why = f" ({self.why})" if self.why else ""
        return f"{self.name} = {self.value:.5g}: needs {rule} -> {verdict}{why}"

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}


def pz_gate_checks(metrics: dict, max_pit_ks: float, max_coverage_error: float, max_cde_loss: float,
                   max_invalid_fraction: float, max_outlier_015: float) -> list[Check]:
    """The default p(z) gate. PIT alone is not enough (the training n(z) given to every galaxy
    has a near-perfect PIT): the CDE loss and the outlier rate check that p(z) are informative."""
    n = max(metrics["n"], 1)
    return [
        Check("invalid_fraction", metrics["n_invalid"] / n, "<=", max_invalid_fraction,
              why="rows with NaN/inf p(z) or truth"),
        Check("pit_ks", metrics.get("pit_ks", float("nan")), "<=", max_pit_ks, why="PIT uniformity"),
        Check("cov68", metrics.get("cov68", float("nan")), "abs<=", max_coverage_error, target=0.68,
              why="68% interval coverage"),
        Check("cov95", metrics.get("cov95", float("nan")), "abs<=", max_coverage_error, target=0.95,
              why="95% interval coverage"),
        Check("cde_loss", metrics.get("cde_loss", float("nan")), "<=", max_cde_loss,
              why="informativeness: a p(z) equal to the training n(z) scores about -0.7"),
        Check("outlier_015", metrics.get("outlier_015", float("nan")), "<=", max_outlier_015,
              why="catastrophic outliers of the mode"),
    ]
