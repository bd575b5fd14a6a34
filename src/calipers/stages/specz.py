"""Spectroscopic-sample stages: select a biased labelled sample, weight it, and choose new targets.

- ``SpecSelection`` keeps the rows of a catalog that a spectroscopic survey would have targeted and
  measured a redshift for (:mod:`calipers.photoz.selection`): a magnitude limit, the colour boxes
  of real surveys' targeting, and a redshift success that falls with magnitude, drawn with a seed.
- ``ShiftWeights`` adds importance weights w(x) = p_target(x) / p_labelled(x) to a labelled
  catalog, from the photometry of both catalogs alone (:mod:`calipers.calibrate.shift_weights`),
  and reports their effective sample size; it stops when the weights collapse.
- ``ActiveSpecZSelect`` ranks a pool of galaxies with p(z) by how much a spectrum would teach the
  model (random, entropy or BALD, :mod:`calipers.active.acquisition`) per unit exposure cost, and
  writes the batch to observe next.
"""
from __future__ import annotations

import json
import logging
import math

import h5py
import numpy as np
from tqdm.auto import tqdm

from calipers.core import catalog
from calipers.core.errors import CatalogError, ConfigError, ModelMismatchError
from calipers.core.file_types import HDF5Catalog, ModelDir, QPEnsembleFile, ReportDir
from calipers.core.options import CATALOG_OPTIONS, DEFAULT_BANDS, band_columns, stack
from calipers.core.provenance import read_provenance, write_provenance_hdf5
from calipers.core.stage import CalipersStage, Param
from calipers.photoz.selection import (
    NAN_POLICIES,
    REASONS,
    SURVEY_TARGETING,
    ColourBox,
    LogisticSuccess,
    MagnitudeLimit,
    SpecSelection as Selection,
    Targeting,
)

log = logging.getLogger(__name__)

SUCCESS_MODELS = ("logistic", "none")


class SpecSelection(CalipersStage):
    """Keep the rows a spectroscopic survey would have measured, streaming in chunks.

    A row is kept when it passes the magnitude limit (``mag_limit_band`` between
    ``mag_bright_limit`` and ``mag_limit``), lies in the colour boxes of at least one survey in
    ``targeting`` (when any is listed), and wins a redshift-success draw with probability
    ``success_max / (1 + exp((m - success_m50) / success_width))`` in ``success_band`` (when
    ``redshift_success`` is ``logistic``). A non-detection fails every cut on its band and has
    success probability 0. The draw of each row depends only on ``seed`` and the row's index, so
    ``chunk_size`` does not change the output.

    The output has the input's columns and only the selected rows, in input order; its
    ``provenance`` group also holds ``selection`` (JSON: rows in, rows kept, selected fraction,
    rows per reason: ``not_detected``, ``not_targeted``, ``redshift_failed``) and the cuts in words
    (``selection_cuts``).
    """

    name = "SpecSelection"
    parallel = False
    inputs = [("catalog", HDF5Catalog)]
    outputs = [("selected_catalog", HDF5Catalog)]
    column_passthrough = {"selected_catalog": "catalog"}  # for calipers check: same columns out as in
    config_options = CalipersStage.config_options | {
        "hdf5_groupname": CATALOG_OPTIONS["hdf5_groupname"],
        "mag_column": CATALOG_OPTIONS["mag_column"],
        "bands": Param(list, DEFAULT_BANDS, msg="Bands the catalog holds; the cuts may only use these"),
        "chunk_size": Param(int, 1_000_000, msg="Rows per chunk (memory scales with this only)"),
        "mag_limit_band": Param(str, "i", msg="Band of the magnitude limit"),
        "mag_limit": Param(float, 23.5, msg="Faint magnitude limit: keep m < mag_limit (.inf = none)"),
        "mag_bright_limit": Param(float, -math.inf, msg="Bright limit: keep m > mag_bright_limit (-.inf = none)"),
        "targeting": Param(list, [], msg="Survey colour boxes, any of which targets a row: "
                                         + ", ".join(sorted(SURVEY_TARGETING)) + " ([] = none)"),
        "redshift_success": Param(str, "logistic", msg="Redshift-success model: logistic in magnitude, or none"),
        "success_band": Param(str, "i", msg="Band of the redshift-success curve"),
        "success_m50": Param(float, 23.0, msg="Magnitude where the success probability is success_max / 2"),
        "success_width": Param(float, 0.25, msg="Logistic width of the success curve (mag; > 0)"),
        "success_max": Param(float, 1.0, msg="Success probability of bright galaxies, in (0, 1]"),
        "nan_policy": Param(str, "error", msg="A NaN magnitude: error (names column and row) or nondetection"),
    }

    @classmethod
    def required_columns(cls, config):
        try:
            bands = list(_selection(config, "SpecSelection").bands)
        except (ConfigError, TypeError, ValueError):  # calipers check reports bad values elsewhere
            bands = []
        return {"catalog": (config["hdf5_groupname"], [config["mag_column"].format(band=b) for b in bands])}

    def selection(self) -> Selection:
        """The :class:`calipers.photoz.selection.SpecSelection` this stage's config describes."""
        return _selection(self.config, self.instance_name)

    def validate(self):
        if self.config["chunk_size"] < 1:
            raise ConfigError(f"stage {self.instance_name}: chunk_size must be >= 1, got {self.config['chunk_size']}")
        if self.config["seed"] < 0:
            raise ConfigError(f"stage {self.instance_name}: seed must be >= 0, got {self.config['seed']}")
        if "{band}" not in self.config["mag_column"]:
            raise ConfigError(f"stage {self.instance_name}: mag_column {self.config['mag_column']!r} must contain "
                              "'{band}'")
        sel = self.selection()
        if not sel.cuts and not sel.success:
            log.warning("%s: no magnitude limit, no targeting and no redshift success: every row is selected",
                        self.instance_name)

    def process(self):
        c = self.config
        sel = self.selection()
        group, path = c["hdf5_groupname"], self.input_path("catalog")
        n, cols = catalog.catalog_info(path, group)
        if n == 0:
            raise CatalogError(f"{path}: group '{group}' has 0 rows; there is nothing to select from")
        mag_cols = {b: c["mag_column"].format(band=b) for b in sel.bands}
        catalog.require_columns(path, group, list(mag_cols.values()))
        catalog.read_columns(path, group, list(mag_cols.values()), 0, 0)  # each must be numeric and 1-d
        with catalog.open_hdf5(path, "HDF5 catalog") as src:
            g_src = src[group] if group else src
            dtypes = {k: g_src[k].dtype for k in cols}
        labels = {b: f"'{col}'" for b, col in mag_cols.items()}
        counts = dict.fromkeys(REASONS, 0)
        f, g = catalog.growable_catalog(self.output_path("selected_catalog"), group, dtypes, self.provenance())
        with f:
            chunks = catalog.iter_chunks(path, group, cols, c["chunk_size"], numeric=False)
            for start, _, data in tqdm(chunks, total=math.ceil(n / c["chunk_size"]), desc=self.instance_name,
                                       disable=None):
                try:
                    result = sel.select({b: data[col] for b, col in mag_cols.items()}, c["seed"], first_row=start,
                                        columns=labels)
                except ValueError as err:
                    raise CatalogError(f"{path} (group '{group}'): {err}") from err
                catalog.append_rows(g, data, result.mask)
                for reason, k in result.counts().items():
                    counts[reason] += k
            kept = counts["selected"]
            summary = {"n_input": n, "n_selected": kept, "selected_fraction": kept / n, "reasons": counts}
            f["provenance"].attrs["selection"] = json.dumps(summary, sort_keys=True)
            f["provenance"].attrs["selection_cuts"] = _describe(sel)
        if kept == 0:
            raise CatalogError(f"{path}: the spectroscopic selection kept no row of {n} ({counts}); loosen the cuts")
        log.info("%s: selected %d of %d rows (fraction %.4f); not detected %d, not targeted %d, redshift failed %d",
                 self.instance_name, kept, n, kept / n, counts["not_detected"], counts["not_targeted"],
                 counts["redshift_failed"])


def _selection(config, stage: str) -> Selection:
    """Build the selection from a stage config, raising ConfigError naming the bad key."""
    def bad(key: str, why: str):
        raise ConfigError(f"stage {stage}: config '{key}' = {config[key]!r}: {why}")

    bands = list(config["bands"])
    if not bands or not all(isinstance(b, str) and b for b in bands):
        bad("bands", "must be a non-empty list of band names")
    if len(set(bands)) != len(bands):
        bad("bands", "names a band twice")
    if config["nan_policy"] not in NAN_POLICIES:
        bad("nan_policy", f"must be one of {list(NAN_POLICIES)}")

    def check_band(key: str) -> str:
        if config[key] not in bands:
            bad(key, f"is not one of the bands {bands}")
        return config[key]

    cuts = []
    lo, hi = float(config["mag_bright_limit"]), float(config["mag_limit"])
    for key, value in (("mag_limit", hi), ("mag_bright_limit", lo)):
        if math.isnan(value):
            bad(key, "must be a number")
    if not lo < hi:
        bad("mag_bright_limit", f"must be smaller (brighter) than mag_limit ({hi})")
    if math.isfinite(lo) or math.isfinite(hi):
        cuts.append(MagnitudeLimit(check_band("mag_limit_band"), faint=hi, bright=lo))

    names = list(config["targeting"])
    unknown = [t for t in names if t not in SURVEY_TARGETING]
    if unknown:
        bad("targeting", f"unknown survey(s) {unknown}; known: {sorted(SURVEY_TARGETING)}")
    if len(set(names)) != len(names):
        bad("targeting", "names a survey twice")
    if names:
        surveys = [SURVEY_TARGETING[t] for t in names]
        missing = sorted({b for s in surveys for b in s.bands} - set(bands))
        if missing:
            bad("targeting", f"needs band(s) {missing}, which are not in bands {bands}")
        boxes = tuple(ColourBox(f"{s.name}/{box.name}", box.cuts) for s in surveys for box in s.boxes)
        cuts.append(Targeting("+".join(names), boxes, reference=" | ".join(s.reference for s in surveys)))

    success = []
    model = config["redshift_success"]
    if model not in SUCCESS_MODELS:
        bad("redshift_success", f"must be one of {list(SUCCESS_MODELS)}")
    if model == "logistic":
        for key in ("success_m50", "success_width", "success_max"):
            value = float(config[key])
            if not math.isfinite(value):
                bad(key, "must be a finite number")
        if not config["success_width"] > 0:
            bad("success_width", "must be > 0 (mag)")
        if not 0 < config["success_max"] <= 1:
            bad("success_max", "must be in (0, 1]")
        success.append(LogisticSuccess(check_band("success_band"), m50=float(config["success_m50"]),
                                       width=float(config["success_width"]), max_rate=float(config["success_max"])))
    return Selection(cuts=tuple(cuts), success=tuple(success), nan_policy=config["nan_policy"])


def _describe(sel: Selection) -> str:
    """The cuts of a selection in words (stored in the output's provenance)."""
    parts = []
    for c in sel.cuts:
        if isinstance(c, MagnitudeLimit):
            parts.append(c.describe())
        elif isinstance(c, Targeting):
            parts.append(f"targeting {c.name}: {c.reference}")
    for s in sel.success:
        parts.append(f"redshift success {s.max_rate:g} / (1 + exp(({s.band} - {s.m50:g}) / {s.width:g}))")
    return "; ".join(parts) or "none (every row selected)"


# ------------------------------------------------------------------------------ shift weights
def _bad_option(stage: str, config, key: str, why: str):
    raise ConfigError(f"stage {stage}: config '{key}' = {config[key]!r}: {why}")


def _check_bands(stage: str, config) -> list[str]:
    bands = list(config["bands"])
    if not bands or not all(isinstance(b, str) and b for b in bands):
        _bad_option(stage, config, "bands", "must be a non-empty list of band names")
    if len(set(bands)) != len(bands):
        _bad_option(stage, config, "bands", "names a band twice")
    for key in ("mag_column", "err_column"):
        if "{band}" not in config[key]:
            _bad_option(stage, config, key, "must contain '{band}'")
    return bands


class ShiftWeights(CalipersStage):
    """Importance weights w(x) = p_target(x) / p_labelled(x) for the rows of a labelled catalog.

    The features are the magnitudes and adjacent colours of ``bands`` in both catalogs, with
    non-detections replaced by the labelled catalog's fill magnitudes
    (:func:`calipers.calibrate.shift_weights.photometry_shift_features`, the preprocessor fitted
    on the labelled catalog); only photometry is read from the target catalog, never a redshift.
    The ratio is a cross-fitted classifier or kNN counts (:class:`~calipers.calibrate.
    shift_weights.DensityRatio`), optionally capped (``clip_quantile``, ``max_ratio``), and the
    weights are normalised to mean 1 over the labelled rows. With more than ``max_target`` target
    rows, a seeded random subset of that size is used (read chunk by chunk).

    Outputs: ``weighted_catalog``, the labelled catalog's columns and rows, in order, plus the
    float column ``weight_column`` (its ``provenance`` group also holds ``shift_weights``, the
    :class:`~calipers.calibrate.shift_weights.ShiftWeightReport` as JSON); and
    ``shift_weights_report``, a report directory with the same numbers and a histogram of the
    log weights. When the weights' effective sample size is below ``min_ess_fraction`` of the
    labelled rows, the stage stops with :class:`~calipers.calibrate.shift_weights.
    WeightCollapseError` and writes nothing.
    """

    name = "ShiftWeights"
    parallel = False
    inputs = [("labelled_catalog", HDF5Catalog), ("target_catalog", HDF5Catalog)]
    outputs = [("weighted_catalog", HDF5Catalog), ("shift_weights_report", ReportDir)]
    column_passthrough = {"weighted_catalog": "labelled_catalog"}  # for calipers check: same columns out (+ weight)

    @classmethod
    def added_columns(cls, config):
        """Columns this stage adds to a passed-through catalog (for ``calipers check``)."""
        return {"weighted_catalog": [config["weight_column"]]}
    config_options = CalipersStage.config_options | CATALOG_OPTIONS | {
        "bands": Param(list, DEFAULT_BANDS, msg="Bands whose magnitudes and adjacent colours are the features"),
        "redshift_column": Param(str, "redshift", msg="True-redshift column the labelled catalog must hold, finite "
                                                      "(never read from the target; '' = do not check)"),
        "include_flags": Param(bool, False, msg="Add the 0/1 non-detection flags of the bands to the features"),
        "method": Param(str, "classifier", msg="Density-ratio estimator: classifier (cross-fitted) or knn"),
        "classifier": Param(str, "logistic", msg="Classifier of method=classifier: logistic, gradient_boosting or mlp"),
        "degree": Param(int, 2, msg="Polynomial degree of the logistic classifier's features"),
        "n_folds": Param(int, 5, msg="Cross-fitting folds of method=classifier (>= 2)"),
        "n_neighbors": Param(int, 0, msg="k of method=knn (0 = clip(sqrt(n_labelled + n_target), 20, 500))"),
        "clip_quantile": Param(float, 0.0, msg="Cap the ratio at this quantile, in (0, 1), of the labelled rows' "
                                               "ratios (0 = no cap)"),
        "max_ratio": Param(float, 0.0, msg="Cap the ratio p_target / p_labelled at this value (0 = no cap)"),
        "min_ess_fraction": Param(float, 0.05, msg="Stop (WeightCollapseError) when the effective sample size of "
                                                   "the weights is below this fraction of the labelled rows"),
        "max_target": Param(int, 200_000, msg="Most target rows used: a seeded random subset (0 = all)"),
        "weight_column": Param(str, "shift_weight", msg="Name of the weight column added to the labelled catalog"),
        "chunk_size": Param(int, 1_000_000, msg="Rows per chunk when reading the target and copying the labelled "
                                                "catalog"),
    }

    @classmethod
    def required_columns(cls, config):
        try:
            mags, errs = band_columns(config, list(config["bands"]))
        except (KeyError, IndexError, ValueError, TypeError):  # calipers check reports bad patterns elsewhere
            mags, errs = [], []
        truth = [config["redshift_column"]] if config["redshift_column"] else []
        return {"labelled_catalog": (config["hdf5_groupname"], mags + errs + truth),
                "target_catalog": (config["hdf5_groupname"], mags + errs)}

    def validate(self):
        from calipers.calibrate.shift_weights import CLASSIFIERS, METHODS

        c, stage = self.config, self.instance_name
        _check_bands(stage, c)
        checks = [
            ("method", c["method"] in METHODS, f"must be one of {list(METHODS)}"),
            ("classifier", c["classifier"] in CLASSIFIERS, f"must be one of {list(CLASSIFIERS)}"),
            ("degree", c["degree"] >= 1, "must be >= 1"),
            ("n_folds", c["n_folds"] >= 2, "must be >= 2"),
            ("n_neighbors", c["n_neighbors"] >= 0, "must be >= 1, or 0 for the default"),
            ("clip_quantile", 0 <= c["clip_quantile"] < 1, "must be in (0, 1), or 0 for no cap"),
            ("max_ratio", math.isfinite(c["max_ratio"]) and c["max_ratio"] >= 0, "must be > 0, or 0 for no cap"),
            ("min_ess_fraction", 0 <= c["min_ess_fraction"] <= 1, "must be in [0, 1]"),
            ("max_target", c["max_target"] >= 0, "must be >= 1, or 0 for every target row"),
            ("weight_column", bool(c["weight_column"]), "must name a column"),
            ("chunk_size", c["chunk_size"] >= 1, "must be >= 1"),
            ("seed", c["seed"] >= 0, "must be >= 0"),
        ]
        for key, ok, why in checks:
            if not ok:
                _bad_option(stage, c, key, why)

    def _require(self, tag: str, columns: list[str]) -> tuple[int, list[str]]:
        path, group = self.input_path(tag), self.config["hdf5_groupname"]
        n, have = catalog.catalog_info(path, group)
        missing = [col for col in columns if col not in have]
        if missing:
            raise CatalogError(f"stage {self.instance_name}: {tag} {path}: group '{group}' is missing column(s) "
                               f"{missing} (bands {list(self.config['bands'])}); it has {sorted(have)}")
        if n == 0:
            raise CatalogError(f"stage {self.instance_name}: {tag} {path}: group '{group}' has 0 rows")
        return n, have

    def process(self):
        from calipers.calibrate.shift_weights import DensityRatio, WeightCollapseError, photometry_shift_features
        from calipers.photoz.preprocess import PhotometryPreprocessor

        c, stage = self.config, self.instance_name
        group, bands = c["hdf5_groupname"], list(c["bands"])
        mag_cols, err_cols = band_columns(c, bands)
        lab, tgt = self.input_path("labelled_catalog"), self.input_path("target_catalog")
        truth = [c["redshift_column"]] if c["redshift_column"] else []
        n_l, have_l = self._require("labelled_catalog", mag_cols + err_cols + truth)
        n_t, _ = self._require("target_catalog", mag_cols + err_cols)
        wcol = c["weight_column"]
        if wcol in have_l:
            raise ConfigError(f"stage {stage}: config 'weight_column' = {wcol!r}: {lab} (group '{group}') already "
                              "has a column of that name; choose another")

        # labelled rows: every row (the weights are per row); the preprocessor is fitted here
        cols = catalog.read_columns(lab, group, mag_cols + err_cols + truth)
        if truth:
            z = np.asarray(cols[truth[0]], dtype=float)
            bad = np.flatnonzero(~np.isfinite(z))
            if bad.size:
                raise CatalogError(f"{lab}: column '{truth[0]}' (group '{group}') is not finite at row {bad[0]} "
                                   f"({bad.size} row(s)); a labelled catalog needs a true redshift in every row")
        m_l, e_l = stack(cols, mag_cols), stack(cols, err_cols)
        try:
            prep = PhotometryPreprocessor(bands).fit(m_l, e_l)
        except ValueError as err:
            raise CatalogError(f"{lab}: {err}") from err
        x_l = photometry_shift_features(m_l, e_l, prep, c["include_flags"])
        del cols, m_l, e_l

        # target rows: photometry only, chunk by chunk, a seeded subset of at most max_target rows
        rows = None
        if c["max_target"] and n_t > c["max_target"]:
            rows = np.sort(self.rng(1).choice(n_t, c["max_target"], replace=False))
        parts = []
        chunks = catalog.iter_chunks(tgt, group, mag_cols + err_cols, c["chunk_size"])
        for start, end, data in tqdm(chunks, total=math.ceil(n_t / c["chunk_size"]), desc=f"{stage} target",
                                     disable=None, leave=False):
            take = slice(None) if rows is None else rows[(rows >= start) & (rows < end)] - start
            parts.append(photometry_shift_features(stack(data, mag_cols)[take], stack(data, err_cols)[take], prep,
                                                   c["include_flags"]))
        x_t = np.vstack(parts)

        ratio = DensityRatio(method=c["method"], classifier=c["classifier"], degree=c["degree"],
                             n_folds=c["n_folds"], n_neighbors=c["n_neighbors"] or None,
                             clip_quantile=c["clip_quantile"] or None, max_ratio=c["max_ratio"] or None,
                             min_ess_fraction=c["min_ess_fraction"], max_target=None, seed=c["seed"])
        try:
            ratio.fit(x_l, x_t)
        except WeightCollapseError as err:
            raise WeightCollapseError(f"stage {stage}: weighting labelled catalog {lab} towards target catalog "
                                      f"{tgt} (rows are rows of {lab}): {err}", err.ess, err.floor, err.rows) from err
        except ValueError as err:
            raise CatalogError(f"stage {stage}: labelled catalog {lab}, target catalog {tgt}: {err}") from err
        w, report = ratio.labelled_weights, ratio.report
        log.info("%s: %s weights of %d labelled rows against %d target rows: ESS %.1f (fraction %.3f), %d clipped, "
                 "largest weight %.3g", stage, report.method, n_l, len(x_t), report.ess, report.ess_fraction,
                 report.n_clipped, report.max_weight)

        prov = self.provenance()
        with catalog.open_hdf5(lab, "HDF5 catalog") as src:
            g_src = src[group] if group else src
            names = [k for k, v in g_src.items() if isinstance(v, h5py.Dataset)]
            dtypes = {k: g_src[k].dtype for k in names}
        f, g = catalog.growable_catalog(self.output_path("weighted_catalog"), group, dtypes | {wcol: np.float64}, prov)
        with f:
            for start, end, data in catalog.iter_chunks(lab, group, names, c["chunk_size"], numeric=False):
                data[wcol] = w[start:end]
                catalog.append_rows(g, data, np.ones(end - start, bool))
            f["provenance"].attrs["shift_weights"] = json.dumps(report.to_dict(), sort_keys=True)
        self._write_report(report, w, ratio, lab, tgt, n_t, len(x_t), prov)

    def _write_report(self, report, weights, ratio, lab: str, tgt: str, n_target: int, n_used: int, prov) -> None:
        from calipers.core.report import write_report
        from calipers.validate.gate import Check
        from calipers.validate.plots import shift_weights_figure

        c = self.config
        quantiles = (0.01, 0.16, 0.5, 0.84, 0.99)
        summary = report.to_dict() | {
            "labelled_catalog": lab, "target_catalog": tgt, "n_target_rows": n_target, "n_target_used": n_used,
            "weight_column": c["weight_column"], "bands": list(c["bands"]), "include_flags": c["include_flags"],
            "weight_quantiles": {f"{q:g}": float(np.quantile(weights, q)) for q in quantiles},
        }
        cap = None if ratio.clip_ratio is None else ratio.clip_ratio / ratio.scale
        checks = [Check("ess_fraction", report.ess_fraction, ">=", c["min_ess_fraction"],
                        why=f"effective sample size {report.ess:.1f} of {report.n_labelled} labelled rows")]
        figures = {"log_weights": shift_weights_figure(weights, report.ess_fraction, cap)}
        write_report(self.output_path("shift_weights_report"), "Covariate-shift importance weights", summary, checks,
                     figures, provenance=prov)


# ------------------------------------------------------------------------------ active spec-z targeting
class ActiveSpecZSelect(CalipersStage):
    """Choose the next spectroscopic targets from a pool of galaxies with p(z).

    Scores (:func:`calipers.active.acquisition.acquisition_scores`), streamed over the p(z) file
    in chunks of ``chunk_size``: ``random`` (seeded), ``entropy`` (differential entropy of the
    ensemble p(z)) or ``bald`` (mutual information between z and the ensemble member), both exact
    on the grid ``zmin``..``zmax`` (``nzbins`` points; :func:`calipers.validate.support.
    ensemble_entropies`). BALD needs each member's p(z): the ``mixmod`` p(z) of ``PZEstimate``
    hold the deep ensemble's components member-major, and the member count is read from the
    ``model`` directory - the one the p(z) came from: when the p(z) file's provenance records the
    hash of its model, a different ``model`` is an error. ``entropy`` also works on gridded
    (``interp``) p(z), e.g. calibrated ones; ``random`` reads no p(z).

    Cost: ``cost_column`` of the catalog, or (``cost_column: ''``) the exposure time
    ``cost_overhead + 10^(a (m - cost_ref_mag))`` of the ``cost_band`` magnitude m
    (:func:`calipers.active.acquisition.exposure_cost`; a = 0.8 background-limited, 0.4
    source-limited). Costs are checked first, before any p(z) is read: a cost that is not finite
    and positive (or a cost-band non-detection) is an error naming the file, column and row.

    Batch (:func:`calipers.active.acquisition.select_batch`) by priority score / cost: ``topk``,
    ``power`` (power-BALD), ``softmax`` or ``kmeans`` (diverse, on the model's photometry
    features of the ``pool_factor * batch_size`` rows of highest priority), at most
    ``batch_size`` targets (0 = no limit) whose summed cost stays within ``budget`` (0 = none).

    Output ``targets``: one row per target in observing order, columns ``row`` (row of the pool
    catalog and p(z) file), ``id`` (the p(z) ancil's ids, else the catalog's ``id_column``, when
    either exists), ``rank`` (1 = observe first), ``score``, ``cost``, ``priority`` and
    ``cumulative_cost``; its ``provenance`` group also holds ``selection`` (JSON summary).
    """

    name = "ActiveSpecZSelect"
    parallel = False
    inputs = [("pz", QPEnsembleFile), ("catalog", HDF5Catalog), ("model", ModelDir)]
    outputs = [("targets", HDF5Catalog)]
    config_options = CalipersStage.config_options | CATALOG_OPTIONS | {
        "id_column": Param(str, "id", msg="Object-id column of the catalog: compared row by row with the p(z) ancil "
                                          "ids, and written when the p(z) carry none ('' = neither)"),
        "method": Param(str, "bald", msg="Acquisition score: random, entropy (ensemble p(z)) or bald (mutual "
                                         "information between z and the ensemble member)"),
        "batch": Param(str, "topk", msg="Batch rule: topk, power (power-BALD), softmax or kmeans (diverse)"),
        "batch_size": Param(int, 100, msg="Most targets to select (0 = no limit: the budget alone)"),
        "budget": Param(float, 0.0, msg="Total cost of the targets may not exceed this (0 = no budget)"),
        "cost_column": Param(str, "", msg="Catalog column of each candidate's cost ('' = exposure time from the "
                                          "cost_band magnitude)"),
        "cost_band": Param(str, "i", msg="Band whose magnitude sets the exposure time (cost_column '')"),
        "cost_ref_mag": Param(float, 22.5, msg="Magnitude whose exposure costs 1 (cost_column '')"),
        "cost_regime": Param(str, "background", msg="Noise regime of the exposure time: background (10^(0.8 dm)) or "
                                                    "source (10^(0.4 dm))"),
        "cost_overhead": Param(float, 0.0, msg="Fixed cost added per target (cost_column ''), same unit"),
        "beta": Param(float, 1.0, msg="Exponent of power (priority^beta) or inverse temperature of softmax"),
        "pool_factor": Param(int, 10, msg="kmeans: cluster the pool_factor * batch_size rows of highest priority"),
        "zmin": Param(float, 0.0, msg="Start of the redshift grid of the entropies"),
        "zmax": Param(float, 3.0, msg="End of the redshift grid of the entropies"),
        "nzbins": Param(int, 301, msg="Points of the redshift grid of the entropies"),
        "chunk_size": Param(int, 20_000, msg="p(z) and catalog rows per chunk (memory scales with this)"),
    }

    @classmethod
    def required_columns(cls, config):
        column = config["cost_column"]
        if not column:
            try:
                column = config["mag_column"].format(band=config["cost_band"])
            except (KeyError, IndexError, ValueError):
                return {}
        return {"catalog": (config["hdf5_groupname"], [column])}

    def validate(self):
        from calipers.active.acquisition import ACQUISITION_METHODS, EXPOSURE_REGIMES, SELECTION_METHODS

        c, stage = self.config, self.instance_name
        checks = [
            ("method", c["method"] in ACQUISITION_METHODS, f"must be one of {list(ACQUISITION_METHODS)}"),
            ("batch", c["batch"] in SELECTION_METHODS, f"must be one of {list(SELECTION_METHODS)}"),
            ("batch_size", c["batch_size"] >= 0, "must be >= 1, or 0 for no limit"),
            ("budget", math.isfinite(c["budget"]) and c["budget"] >= 0, "must be > 0, or 0 for no budget"),
            ("budget", c["batch_size"] > 0 or c["budget"] > 0, "batch_size and budget are both 0: give either"),
            ("batch_size", c["batch"] != "kmeans" or c["batch_size"] > 0, "kmeans needs a batch_size (the clusters)"),
            ("cost_regime", c["cost_regime"] in EXPOSURE_REGIMES, f"must be one of {sorted(EXPOSURE_REGIMES)}"),
            ("cost_ref_mag", math.isfinite(c["cost_ref_mag"]), "must be finite"),
            ("cost_overhead", math.isfinite(c["cost_overhead"]) and c["cost_overhead"] >= 0, "must be >= 0"),
            ("beta", math.isfinite(c["beta"]) and c["beta"] >= 0, "must be finite and >= 0"),
            ("pool_factor", c["pool_factor"] >= 1, "must be >= 1"),
            ("zmax", math.isfinite(c["zmin"]) and math.isfinite(c["zmax"]) and c["zmin"] < c["zmax"],
             "must be finite and above zmin"),
            ("nzbins", c["nzbins"] >= 2, "must be >= 2"),
            ("chunk_size", c["chunk_size"] >= 1, "must be >= 1"),
            ("seed", c["seed"] >= 0, "must be >= 0"),
        ]
        if not c["cost_column"]:
            checks.append(("mag_column", "{band}" in c["mag_column"], "must contain '{band}'"))
        for key, ok, why in checks:
            if not ok:
                _bad_option(stage, c, key, why)

    # ------------------------------------------------------------------ reading
    def _costs(self, path: str, group: str, n: int) -> tuple[np.ndarray, str]:
        """Cost of every candidate, checked row by row: (costs, column read)."""
        from calipers.active.acquisition import exposure_cost
        from calipers.photoz.preprocess import nondetected

        c = self.config
        column = c["cost_column"] or c["mag_column"].format(band=c["cost_band"])
        costs = np.empty(n)
        chunks = catalog.iter_chunks(path, group, [column], c["chunk_size"])
        for start, end, data in chunks:
            v = np.asarray(data[column], dtype=float)
            if c["cost_column"]:
                bad = np.flatnonzero(~(np.isfinite(v) & (v > 0)))
                if bad.size:
                    r = bad[0]
                    raise CatalogError(f"{path}: column '{column}' (group '{group}') has cost {float(v[r]):g} at row "
                                       f"{start + r}: a cost must be finite and positive ({bad.size} bad row(s) in "
                                       f"rows {start}:{end})")
                costs[start:end] = v
            else:
                bad = np.flatnonzero(nondetected(v))
                if bad.size:
                    r = bad[0]
                    raise CatalogError(f"{path}: column '{column}' (group '{group}') has no detected magnitude at row "
                                       f"{start + r} ({float(v[r]):g}): a non-detection in cost_band "
                                       f"'{c['cost_band']}' has no exposure time ({bad.size} such row(s) in rows "
                                       f"{start}:{end}); cut them from the pool, choose another cost_band or give a "
                                       "cost_column")
                costs[start:end] = exposure_cost(v, ref_mag=c["cost_ref_mag"], overhead=c["cost_overhead"],
                                                 regime=c["cost_regime"])
        return costs, column

    def _ids(self, pz: str, path: str, group: str, have: list[str]) -> np.ndarray | None:
        """Object ids of the candidates (p(z) ancil, else catalog), after checking that both agree."""
        c = self.config
        with catalog.open_hdf5(pz, "qp ensemble (HDF5)") as f:
            pz_ids = "ancil" in f and "id" in f["ancil"]
        id_column = c["id_column"] if c["id_column"] in have else ""
        if pz_ids and id_column:
            catalog.check_matching_ids(pz, "ancil/id", path, group, id_column, c["chunk_size"])
        if pz_ids:
            return catalog.read_columns(pz, "ancil", ["id"], numeric=False)["id"]
        if id_column:
            return catalog.read_columns(path, group, [id_column], numeric=False)[id_column]
        return None

    def _model(self, pz: str):
        """The deep ensemble of ``model``, after checking that the p(z) came from it (when recorded)."""
        if hasattr(self, "_ens"):
            return self._ens
        from calipers.core.models import load_model

        directory = self.input_path("model")
        self._ens = load_model(directory)
        try:
            prov = read_provenance(pz)
            recorded = json.loads(prov.get("input_hashes", "{}")).get("model")
            recorded_path = json.loads(prov.get("inputs", "{}")).get("model", "?")
        except json.JSONDecodeError:
            recorded = None
        mine = json.loads(self.provenance()["input_hashes"]).get("model")
        if recorded is None:
            log.warning("%s: %s records no model in its provenance; assuming it came from %s (%d members)",
                        self.instance_name, pz, directory, self._ens.config.n_members)
        elif recorded != mine:
            raise ModelMismatchError(
                f"stage {self.instance_name}: {pz} was estimated with the model {recorded_path} (SHA-256 "
                f"{recorded[:12]}...), not with {directory} ({(mine or '?')[:12]}...); its mixture is split into "
                "members by that model's member count: give the model PZEstimate used")
        return self._ens

    def _scores(self, pz: str, n: int) -> tuple[np.ndarray, str, int | None]:
        """(scores, pdf_name, n_members) of every candidate, p(z) read chunk by chunk."""
        from calipers.active.acquisition import acquisition_scores
        from calipers.core.qpio import read_qp_rows
        from calipers.validate.support import ensemble_entropies, grid_entropy

        c, stage = self.config, self.instance_name
        with catalog.open_hdf5(pz, "qp ensemble (HDF5)") as f:
            name = f["meta"]["pdf_name"][0]
        name = name.decode() if isinstance(name, bytes) else str(name)
        if c["method"] == "random":
            return acquisition_scores("random", n_objects=n, seed=c["seed"]), name, None
        if name != "mixmod" and c["method"] == "bald":
            raise ConfigError(f"stage {stage}: config 'method' = 'bald' needs each ensemble member's p(z): the "
                              f"mixmod output of PZEstimate; {pz} holds '{name}' p(z) (use method: entropy)")
        zgrid = np.linspace(c["zmin"], c["zmax"], c["nzbins"])
        n_members = None
        if name == "mixmod":
            ens = self._model(pz)
            n_members, k = ens.config.n_members, ens.config.n_components
        scores = np.empty(n)
        for start in tqdm(range(0, n, c["chunk_size"]), desc=f"{stage} scores", disable=None, leave=False):
            end = min(start + c["chunk_size"], n)
            rows = read_qp_rows(pz, start, end)
            try:
                if name == "mixmod":
                    data = rows.objdata
                    w, mu, s = data["weights"], data["means"], data["stds"]
                    if w.shape[1] != n_members * k:
                        raise ModelMismatchError(
                            f"{pz}: {w.shape[1]} mixture components per object, but the model "
                            f"{self.input_path('model')} has {n_members} members x {k} components")
                    entropies = ensemble_entropies(w, mu, s, n_members, zgrid)
                    scores[start:end] = acquisition_scores(c["method"], entropies=entropies)
                else:
                    scores[start:end] = grid_entropy(rows.pdf(zgrid), zgrid)
            except ModelMismatchError:
                raise
            except ValueError as err:
                raise CatalogError(f"{pz}: p(z) rows {start}:{end} (row numbers below count from {start}): "
                                   f"{err}") from err
        return scores, name, n_members

    def _features(self, pz: str, path: str, group: str, rows: np.ndarray) -> np.ndarray:
        """The model's photometry features (cleaned magnitudes and adjacent colours) of ``rows``
        (sorted) of the pool catalog, read chunk by chunk."""
        from calipers.core.features import photometry_features

        ens = self._model(pz)
        mag_cols, err_cols = band_columns(self.config, ens.bands)
        catalog.require_columns(path, group, mag_cols + err_cols)
        parts = []
        for start, end, data in catalog.iter_chunks(path, group, mag_cols + err_cols, self.config["chunk_size"]):
            take = rows[(rows >= start) & (rows < end)] - start
            if take.size:
                parts.append(photometry_features(stack(data, mag_cols)[take], stack(data, err_cols)[take],
                                                 ens.preprocessor))
        return np.vstack(parts)

    # ------------------------------------------------------------------ selection
    def process(self):
        from calipers.active.acquisition import select_batch
        from calipers.core.qpio import qp_size

        c, stage = self.config, self.instance_name
        pz, path, group = self.input_path("pz"), self.input_path("catalog"), c["hdf5_groupname"]
        n, have = catalog.catalog_info(path, group)
        costs, cost_col = self._costs(path, group, n)  # first: a bad cost stops the stage before any p(z) is read
        n_pz = qp_size(pz)
        if n_pz != n:
            raise CatalogError(f"{pz} holds {n_pz} p(z) but the pool catalog {path} (group '{group}') has {n} rows; "
                               "they must be the same objects in the same order")
        ids = self._ids(pz, path, group, have)
        scores, pdf_name, n_members = self._scores(pz, n)

        batch_size = c["batch_size"] or None
        budget = c["budget"] or None
        if batch_size is not None and batch_size > n:
            _bad_option(stage, c, "batch_size", f"is more than the {n} candidates in {path}")
        try:
            if c["batch"] == "kmeans":
                # only the rows k-means can pick are read for features: select_batch clusters the
                # pool_factor * batch_size rows of highest priority, and the same rows given alone
                # (in catalog order) give the same batch
                priority = scores / costs
                pool = np.sort(np.argsort(-priority, kind="stable")[:max(batch_size, c["pool_factor"] * batch_size)])
                features = self._features(pz, path, group, pool)
                sel = select_batch(scores[pool], batch_size, costs[pool], "kmeans", features, c["seed"],
                                   beta=c["beta"], budget=budget, pool_factor=c["pool_factor"])
                rows = pool[sel.rows]
            else:
                sel = select_batch(scores, batch_size, costs, c["batch"], seed=c["seed"], beta=c["beta"],
                                   budget=budget)
                rows = sel.rows
        except ValueError as err:
            raise ConfigError(f"stage {stage}: batch '{c['batch']}' with method '{c['method']}' on {pz}: "
                              f"{err}") from err
        if len(rows) == 0:
            raise ConfigError(f"stage {stage}: config 'budget' = {c['budget']!r} is below the cost of the cheapest "
                              f"candidate ({costs.min():.4g}, column '{cost_col}' of {path}): nothing can be selected")

        summary = {"n_candidates": n, "n_selected": len(rows), "total_cost": float(costs[rows].sum()),
                   "budget": budget, "batch_size": batch_size, "method": c["method"], "batch": c["batch"],
                   "cost_column": cost_col, "pdf_name": pdf_name, "n_members": n_members}
        with h5py.File(self.output_path("targets"), "w") as f:
            g = f.create_group(group) if group else f
            g.create_dataset("row", data=rows.astype(np.int64))
            if ids is not None:
                g.create_dataset("id", data=ids[rows])
            g.create_dataset("rank", data=np.asarray(sel.ranks, dtype=np.int64))
            g.create_dataset("score", data=scores[rows])
            g.create_dataset("cost", data=costs[rows])
            g.create_dataset("priority", data=scores[rows] / costs[rows])
            g.create_dataset("cumulative_cost", data=np.cumsum(costs[rows]))
            write_provenance_hdf5(f, self.provenance() | {"selection": json.dumps(summary, sort_keys=True)})
        log.info("%s: selected %d of %d candidates by %s (%s batches), total cost %.4g%s", stage, len(rows), n,
                 c["method"], c["batch"], summary["total_cost"], f" of budget {budget:g}" if budget else "")
