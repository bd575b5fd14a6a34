"""The common end of every validation gate stage: write the report, then pass or stop."""
from __future__ import annotations

import logging
import os
import shutil

from calipers.core.errors import ConfigError, GateFailed
from calipers.core.report import write_report
from calipers.core.stage import CalipersStage

log = logging.getLogger(__name__)


class GateStage(CalipersStage):
    """Base of the gate stages (not itself runnable): ``conclude`` writes the report and, when a
    check failed and ``on_fail`` is ``error``, moves it aside to ``<report>.FAILED`` and raises
    :class:`~calipers.core.errors.GateFailed`. Subclasses add
    :data:`~calipers.core.options.GATE_OPTIONS` to their ``config_options``."""

    report_tag = "report"

    def validate(self):
        if self.config["on_fail"] not in ("error", "warn"):
            raise ConfigError(f"on_fail must be 'error' or 'warn', got {self.config['on_fail']!r}")

    def conclude(self, title: str, summary: dict | None, checks: list | None, figures: dict | None,
                 extra_html: str = "", extra: dict | None = None) -> None:
        """Write the report (rank 0, which alone holds ``summary``/``checks``/``figures`` under
        MPI), then on failure move it aside and raise on every rank, so no rank waits forever.
        ``extra_html``/``extra``: further page sections and ``report.json`` entries
        (:func:`~calipers.core.report.write_report`)."""
        failed, report = [], None
        prov = self.provenance()  # collective under MPI: every rank takes part
        if self.rank == 0:
            path = self.output_path(self.report_tag)
            write_report(path, title, summary, checks, figures, provenance=prov, extra_html=extra_html,
                         extra=extra)
            failed = [c.describe() for c in checks if not c.passed]
            for c in checks:
                log.info("%s", c.describe())
            if failed and self.config["on_fail"] == "error":
                # keep the report for the user, under a name that is not the declared output (so a
                # resumed pipeline never mistakes a failed gate for a finished one)
                final = self.get_output(self.report_tag, final_name=True) + ".FAILED"
                if os.path.exists(final):
                    shutil.rmtree(final)
                shutil.move(path, final)
                report = os.path.join(os.path.abspath(final), "index.html")
        if self.size > 1:
            failed, report = self.comm.bcast((failed, report), root=0)
        if not failed:
            return
        if self.config["on_fail"] == "warn":
            if self.rank == 0:
                log.warning("gate %s FAILED %d check(s) but on_fail=warn: going on", self.instance_name, len(failed))
            return
        raise GateFailed(failed, report=report)
