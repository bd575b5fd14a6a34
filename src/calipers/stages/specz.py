"""Spectroscopic-selection stage: a biased, labelled training sample from a catalog with truth.

``SpecSelection`` keeps the rows of a catalog that a spectroscopic survey would have targeted and
measured a redshift for (:mod:`calipers.photoz.selection`): a magnitude limit, the colour boxes of
real surveys' targeting, and a redshift success that falls with magnitude, drawn with a seed.
"""
from __future__ import annotations

import json
import logging
import math

import h5py
import numpy as np
from tqdm.auto import tqdm

from calipers.core import catalog
from calipers.core.errors import CatalogError, ConfigError
from calipers.core.file_types import HDF5Catalog
from calipers.core.options import CATALOG_OPTIONS, DEFAULT_BANDS
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


# The two helpers below repeat calipers.stages.catalogs' (stage modules never import each other).
def _growable_catalog(path: str, group: str, dtypes: dict, provenance: dict):
    """Open a new HDF5 catalog whose columns grow as rows are appended: (file, group)."""
    f = h5py.File(path, "w")
    g = f.create_group(group) if group else f
    for k, dt in dtypes.items():
        g.create_dataset(k, shape=(0,), maxshape=(None,), dtype=dt, chunks=True)
    prov = f.create_group("provenance")
    for key, value in provenance.items():
        prov.attrs[key] = value
    return f, g


def _append_rows(g, data: dict, keep: np.ndarray) -> None:
    m = int(keep.sum())
    if m == 0:
        return
    for k, d in g.items():
        if isinstance(d, h5py.Dataset):
            d.resize((d.shape[0] + m,))
            d[-m:] = data[k][keep]


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
        f, g = _growable_catalog(self.output_path("selected_catalog"), group, dtypes, self.provenance())
        with f:
            chunks = catalog.iter_chunks(path, group, cols, c["chunk_size"], numeric=False)
            for start, _, data in tqdm(chunks, total=math.ceil(n / c["chunk_size"]), desc=self.instance_name,
                                       disable=None):
                try:
                    result = sel.select({b: data[col] for b, col in mag_cols.items()}, c["seed"], first_row=start,
                                        columns=labels)
                except ValueError as err:
                    raise CatalogError(f"{path} (group '{group}'): {err}") from err
                _append_rows(g, data, result.mask)
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
