"""Validation gate stages: judge an input, write a report, then pass or stop the pipeline."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np

from calipers.core import catalog
from calipers.core.errors import ConfigError, GateFailed
from calipers.core.file_types import HDF5Catalog, QPEnsembleFile, ReportDir
from calipers.core.report import write_report
from calipers.core.stage import CalipersStage, Param
from calipers.stages.photoz import CATALOG_OPTIONS, DEFAULT_BANDS, band_columns, stack

log = logging.getLogger(__name__)

TRUTH_OPTIONS = {
    "hdf5_groupname": Param(str, "photometry", msg="Group of the truth catalog holding the columns"),
    "redshift_column": Param(str, "redshift", msg="True-redshift column of the truth catalog"),
}


def read_truth(stage: CalipersStage, tag: str, n_expected: int, against: str) -> np.ndarray:
    """True redshifts from a stage's truth input, checked to have one row per distribution."""
    path = stage.input_path(tag)
    col = stage.config["redshift_column"]
    z = catalog.read_columns(path, stage.config["hdf5_groupname"], [col])[col]
    if len(z) != n_expected:
        raise ValueError(f"{against} holds {n_expected} p(z) but {path} has {len(z)} rows")
    return z


GATE_OPTIONS = {
    "on_fail": Param(str, "error", msg="error (stop the pipeline) or warn (log and go on; for exploration only)"),
}


class GateStage(CalipersStage):
    """Common end of every gate: write the report; on failure move it aside and raise."""

    report_tag = "report"

    def validate(self):
        if self.config["on_fail"] not in ("error", "warn"):
            raise ConfigError(f"on_fail must be 'error' or 'warn', got {self.config['on_fail']!r}")

    def conclude(self, title: str, summary: dict | None, checks: list | None, figures: dict | None) -> None:
        """Write the report (rank 0, which alone holds ``summary``/``checks``/``figures`` under
        MPI), then on failure move it aside and raise on every rank, so no rank waits forever."""
        failed, report = [], None
        prov = self.provenance()  # collective under MPI: every rank takes part
        if self.rank == 0:
            path = self.output_path(self.report_tag)
            write_report(path, title, summary, checks, figures, provenance=prov)
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


class ValidationGate(GateStage):
    """Score a p(z) qp ensemble against true redshifts and stop the pipeline if it fails.

    Checks (thresholds in config): invalid (NaN) fraction, PIT KS, 68/95% coverage, CDE loss,
    catastrophic outliers, and the expected calibration error (ECE) of the probabilities the
    p(z) give to redshift intervals (``reliability_edges``; the events a tomographic binning
    uses). Writes ``report.json``, a PIT histogram with its null band, the coverage curve, the
    reliability diagram and ``index.html``.
    """

    name = "ValidationGate"
    parallel = True
    inputs = [("pz", QPEnsembleFile), ("truth", HDF5Catalog)]
    outputs = [("report", ReportDir)]
    config_options = CalipersStage.config_options | GATE_OPTIONS | TRUTH_OPTIONS | {
        "max_pit_ks": Param(float, 0.05, msg="Largest allowed KS distance of the PIT from uniform"),
        "max_coverage_error": Param(float, 0.03, msg="Largest allowed |coverage - nominal| at 68% and 95%"),
        "max_cde_loss": Param(float, -3.0, msg="Largest allowed CDE loss (training n(z) for all scores ~ -0.7)"),
        "max_invalid_fraction": Param(float, 0.0, msg="Largest allowed fraction of rows with NaN/inf p(z) or truth"),
        "max_outlier_015": Param(float, 0.10, msg="Largest allowed fraction with |zmode - z|/(1+z) > 0.15"),
        "max_ece": Param(float, 0.01, msg="Largest allowed ECE of the p(z) interval probabilities"),
        "reliability_edges": Param(list, [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 2.0, 3.0],
                                   msg="Redshift interval edges whose p(z) probabilities are checked for reliability"),
        "zmax": Param(float, 3.0, msg="Upper end of the metric grid (starts at 0)"),
        "nzbins": Param(int, 601, msg="Points in the metric grid"),
        "chunk_size": Param(int, 20_000, msg="Distributions per chunk; MPI ranks share the chunks"),
    }

    @classmethod
    def required_columns(cls, config):
        return {"truth": (config["hdf5_groupname"], [config["redshift_column"]])}

    def process(self):
        """Each rank scores its chunks into a :class:`PZMetricAccumulator` (histograms and
        per-chunk sums, never the catalog); rank 0 merges them, judges and writes the report."""
        from calipers.core.qpio import qp_size, read_qp_rows
        from calipers.validate import gate, plots
        from calipers.validate.metrics import grid_pdfs
        from calipers.validate.streaming import PZMetricAccumulator

        c = self.config
        pz_path, truth_path = self.input_path("pz"), self.input_path("truth")
        group, col = c["hdf5_groupname"], c["redshift_column"]
        n = qp_size(pz_path)
        n_truth = catalog.require_columns(truth_path, group, [col])
        if n_truth != n:
            raise ValueError(f"{pz_path} holds {n} p(z) but {truth_path} has {n_truth} rows")
        zgrid = np.linspace(0.0, c["zmax"], c["nzbins"])
        acc = PZMetricAccumulator(zgrid, reliability_edges=tuple(c["reliability_edges"]))
        for start, end in catalog.chunk_ranges(n, c["chunk_size"], self.rank, self.size):
            z = catalog.read_columns(truth_path, group, [col], start, end)[col]
            pdfs, valid = grid_pdfs(read_qp_rows(pz_path, start, end), zgrid)
            acc.update(start, pdfs, valid, z)
        acc = self.merge_on_root(acc, lambda a, b: a.merge(b))
        if self.rank != 0:
            self.conclude("", None, None, None)
            return
        m = acc.result()
        checks = gate.pz_gate_checks(m, c["max_pit_ks"], c["max_coverage_error"], c["max_cde_loss"],
                                     c["max_invalid_fraction"], c["max_outlier_015"])
        edges = c["reliability_edges"]
        checks.append(gate.Check("ece", m["ece"], "<=", c["max_ece"],
                                 why=f"reliability of p(z) probabilities for z in {len(edges) - 1} intervals"))
        levels = plots.COVERAGE_LEVELS
        figures = {"pit_histogram": plots.pit_histogram_counts(acc.pit_counts),
                   "coverage": plots.coverage_curve_values(levels, [acc.coverage(lv) for lv in levels]),
                   "reliability": plots.reliability_curve(m["reliability_confidence"], m["reliability_accuracy"],
                                                          m["reliability_count"])}
        self.conclude(f"p(z) validation gate: {os.path.basename(pz_path)}", m, checks, figures)


class ShiftTest(GateStage):
    """Test whether a target catalog's photometry is drawn like the training catalog's.

    Features: magnitudes and adjacent colours (non-detections replaced by the reference
    catalog's fill magnitudes, see :mod:`calipers.photoz.preprocess`). Runs a kernel MMD test
    with a permutation p-value and a classifier two-sample test; fails when either p-value is
    below ``min_p_value``.
    """

    name = "ShiftTest"
    parallel = False
    inputs = [("reference_catalog", HDF5Catalog), ("target_catalog", HDF5Catalog)]
    outputs = [("shift_report", ReportDir)]
    report_tag = "shift_report"
    config_options = CalipersStage.config_options | GATE_OPTIONS | CATALOG_OPTIONS | {
        "bands": Param(list, DEFAULT_BANDS, msg="Bands whose photometry is compared"),
        "min_p_value": Param(float, 0.01, msg="Fail when a test's p-value is below this"),
        "max_rows": Param(int, 1500, msg="Rows drawn (seeded) from each catalog for the MMD test"),
        "n_permutations": Param(int, 200, msg="Permutations for the MMD p-value"),
    }

    @classmethod
    def required_columns(cls, config):
        mags, errs = band_columns(config, list(config["bands"]))
        return {t: (config["hdf5_groupname"], mags + errs) for t in ("reference_catalog", "target_catalog")}

    def _features(self, tag, prep=None):
        from calipers.photoz.preprocess import PhotometryPreprocessor

        c = self.config
        mags, errs = band_columns(c, list(c["bands"]))
        cols = catalog.read_columns(self.input_path(tag), c["hdf5_groupname"], mags + errs)
        m, e = stack(cols, mags), stack(cols, errs)
        prep = prep or PhotometryPreprocessor(list(c["bands"])).fit(m, e)
        clean, _, _ = prep.transform(m, e)
        return np.hstack([clean, clean[:, :-1] - clean[:, 1:]]), prep

    def process(self):
        from calipers.validate.gate import Check
        from calipers.validate.shift import classifier_two_sample_test, mmd_test

        c = self.config
        ref, prep = self._features("reference_catalog")
        tgt, _ = self._features("target_catalog", prep)
        mmd = mmd_test(ref, tgt, n_permutations=c["n_permutations"], max_n=c["max_rows"], seed=c["seed"])
        c2st = classifier_two_sample_test(ref, tgt, seed=c["seed"])
        checks = [Check("mmd_p_value", mmd.p_value, ">=", c["min_p_value"], why=f"MMD^2 = {mmd.statistic:.3g}"),
                  Check("classifier_p_value", c2st.p_value, ">=", c["min_p_value"],
                        why=f"held-out accuracy {c2st.statistic:.3f} (0.5 = indistinguishable)")]
        summary = {"mmd": mmd.to_dict(), "classifier": c2st.to_dict(), "n_reference": len(ref), "n_target": len(tgt)}
        self.conclude("Covariate-shift test: training vs target photometry", summary, checks,
                      {"features": self._figure(ref, tgt)})

    def _figure(self, ref, tgt):
        from calipers.validate.plots import pyplot

        plt = pyplot()

        nb = len(self.config["bands"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        j = min(3, nb - 1)
        for data, label in ((ref, "reference"), (tgt, "target")):
            axes[0].hist(data[:, j], bins=60, density=True, histtype="step", label=label)
            axes[1].scatter(data[:2000, nb + 1], data[:2000, nb + 2], s=1, alpha=0.4, label=label)
        axes[0].set(xlabel=f"{self.config['bands'][j]} magnitude", ylabel="density")
        axes[1].set(xlabel="colour 2", ylabel="colour 3")
        axes[0].legend()
        fig.tight_layout()
        return fig
