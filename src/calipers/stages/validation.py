"""Validation gate stages: judge an input, write a report, then pass or stop the pipeline."""
from __future__ import annotations

import logging
import os

import numpy as np

from calipers.core import catalog
from calipers.core.errors import CatalogError
from calipers.core.file_types import HDF5Catalog, QPEnsembleFile, ReportDir
from calipers.core.gate_stage import GateStage
from calipers.core.options import CATALOG_OPTIONS, DEFAULT_BANDS, GATE_OPTIONS, TRUTH_OPTIONS, band_columns
from calipers.core.stage import CalipersStage, Param

log = logging.getLogger(__name__)


class ValidationGate(GateStage):
    """Score a p(z) qp ensemble against true redshifts and stop the pipeline if it fails.

    Checks (thresholds in config): invalid (NaN) fraction, PIT KS, 68/95% coverage, CDE loss,
    catastrophic outliers, and the expected calibration error (ECE) of the probabilities the
    p(z) give to redshift intervals (``reliability_edges``; the events a tomographic binning
    uses). Writes ``report.json``, a PIT histogram with its null band, the coverage curve, the
    reliability diagram and ``index.html``.

    p(z) and truth are matched by row; when the p(z) ancil and the truth catalog both carry ids
    (``id_column``) they must agree row by row (the first mismatching row is an error). An empty
    p(z) file is an error.
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
        if n == 0:
            raise CatalogError(f"{pz_path}: holds no p(z) (0 rows); there is nothing to judge")
        n_truth, have = catalog.catalog_info(truth_path, group)
        catalog.require_columns(truth_path, group, [col])
        if n_truth != n:
            raise ValueError(f"{pz_path} holds {n} p(z) but {truth_path} has {n_truth} rows")
        id_col = c["id_column"] if c["id_column"] in have else ""
        zgrid = np.linspace(0.0, c["zmax"], c["nzbins"])
        acc = PZMetricAccumulator(zgrid, reliability_edges=tuple(c["reliability_edges"]))
        for start, end in catalog.chunk_ranges(n, c["chunk_size"], self.rank, self.size):
            truth = catalog.read_columns(truth_path, group, [col] + ([id_col] if id_col else []), start, end)
            ens = read_qp_rows(pz_path, start, end)
            if id_col and ens.ancil and "id" in ens.ancil:  # p(z) and truth must be the same objects
                catalog.compare_ids(ens.ancil["id"], truth[id_col], start, pz_path, truth_path, id_col)
            pdfs, valid = grid_pdfs(ens, zgrid)
            acc.update(start, pdfs, valid, truth[col])
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
    below ``min_p_value``. Works with any number of bands (the figure adapts to fewer than four).
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
        from calipers.core.features import read_photometry_features

        c = self.config
        mags, errs = band_columns(c, list(c["bands"]))
        return read_photometry_features(self.input_path(tag), c["hdf5_groupname"], list(c["bands"]), mags, errs, prep)

    def process(self):
        from calipers.validate.gate import Check
        from calipers.validate.plots import shift_features_figure
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
                      {"features": shift_features_figure(ref, tgt, list(c["bands"]))})
