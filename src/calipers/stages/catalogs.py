"""Catalog plumbing stages."""
from __future__ import annotations

import logging

import numpy as np

from calipers.core import catalog
from calipers.core.errors import CatalogError, ConfigError
from calipers.core.file_types import HDF5Catalog
from calipers.core.stage import CalipersStage, Param

log = logging.getLogger(__name__)


def _column_dtypes(path: str, group: str, cols: list[str]) -> dict:
    with catalog.open_hdf5(path, "HDF5 catalog") as f:
        src = f[group] if group else f
        return {k: src[k].dtype for k in cols}


class CatalogSplit(CalipersStage):
    """Split a catalog at random (seeded) into two catalogs, streaming in chunks.

    Each row goes to ``part_a`` with probability ``fraction_a``, otherwise to ``part_b``; the
    assignment depends only on the seed and the row's chunk, so it is reproducible. Use it to
    hold out a calibration set: never take the first N rows of a sorted catalog.
    """

    name = "CatalogSplit"
    parallel = False
    inputs = [("catalog", HDF5Catalog)]
    outputs = [("part_a", HDF5Catalog), ("part_b", HDF5Catalog)]
    column_passthrough = {"part_a": "catalog", "part_b": "catalog"}  # for calipers check: same columns out as in
    config_options = CalipersStage.config_options | {
        "hdf5_groupname": Param(str, "photometry", msg="Group holding the columns (kept in both outputs)"),
        "fraction_a": Param(float, 0.5, msg="Probability that a row goes to part_a"),
        "chunk_size": Param(int, 1_000_000, msg="Rows per chunk"),
    }

    @classmethod
    def required_columns(cls, config):
        return {"catalog": (config["hdf5_groupname"], [])}

    def validate(self):
        if not 0 < self.config["fraction_a"] < 1:
            raise ConfigError(f"fraction_a must be in (0, 1), got {self.config['fraction_a']}")

    def process(self):
        c = self.config
        group = c["hdf5_groupname"]
        path = self.input_path("catalog")
        n, cols = catalog.catalog_info(path, group)
        if n == 0:
            raise CatalogError(f"{path}: group '{group}' has 0 rows; there is nothing to split")
        dtypes = _column_dtypes(path, group, cols)
        outs = {tag: catalog.growable_catalog(self.output_path(tag), group, dtypes, self.provenance())
                for tag in ("part_a", "part_b")}
        try:
            for i, (start, end, data) in enumerate(catalog.iter_chunks(path, group, cols, c["chunk_size"],
                                                                       numeric=False)):
                to_a = self.rng(i).random(end - start) < c["fraction_a"]
                catalog.append_rows(outs["part_a"][1], data, to_a)
                catalog.append_rows(outs["part_b"][1], data, ~to_a)
            sizes = {tag: g[cols[0]].shape[0] for tag, (_, g) in outs.items()}
        finally:
            for f, _ in outs.values():
                f.close()
        for tag, size in sizes.items():
            if size == 0:
                log.warning("%s: %s received no rows (of %d)", self.instance_name, tag, n)
        log.info("split %d rows of %s: %s", n, path, sizes)


class CatalogCut(CalipersStage):
    """Keep the rows whose ``column`` lies in [``min_value``, ``max_value``], streaming in chunks.

    A NaN in ``column`` lies in no range: such rows are dropped and their number (and the first
    one) logged as a warning."""

    name = "CatalogCut"
    parallel = False
    inputs = [("catalog", HDF5Catalog)]
    outputs = [("selected", HDF5Catalog)]
    column_passthrough = {"selected": "catalog"}
    config_options = CalipersStage.config_options | {
        "hdf5_groupname": Param(str, "photometry", msg="Group holding the columns"),
        "column": Param(str, "mag_i_lsst", msg="Column the cut is applied to"),
        "min_value": Param(float, float("-inf"), msg="Smallest value kept"),
        "max_value": Param(float, float("inf"), msg="Largest value kept"),
        "chunk_size": Param(int, 1_000_000, msg="Rows per chunk"),
    }

    @classmethod
    def required_columns(cls, config):
        return {"catalog": (config["hdf5_groupname"], [config["column"]])}

    def validate(self):
        if not self.config["min_value"] <= self.config["max_value"]:
            raise ConfigError(f"min_value ({self.config['min_value']}) must not exceed max_value "
                              f"({self.config['max_value']})")

    def process(self):
        c = self.config
        group, path = c["hdf5_groupname"], self.input_path("catalog")
        n, cols = catalog.catalog_info(path, group)
        if c["column"] not in cols:
            raise ConfigError(f"{path}: no column '{c['column']}' to cut on (columns: {sorted(cols)})")
        catalog.read_columns(path, group, [c["column"]], 0, 0)  # the cut column must be numeric and 1-d
        kept, n_nan, first_nan = 0, 0, None
        f, g = catalog.growable_catalog(self.output_path("selected"), group, _column_dtypes(path, group, cols),
                                 self.provenance())
        with f:
            for start, _, data in catalog.iter_chunks(path, group, cols, c["chunk_size"], numeric=False):
                v = data[c["column"]]
                nan = np.isnan(v) if v.dtype.kind == "f" else np.zeros(len(v), bool)
                if nan.any() and first_nan is None:
                    first_nan = start + int(np.flatnonzero(nan)[0])
                n_nan += int(nan.sum())
                keep = (v >= c["min_value"]) & (v <= c["max_value"])
                catalog.append_rows(g, data, keep)
                kept += int(keep.sum())
        if n_nan:
            log.warning("%s: dropped %d row(s) whose '%s' is NaN (first at row %d): a NaN is in no range",
                        path, n_nan, c["column"], first_nan)
        if kept == 0:
            raise ValueError(f"{path}: no row has {c['min_value']} <= {c['column']} <= {c['max_value']}"
                             + (f" ({n_nan} row(s) are NaN)" if n_nan else ""))
        log.info("kept %d of %d rows (%d NaN rows dropped)", kept, n, n_nan)
