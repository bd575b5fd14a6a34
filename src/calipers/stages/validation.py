"""Validation gate stages: judge an input, write a report, then pass or stop the pipeline."""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from calipers.core import catalog
from calipers.core.errors import CatalogError, ConfigError, ModelMismatchError
from calipers.core.file_types import HDF5Catalog, ModelDir, QPEnsembleFile, ReportDir
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


MAX_DISTINCT_GROUPS = 50


def group_keys(values: np.ndarray, spec, column: str, path: str) -> tuple[np.ndarray, dict]:
    """Group key of every row of ``column`` and the label of every key, for one entry of
    ``DistributionGate.group_bins``: ``"values"`` (one group per distinct value, at most
    :data:`MAX_DISTINCT_GROUPS`), an integer k (k quantile bins: thirds for 3) or a list of bin edges.
    Rows in no group get key -1 (bins) or NaN (values). Errors name the file and the column."""
    from calipers.validate.grouped import edge_bins, quantile_bins

    v = np.asarray(values, dtype=float)
    where = f"{path}: group column '{column}'"
    if spec == "values":
        distinct = np.unique(v[np.isfinite(v)])
        if distinct.size > MAX_DISTINCT_GROUPS:
            raise ConfigError(f"{where} has {distinct.size} distinct values (more than {MAX_DISTINCT_GROUPS}): give "
                              "group_bins a number of quantile bins or a list of edges for it instead of 'values'")
        return np.where(np.isfinite(v), v, np.nan), {}
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ConfigError(f"{where}: group_bins entry must be >= 1 quantile bins, got {spec}")
        keys, edges = quantile_bins(v, spec)
    elif isinstance(spec, (list, tuple)):
        try:
            keys, edges = edge_bins(v, [float(e) for e in spec]), np.asarray(spec, dtype=float)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: group_bins entry {spec!r}: {err}") from err
    else:
        raise ConfigError(f"{where}: a group_bins entry is 'values', a number of quantile bins or a list of edges, "
                          f"got {spec!r}")
    return keys, {k: f"[{edges[k]:.3g}, {edges[k + 1]:.3g}]" for k in range(len(edges) - 1)}


class DistributionGate(GateStage):
    """Judge any 1-D predictive distributions (a qp ensemble: p(z), log g, ...) against the truth,
    overall and per group, and stop the pipeline if they are not calibrated.

    The PIT of every row is its distribution's CDF at the truth (the distributions put on the grid
    ``xmin .. xmax``, one CDF convention, :mod:`calipers.gridpdf`). Checks: the invalid fraction,
    the PIT KS distance of all rows, and |coverage - nominal| of the central 68 and 95% intervals
    overall and in every group of every grouping with at least ``min_group_size`` rows (and,
    optionally, each group's PIT KS). Groupings are columns (``group_columns``) binned by
    ``group_bins``: e.g. ``snr`` by ``values`` (one group per S/N of a fixed-S/N test set) and
    ``m_h_pred`` by ``3`` (thirds of the model's own metallicity estimate). A column is read from the
    truth catalog when it has it, else from the distributions' ancil. A model calibrated only on
    average, over-confident where the data are poor and under-confident where they are rich, passes
    a pooled check and fails here.

    ``report_group_columns`` / ``report_group_bins`` are shown in the table and figure but not
    judged: groupings by a *true* latent label (the true [M/H] of a star), on which no calibrator
    that sees only the data can guarantee coverage where the data do not identify that label (even
    the exact posterior is calibrated given the data, not given the truth). Reports the mean CRPS
    beside them. Writes ``report.json`` (with the table ``coverage_by_group``, each row marked
    ``judged``), a PIT histogram, the coverage per group and ``index.html``.

    Distributions and truth are matched by row (equal row counts are checked).
    """

    name = "DistributionGate"
    parallel = False
    inputs = [("distributions", QPEnsembleFile), ("truth", HDF5Catalog)]
    outputs = [("report", ReportDir)]
    config_options = CalipersStage.config_options | GATE_OPTIONS | {
        "hdf5_groupname": Param(str, "photometry", msg="Group of the truth catalog holding the columns (a spectrum "
                                                       "set: meta)"),
        "truth_column": Param(str, "redshift", msg="Column of the truth catalog with the true value of each row"),
        "xmin": Param(float, 0.0, msg="Start of the grid the distributions are evaluated on"),
        "xmax": Param(float, 3.0, msg="End of the grid"),
        "nx": Param(int, 601, msg="Points in the grid"),
        "group_columns": Param(list, [], msg="Columns whose groups are judged one by one: from the truth catalog, "
                                             "or else from the distributions' ancil"),
        "group_bins": Param(list, [], msg="Per group column: 'values' (one group per distinct value), a number of "
                                          "quantile bins (3 = thirds) or a list of edges"),
        "report_group_columns": Param(list, [], msg="Columns (as group_columns) whose groups are shown, not judged"),
        "report_group_bins": Param(list, [], msg="Per report group column, as group_bins"),
        "max_pit_ks": Param(float, 0.05, msg="Largest allowed KS distance of the PIT of all rows from uniform"),
        "max_coverage_error": Param(float, 0.02, msg="Largest allowed |coverage - nominal| at 68% and 95%, overall "
                                                     "and in every group"),
        "max_group_pit_ks": Param(float, 1.0, msg="Largest allowed PIT KS distance in a group (1 = not checked)"),
        "min_group_size": Param(int, 100, msg="Groups with fewer rows are shown but not judged (too noisy)"),
        "max_invalid_fraction": Param(float, 0.0, msg="Largest allowed fraction of rows with NaN/inf "
                                                      "distributions or truth"),
        "chunk_size": Param(int, 20_000, msg="Distributions per chunk"),
    }

    @classmethod
    def required_columns(cls, config):
        return {"truth": (config["hdf5_groupname"], [config["truth_column"]])}

    def validate(self):
        super().validate()
        c = self.config
        for cols, bins in (("group_columns", "group_bins"), ("report_group_columns", "report_group_bins")):
            if len(c[bins]) != len(c[cols]):
                raise ConfigError(f"stage {self.instance_name}: {bins} needs one entry per {cols[:-1].replace('_', ' ')}"
                                  f" ({c[cols]}), got {c[bins]}")
        if set(c["group_columns"]) & set(c["report_group_columns"]):
            raise ConfigError(f"stage {self.instance_name}: a column is either judged (group_columns) or shown "
                              f"(report_group_columns), not both: {sorted(set(c['group_columns']) & set(c['report_group_columns']))}")
        if not c["xmax"] > c["xmin"] or c["nx"] < 2:
            raise ConfigError(f"stage {self.instance_name}: the grid needs xmax > xmin and nx >= 2, got "
                              f"[{c['xmin']}, {c['xmax']}] with {c['nx']} points")
        if c["chunk_size"] < 1 or c["min_group_size"] < 1:
            raise ConfigError(f"stage {self.instance_name}: chunk_size and min_group_size must be >= 1")

    def process(self):
        from calipers.core.qpio import qp_size, read_qp_rows
        from calipers.core.report import html_table
        from calipers.gridpdf import crps_values
        from calipers.validate import plots
        from calipers.validate.gate import Check
        from calipers.validate.grouped import coverage_by_group, grouped_coverage_checks
        from calipers.validate.metrics import grid_pdfs, pit_values

        c = self.config
        path, truth_path = self.input_path("distributions"), self.input_path("truth")
        group, col = c["hdf5_groupname"], c["truth_column"]
        n = qp_size(path)
        if n == 0:
            raise CatalogError(f"{path}: holds no distributions (0 rows); there is nothing to judge")
        n_truth = catalog.require_columns(truth_path, group, [col])
        if n_truth != n:
            raise ValueError(f"{path} holds {n} distributions but {truth_path} (group '{group}') has {n_truth} rows")
        wanted = list(c["group_columns"]) + list(c["report_group_columns"])
        in_truth = [k for k in wanted if k in catalog.catalog_info(truth_path, group)[1]]
        in_ancil = [k for k in wanted if k not in in_truth]
        grid = np.linspace(c["xmin"], c["xmax"], c["nx"])
        pit, ok, crps = np.full(n, np.nan), np.zeros(n, dtype=bool), np.full(n, np.nan)
        values = {k: np.full(n, np.nan) for k in in_ancil}
        for start, end in catalog.chunk_ranges(n, c["chunk_size"]):
            truth = catalog.read_columns(truth_path, group, [col], start, end)[col].astype(float)
            ens = read_qp_rows(path, start, end)
            ancil = ens.ancil or {}
            for k in in_ancil:
                if k not in ancil:
                    raise CatalogError(f"group column '{k}' is neither in {truth_path} (group '{group}') nor in the "
                                       f"ancil of {path} (ancil: {sorted(ancil)})")
                values[k][start:end] = np.asarray(ancil[k], dtype=float)
            pdfs, valid = grid_pdfs(ens, grid)
            valid &= np.isfinite(truth)
            if valid.any():
                pit[start:end][valid] = pit_values(pdfs[valid], grid, truth[valid])
                crps[start:end][valid] = crps_values(pdfs[valid], grid, truth[valid])
            ok[start:end] = valid
        if not ok.any():
            raise CatalogError(f"{path}: no row has a finite distribution and truth ('{col}' of {truth_path})")
        if in_truth:
            values |= catalog.read_columns(truth_path, group, in_truth)

        def grouped(columns, bins):
            groups, labels = {}, {}
            for name, spec in zip(columns, bins):
                keys, lab = group_keys(values[name], spec, name, truth_path if name in in_truth else path)
                groups[name], labels[name] = keys[ok], lab
            return coverage_by_group(np.clip(pit[ok], 0.0, 1.0), groups, labels)

        rows = grouped(c["group_columns"], c["group_bins"])
        shown = grouped(c["report_group_columns"], c["report_group_bins"])[1:] if c["report_group_columns"] else []
        n_invalid = int(n - ok.sum())
        checks = [Check("invalid_fraction", n_invalid / n, "<=", c["max_invalid_fraction"],
                        why="rows with NaN/inf distribution or truth")]
        checks += grouped_coverage_checks(rows, c["max_coverage_error"], min_group_size=c["min_group_size"])
        checks.append(Check("pit_ks", rows[0]["pit_ks"], "<=", c["max_pit_ks"], why="PIT uniformity, all rows"))
        if c["max_group_pit_ks"] < 1.0:
            checks += [ch for ch in grouped_coverage_checks(rows[1:], 1.0, max_pit_ks=c["max_group_pit_ks"],
                                                            min_group_size=c["min_group_size"])
                       if ch.name.startswith("pit_ks")]
        summary = {"n": n, "n_invalid": n_invalid, "truth_column": col, "pit_ks": rows[0]["pit_ks"],
                   "coverage68": rows[0]["coverage68"], "coverage95": rows[0]["coverage95"],
                   "crps": float(np.mean(crps[ok]))}
        figures = {"pit_histogram": plots.pit_histogram(pit[ok])}
        table_rows = [r | {"judged": True} for r in rows] + [r | {"judged": False} for r in shown]
        if len(table_rows) > 1:
            figures["coverage_by_group"] = plots.grouped_coverage_figure(table_rows, c["max_coverage_error"])
        table = html_table(table_rows, ["grouping", "group", "judged", "n", "coverage68", "error68", "coverage95",
                                        "error95", "pit_ks"], "Coverage and PIT KS per group (judged: in the checks)")
        self.conclude(f"Distribution gate: {col} of {os.path.basename(path)}", summary, checks, figures,
                      extra_html=table, extra={"coverage_by_group": table_rows})


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


PHOTOZ_POINT_ESTIMATES = ("zmode", "zmedian", "zmean")


def _example_rows(ztrue: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` rows with finite truth spread over the redshift range: one drawn at random from
    each of ``k`` equal-width redshift bins, then, where bins were empty, drawn from the rest."""
    finite = np.flatnonzero(np.isfinite(ztrue))
    if k <= 0 or not finite.size:
        return []
    z = ztrue[finite]
    edges = np.linspace(z.min(), z.max(), k + 1)
    which = np.clip(np.digitize(z, edges) - 1, 0, k - 1)
    chosen = [int(rng.choice(finite[which == b])) for b in range(k) if np.any(which == b)]
    rest = np.setdiff1d(finite, chosen)
    more = rng.choice(rest, size=min(k - len(chosen), len(rest)), replace=False) if len(chosen) < k else []
    return sorted(chosen + [int(r) for r in more])


def _merge_report_parts(a: dict, b: dict) -> dict:
    """Fold one rank's PhotozReport partial results into another's (accumulators merged,
    per-chunk and per-row entries united, counts and sums added)."""
    for key in ("raw", "calibrated"):
        a[key].merge(b[key])
    for key in ("point", "examples"):
        a[key].update(b[key])
    for key in ("validation_stack", "target_nz", "target_nz_in_support", "labelled_counts", "target_n_ood",
                "target_n_invalid", "labelled_n", "labelled_nonfinite", "labelled_outside"):
        a[key] = a[key] + b[key]
    return a


class PhotozReport(GateStage):
    """The photo-z report a user reads first, and the gate on the target's support.

    Reads the raw and the calibrated p(z) of the held-out labelled validation part with its
    true redshifts (and one magnitude), the calibrated p(z) of the unlabelled target (whose
    truth is never read), the whole labelled catalog (for its true n(z)), the model, the
    calibrator, and the reports of ``ShiftTest`` and ``ShiftWeights``. Writes ``report.json``,
    five figures and ``index.html`` with the model card:

    - ``point_vs_true``: the point estimate (``point_estimate`` from the calibrated p(z)'s ancil,
      else computed from the calibrated p(z)) against the true redshift as a 2-D density, with
      the 1:1 and +-0.15(1+z) lines and sigma_IQR, bias and outlier rate;
    - ``examples``: ``n_examples`` p(z), raw and calibrated, with their true redshift (rows drawn,
      seeded, across the redshift range);
    - ``pit_coverage``: PIT histogram and coverage curve before and after calibration;
    - ``nz``: the target's n(z) (stacked calibrated p(z), with and without the galaxies flagged
      ``ood``) beside the labelled sample's true-z histogram and the validation part's stacked p(z);
    - ``failure_modes``: outlier rate, sigma_IQR and bias of the point estimate by magnitude and
      by true-redshift bin.

    The model card (``model_card`` in ``report.json``, and on the page) is the card stored with
    the model (:func:`calipers.core.model_card.training_card`: training data, model, support
    region, software, seed) plus what this stage knows (:mod:`calipers.core.model_card`):

    - ``failure_modes``: the validation part's outlier rate (|z_point - z|/(1+z) > 0.15),
      sigma_IQR and bias, with counts, in bins of the ``failure_band`` magnitude
      (``failure_magnitude_edges``, open-ended first and last bins; non-detected magnitudes are in
      no bin and counted) and of the true redshift (``failure_redshift_edges``);
    - ``calibration``: the calibrator's method, settings and seed, the calibration data (p(z) and
      catalog with their hashes, rows), its importance weights (ESS, the calibration set's PIT
      summary unweighted and weighted) and the validation part's PIT KS, coverage, CRPS and CDE
      loss before and after calibration;
    - ``shift``: the ShiftTest's MMD and classifier p-values and verdict, and the ShiftWeights'
      effective sample size, its fraction and the rows clipped.

    The raw validation p(z) must come from ``model`` and the calibrated p(z) from ``calibrator``
    (fitted on that model's p(z)), as their provenance records: otherwise the card would describe
    something else, and the stage stops (:class:`~calipers.core.errors.ModelMismatchError`).

    Checks: the target's ``ood`` fraction (galaxies outside the training sample's support,
    flagged by ``PZEstimate`` and carried through ``PZApplyCalibration``'s ancil) at most
    ``max_ood_fraction`` (target p(z) without ``ood`` flags fail this check: the gate cannot
    tell); the invalid (NaN) fraction of the target's p(z); and the calibrated validation
    part's invalid fraction, PIT KS and 68/95% coverage (:func:`calipers.validate.gate.pz_gate_checks`).

    Every p(z) file is read in chunks of ``chunk_size`` and MPI ranks share the chunks; the
    target is reduced to its stacked n(z) and counts as it streams (memory flat in its size);
    the validation part keeps one point estimate and one truth per row.
    """

    name = "PhotozReport"
    parallel = True
    inputs = [("model", ModelDir), ("validation_pz", QPEnsembleFile), ("calibrated_validation_pz", QPEnsembleFile),
              ("validation_catalog", HDF5Catalog), ("target_pz", QPEnsembleFile), ("labelled_catalog", HDF5Catalog),
              ("calibrator", ModelDir), ("shift_report", ReportDir), ("shift_weights_report", ReportDir)]
    outputs = [("photoz_report", ReportDir)]
    report_tag = "photoz_report"
    config_options = CalipersStage.config_options | GATE_OPTIONS | TRUTH_OPTIONS | {
        "max_ood_fraction": Param(float, 0.05, msg="Largest allowed fraction of target galaxies flagged ood "
                                                   "(outside the training sample's support)"),
        "max_pit_ks": Param(float, 0.05, msg="Largest allowed PIT KS distance of the calibrated validation part"),
        "max_coverage_error": Param(float, 0.03, msg="Largest allowed |coverage - nominal| at 68% and 95% of the "
                                                     "calibrated validation part"),
        "max_invalid_fraction": Param(float, 0.0, msg="Largest allowed fraction of NaN/inf calibrated p(z) (or "
                                                      "truths) in the validation part, and of p(z) in the target"),
        "point_estimate": Param(str, "zmode", msg="Point estimate plotted against the truth: zmode, zmedian or zmean "
                                                  "(from the calibrated p(z)'s ancil, else computed from them)"),
        "n_examples": Param(int, 6, msg="Example p(z) drawn (seeded) across the validation part's redshift range"),
        "nz_hist_bins": Param(int, 60, msg="Bins of the labelled sample's true-redshift histogram on [0, zmax]"),
        "zmax": Param(float, 3.0, msg="Upper end of the redshift grid of metrics and n(z) (starts at 0)"),
        "nzbins": Param(int, 601, msg="Points in the redshift grid"),
        "chunk_size": Param(int, 20_000, msg="Distributions (and catalog rows) per chunk; MPI ranks share the chunks"),
        "failure_band": Param(str, "i", msg="Band whose magnitude (validation catalog) bins the failure-mode table"),
        "mag_column": Param(str, "mag_{band}_lsst", msg="Magnitude column name pattern; {band} is replaced by "
                                                        "failure_band"),
        "failure_magnitude_edges": Param(list, [22.0, 23.0, 24.0, 25.0],
                                         msg="Magnitude bin edges of the failure-mode table (with open-ended bins "
                                             "below the first and above the last)"),
        "failure_redshift_edges": Param(list, [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 2.0, 3.0],
                                        msg="True-redshift bin edges of the failure-mode table"),
    }

    @classmethod
    def _failure_mag_column(cls, config) -> str:
        return config["mag_column"].format(band=config["failure_band"])

    @classmethod
    def required_columns(cls, config):
        group, z = config["hdf5_groupname"], config["redshift_column"]
        try:
            mag = [cls._failure_mag_column(config)]
        except (KeyError, IndexError, ValueError):  # a bad pattern: validate() names it
            mag = []
        return {"validation_catalog": (group, [z] + mag), "labelled_catalog": (group, [z])}

    def validate(self):
        super().validate()
        c = self.config
        if c["point_estimate"] not in PHOTOZ_POINT_ESTIMATES:
            raise ConfigError(f"stage {self.instance_name}: point_estimate must be one of "
                              f"{list(PHOTOZ_POINT_ESTIMATES)}, got {c['point_estimate']!r}")
        for key, low in (("chunk_size", 1), ("n_examples", 0), ("nz_hist_bins", 1), ("nzbins", 2)):
            if c[key] < low:
                raise ConfigError(f"stage {self.instance_name}: {key} must be >= {low}, got {c[key]}")
        if not c["zmax"] > 0:
            raise ConfigError(f"stage {self.instance_name}: zmax must be > 0, got {c['zmax']}")
        if not c["failure_band"] or "{band}" not in c["mag_column"]:
            raise ConfigError(f"stage {self.instance_name}: failure_band must name a band and mag_column contain "
                              f"'{{band}}', got {c['failure_band']!r} and {c['mag_column']!r}")
        for key, least in (("failure_magnitude_edges", 1), ("failure_redshift_edges", 2)):
            edges = c[key]
            try:
                values = np.asarray(edges, dtype=float)
            except (TypeError, ValueError):
                values = np.array([np.nan])
            if (values.ndim != 1 or len(values) < least or not np.all(np.isfinite(values))
                    or not np.all(np.diff(values) > 0)):
                raise ConfigError(f"stage {self.instance_name}: {key} must be at least {least} finite, strictly "
                                  f"increasing numbers, got {edges!r}")

    @staticmethod
    def _made_with(path: str, tag: str) -> str:
        """The SHA-256 of the ``tag`` input that made ``path``, from its provenance ('' when not recorded)."""
        from calipers.core.provenance import read_provenance

        try:
            return json.loads(read_provenance(path).get("input_hashes", "{}")).get(tag, "")
        except (json.JSONDecodeError, AttributeError):
            return ""

    def _check_model(self, calibrator_spec: dict) -> None:
        """The raw validation p(z) must come from ``model`` (whose card the report shows), the
        calibrator must have been fitted on that model's p(z), and both calibrated p(z) must come
        from ``calibrator`` (whose record the card shows), when their provenance says."""
        ours = json.loads(self.provenance()["input_hashes"])
        model, calibrator = self.input_path("model"), self.input_path("calibrator")
        path = self.input_path("validation_pz")
        made_with = self._made_with(path, "model")
        if made_with and ours.get("model") and made_with != ours["model"]:
            raise ModelMismatchError(f"{path} holds p(z) of another model than {model} (sha256 {made_with[:12]}... "
                                     f"against {ours['model'][:12]}...): the report would show the wrong model card")
        fitted = (calibrator_spec.get("fitted_on") or {}).get("hash", "")
        if fitted and ours.get("model") and fitted != ours["model"]:
            raise ModelMismatchError(f"calibrator {calibrator} was fitted on p(z) of another model than {model} "
                                     f"(sha256 {fitted[:12]}... against {ours['model'][:12]}...)")
        for tag in ("calibrated_validation_pz", "target_pz"):
            path = self.input_path(tag)
            made_with = self._made_with(path, "calibrator")
            if made_with and ours.get("calibrator") and made_with != ours["calibrator"]:
                raise ModelMismatchError(f"{path} ({tag}) was calibrated with another calibrator than {calibrator} "
                                         f"(sha256 {made_with[:12]}... against {ours['calibrator'][:12]}...): the "
                                         "report would describe the wrong calibration")

    def _validation_part(self, zgrid: np.ndarray, ztrue: np.ndarray, examples: list[int]) -> dict:
        """This rank's chunks of the validation part: PIT/coverage accumulators before and after
        calibration, point estimates, the stacked calibrated p(z) and the example rows."""
        from calipers.core.qpio import read_qp_rows
        from calipers.validate.metrics import grid_pdfs, grid_point_estimates
        from calipers.validate.streaming import PZMetricAccumulator

        c = self.config
        raw_path, cal_path = self.input_path("validation_pz"), self.input_path("calibrated_validation_pz")
        truth_path, group = self.input_path("validation_catalog"), c["hdf5_groupname"]
        _, have = catalog.catalog_info(truth_path, group)
        id_col = c["id_column"] if c["id_column"] and c["id_column"] in have else ""
        which = c["point_estimate"]
        part = {"raw": PZMetricAccumulator(zgrid), "calibrated": PZMetricAccumulator(zgrid), "point": {},
                "examples": {}, "validation_stack": np.zeros(len(zgrid))}
        for start, end in catalog.chunk_ranges(len(ztrue), c["chunk_size"], self.rank, self.size):
            z = ztrue[start:end]
            ids = None
            if id_col:
                ids = catalog.read_columns(truth_path, group, [id_col], start, end, numeric=False)[id_col]
            pdfs = {}
            for key, path in (("raw", raw_path), ("calibrated", cal_path)):
                ens = read_qp_rows(path, start, end)
                if ids is not None and ens.ancil and "id" in ens.ancil:
                    catalog.compare_ids(ens.ancil["id"], ids, start, path, truth_path, id_col)
                p, valid = grid_pdfs(ens, zgrid)
                part[key].update(start, p, valid, z)
                pdfs[key] = p
                if key == "calibrated":
                    if ens.ancil and which in ens.ancil:
                        point = np.asarray(ens.ancil[which], dtype=float)
                    else:
                        point = np.full(end - start, np.nan)
                        if valid.any():
                            point[valid] = grid_point_estimates(p[valid], zgrid, [which])[which]
                    part["point"][start] = point
                    part["validation_stack"] += p[valid].sum(axis=0)
            for row in examples:
                if start <= row < end:
                    part["examples"][row] = (pdfs["raw"][row - start], pdfs["calibrated"][row - start])
        return part

    def _target(self, zgrid: np.ndarray) -> tuple[dict, bool, int]:
        """This rank's chunks of the target: stacked calibrated p(z) (all valid rows and those
        not flagged ood), ood and invalid counts; also whether the file has ood flags, and its size."""
        from calipers.core.qpio import qp_size, read_qp_rows
        from calipers.validate.metrics import grid_pdfs

        path = self.input_path("target_pz")
        n = qp_size(path)
        if n == 0:
            raise CatalogError(f"{path}: holds no p(z) (0 rows); there is no target to report on")
        first = read_qp_rows(path, 0, 1)
        has_ood = bool(first.ancil) and "ood" in first.ancil
        part = {"target_nz": np.zeros(len(zgrid)), "target_nz_in_support": np.zeros(len(zgrid)),
                "target_n_ood": 0, "target_n_invalid": 0}
        for start, end in catalog.chunk_ranges(n, self.config["chunk_size"], self.rank, self.size):
            ens = read_qp_rows(path, start, end)
            p, valid = grid_pdfs(ens, zgrid)
            part["target_n_invalid"] += int((~valid).sum())
            part["target_nz"] += p[valid].sum(axis=0)
            if has_ood:
                ood = np.asarray(ens.ancil["ood"]) != 0  # a NaN flag counts as flagged
                part["target_n_ood"] += int(ood.sum())
                part["target_nz_in_support"] += p[valid & ~ood].sum(axis=0)
        return part, has_ood, n

    def _labelled(self, edges: np.ndarray) -> dict:
        """This rank's chunks of the labelled catalog's true redshifts as histogram counts."""
        c = self.config
        part = {"labelled_counts": np.zeros(len(edges) - 1, dtype=np.int64), "labelled_n": 0,
                "labelled_nonfinite": 0, "labelled_outside": 0}
        col = c["redshift_column"]
        for _, _, cols in self.iter_catalog("labelled_catalog", c["hdf5_groupname"], [col], c["chunk_size"]):
            z = np.asarray(cols[col], dtype=float)
            finite = np.isfinite(z)
            inside = finite & (z >= edges[0]) & (z <= edges[-1])
            part["labelled_counts"] += np.histogram(z[inside], edges)[0]
            part["labelled_n"] += len(z)
            part["labelled_nonfinite"] += int((~finite).sum())
            part["labelled_outside"] += int((finite & ~inside).sum())
        return part

    def _failure_modes(self, zphot: np.ndarray, ztrue: np.ndarray, mag_column: str) -> tuple[dict, dict]:
        """The failure-mode section of the card (tables by magnitude and by true redshift) and
        the statistics behind it, for the figure."""
        from calipers.core.model_card import failure_mode_table
        from calipers.photoz.preprocess import nondetected
        from calipers.validate.metrics import binned_point_metrics

        c = self.config
        band, n = c["failure_band"], len(ztrue)
        mags = np.asarray(catalog.read_truth(self.input_path("validation_catalog"), c["hdf5_groupname"], mag_column,
                                             n, self.input_path("validation_pz")), dtype=float)
        mags[nondetected(mags)] = np.nan  # a non-detection has no magnitude bin: counted apart
        mag_edges = [-np.inf, *(float(e) for e in c["failure_magnitude_edges"]), np.inf]
        z_edges = [float(e) for e in c["failure_redshift_edges"]]
        by_mag = binned_point_metrics(zphot, ztrue, mags, mag_edges)
        by_z = binned_point_metrics(zphot, ztrue, ztrue, z_edges)
        section = {
            "point_estimate": f"{c['point_estimate']} of the calibrated p(z)",
            "by_magnitude": failure_mode_table(by_mag, mag_edges, n, f"{band}-band magnitude ({mag_column})",
                                               f"{band} not detected: NaN, inf or |m| >= 90"),
            "by_redshift": failure_mode_table(by_z, z_edges, n, "true redshift",
                                              f"true redshift not finite or outside [{z_edges[0]:g}, {z_edges[-1]:g}]"),
        }
        stats = {"mag": ([r["bin"] for r in section["by_magnitude"]["rows"]], by_mag),
                 "z": ([r["bin"] for r in section["by_redshift"]["rows"]], by_z)}
        return section, stats

    def process(self):
        from calipers.core.calibrators import read_calibrator_spec
        from calipers.core.model_card import calibration_card, report_card_html, shift_card
        from calipers.core.models import load_model_and_support
        from calipers.core.qpio import qp_size
        from calipers.validate import gate, plots
        from calipers.validate.metrics import point_metrics

        c = self.config
        group, col = c["hdf5_groupname"], c["redshift_column"]
        zgrid = np.linspace(0.0, c["zmax"], c["nzbins"])
        raw_path, cal_path = self.input_path("validation_pz"), self.input_path("calibrated_validation_pz")
        truth_path = self.input_path("validation_catalog")
        n_val = qp_size(raw_path)
        if n_val == 0:
            raise CatalogError(f"{raw_path}: holds no p(z) (0 rows); the validation part is empty")
        if qp_size(cal_path) != n_val:
            raise ValueError(f"{raw_path} holds {n_val} p(z) but {cal_path} holds {qp_size(cal_path)}: the "
                             "calibrated validation p(z) must be the same objects")
        ztrue = np.asarray(catalog.read_truth(truth_path, group, col, n_val, raw_path), dtype=float)
        catalog.require_columns(self.input_path("labelled_catalog"), group, [col])
        mag_column = self._failure_mag_column(c)
        catalog.require_columns(truth_path, group, [mag_column])
        _, support, card = load_model_and_support(self.input_path("model"))
        self._check_model(read_calibrator_spec(self.input_path("calibrator")))
        shift = shift_card(self.input_path("shift_report"), self.input_path("shift_weights_report"))
        examples = _example_rows(ztrue, c["n_examples"], self.rng(1))
        part = self._validation_part(zgrid, ztrue, examples)
        target, has_ood, n_target = self._target(zgrid)
        edges = np.linspace(0.0, c["zmax"], c["nz_hist_bins"] + 1)
        part |= target | self._labelled(edges)
        part = self.merge_on_root(part, _merge_report_parts)
        if self.rank != 0:
            self.conclude("", None, None, None)
            return

        raw, cal = part["raw"].result(), part["calibrated"].result()
        zphot = np.concatenate([part["point"][k] for k in sorted(part["point"])])
        ok = np.isfinite(zphot) & np.isfinite(ztrue)
        point = point_metrics(zphot[ok], ztrue[ok]) if ok.any() else {}

        def normalised(stack):
            total = np.trapezoid(stack, zgrid)
            return stack / total if total > 0 else np.full(len(zgrid), np.nan)

        nz_all = normalised(part["target_nz"])
        nz_in = normalised(part["target_nz_in_support"]) if has_ood else None
        val_stack = normalised(part["validation_stack"])
        counts = part["labelled_counts"]
        density = counts / max(int(counts.sum()), 1) / np.diff(edges)
        ood_fraction = part["target_n_ood"] / n_target if has_ood else float("nan")

        if has_ood:
            why_ood = (f"{part['target_n_ood']} of {n_target} target galaxies outside the training sample's support; "
                       "their p(z) are extrapolations")
        elif support is None:
            why_ood = ("no ood flags: the model stores no support region (trained before calipers kept one, or with "
                       "support_neighbors: 0); retrain to get them")
        else:
            why_ood = ("no ood flags in the target p(z) although the model has a support region: run PZEstimate with "
                       "support_flags: true")
        checks = [gate.Check("target_ood_fraction", ood_fraction, "<=", c["max_ood_fraction"], why=why_ood),
                  gate.Check("target_invalid_fraction", part["target_n_invalid"] / n_target, "<=",
                             c["max_invalid_fraction"], why="target rows with NaN/inf calibrated p(z)")]
        inf = float("inf")
        for check in gate.pz_gate_checks(cal, c["max_pit_ks"], c["max_coverage_error"], inf, c["max_invalid_fraction"],
                                         inf):
            if check.name in ("invalid_fraction", "pit_ks", "cov68", "cov95"):
                check.name = f"calibrated_validation_{check.name}"
                check.why = f"{check.why} (calibrated p(z) of the validation part)"
                checks.append(check)

        scalar = ("n_invalid", "pit_ks", "pit_cvm", "cov68", "cov95", "crps", "cde_loss", "ece", "outlier_015")
        summary = {"target_n": n_target, "target_n_ood": part["target_n_ood"] if has_ood else None,
                   "target_ood_fraction": ood_fraction, "target_has_ood_flags": has_ood,
                   "target_n_invalid": part["target_n_invalid"], "validation_n": n_val,
                   "point_estimate": c["point_estimate"]}
        summary |= {f"point_{k}": v for k, v in point.items()}
        summary |= {f"raw_{k}": raw[k] for k in scalar} | {f"calibrated_{k}": cal[k] for k in scalar}
        summary |= {"labelled_n": part["labelled_n"], "labelled_n_nonfinite": part["labelled_nonfinite"],
                    "labelled_n_outside_grid": part["labelled_outside"]}

        levels = plots.COVERAGE_LEVELS
        ex_rows = sorted(part["examples"], key=lambda r: (ztrue[r], r))  # panels in order of true z
        ex_raw, ex_cal = (np.reshape([part["examples"][r][j] for r in ex_rows], (-1, len(zgrid))) for j in (0, 1))
        figures = {
            "point_vs_true": plots.point_estimate_density_figure(zphot, ztrue, point, c["point_estimate"], c["zmax"]),
            "examples": plots.example_pdfs_figure(zgrid, ex_raw, ex_cal, ztrue[ex_rows], ex_rows),
            "pit_coverage": plots.pit_coverage_before_after_figure(
                part["raw"].pit_counts, part["calibrated"].pit_counts, levels,
                [part["raw"].coverage(lv) for lv in levels], [part["calibrated"].coverage(lv) for lv in levels]),
            "nz": plots.nz_comparison_figure(zgrid, nz_all, nz_in, edges, density, val_stack,
                                             ood_fraction if has_ood else None),
        }
        failure_modes, binned = self._failure_modes(zphot, ztrue, mag_column)
        figures["failure_modes"] = plots.failure_modes_figure(
            [(f"{c['failure_band']} magnitude", *binned["mag"]), ("true redshift", *binned["z"])])
        model_card = dict(card or {}) | {"calibration": calibration_card(self.input_path("calibrator"), raw, cal),
                                         "failure_modes": failure_modes, "shift": shift}

        def listed(a):
            return None if a is None else [float(v) for v in a]

        extra = {"model_card": model_card,
                 "nz": {"zgrid": listed(zgrid), "target": listed(nz_all), "target_in_support": listed(nz_in),
                        "validation_stacked": listed(val_stack), "labelled_edges": listed(edges),
                        "labelled_density": listed(density)},
                 "examples": {"rows": ex_rows, "ztrue": listed(ztrue[ex_rows])}}
        self.conclude(f"Photo-z report: {os.path.basename(self.input_path('target_pz'))}", summary, checks, figures,
                      extra_html=report_card_html(model_card), extra=extra)
