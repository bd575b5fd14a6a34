"""Calibration stages: fit a calibrator on held-out p(z), apply it to any qp ensemble, streaming.

Methods (``PZCalibrate.method``):

- ``pit_global``: remap every CDF through the calibration set's PIT distribution;
- ``pit_local``: remap through P(PIT <= u | x), learned as a function of features x of each object
  (photometry: magnitudes and adjacent colours of ``bands``; or any ``feature_columns``), so
  calibration holds across feature space and over-dispersed regions are sharpened;
- ``conformal``: the split-conformal predictive distribution (exactly uniform PIT for
  exchangeable data, up to the 1/(n+1) resolution).

A calibrator directory holds ``calibrator.json`` (method, grid, parameters, feature definition)
and, for ``pit_local``, ``weights.pt`` (torch state dicts, loaded with ``weights_only=True``).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from calipers.calibrate import ConformalPredictiveDistribution, LocalPITConfig, LocalPITRecalibrator, PITRecalibrator
from calipers.core import catalog
from calipers.core.errors import ConfigError, ModelMismatchError
from calipers.core.file_types import HDF5Catalog, ModelDir, QPEnsembleFile
from calipers.core.qpio import qp_size, read_qp_rows
from calipers.core.stage import CalipersStage, Param
from calipers.photoz.preprocess import PhotometryPreprocessor
from calipers.stages.photoz import CATALOG_OPTIONS, DEFAULT_BANDS, band_columns, stack
from calipers.stages.validation import TRUTH_OPTIONS, read_truth
from calipers.photoz.mixture import POINT_ESTIMATES
from calipers.validate.metrics import grid_pdfs, grid_point_estimates, pit_values

log = logging.getLogger(__name__)

GRID_OPTIONS = {
    "zmin": Param(float, 0.0, msg="Start of the redshift grid the calibrated p(z) live on"),
    "zmax": Param(float, 3.0, msg="End of the redshift grid"),
    "nzbins": Param(int, 601, msg="Points in the redshift grid"),
    "chunk_size": Param(int, 20_000, msg="Distributions per chunk (memory scales with this)"),
}
METHODS = ("pit_global", "pit_local", "conformal")
FEATURE_OPTIONS = CATALOG_OPTIONS | {
    "bands": Param(list, DEFAULT_BANDS, msg="pit_local: bands whose magnitudes and adjacent colours are the features"),
    "feature_columns": Param(list, [], msg="pit_local: catalog columns used as features instead of the photometry"),
}


def read_features(path: str, spec: dict, start: int = 0, end: int | None = None) -> np.ndarray:
    """Feature matrix of catalog rows [start, end) for local calibration, as described by
    ``spec`` (saved in the calibrator): explicit columns, or cleaned magnitudes plus adjacent colours."""
    group = spec["hdf5_groupname"]
    if spec["feature_columns"]:
        cols = catalog.read_columns(path, group, spec["feature_columns"], start, end)
        x = stack(cols, spec["feature_columns"])
    else:
        mags, errs = spec["mag_columns"], spec["err_columns"]
        cols = catalog.read_columns(path, group, mags + errs, start, end)
        prep = PhotometryPreprocessor.from_dict(spec["preprocessor"])
        clean, _, _ = prep.transform(stack(cols, mags), stack(cols, errs))
        x = np.hstack([clean, clean[:, :-1] - clean[:, 1:]])
    bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if bad.size:
        raise ValueError(f"{path}: calibration features not finite in {bad.size} row(s), first at row {start + bad[0]}")
    return x


def _grid(config) -> np.ndarray:
    return np.linspace(config["zmin"], config["zmax"], config["nzbins"])


class PZCalibrate(CalipersStage):
    """Fit a p(z) calibrator from held-out p(z) (any qp ensemble) and their true redshifts."""

    name = "PZCalibrate"
    parallel = False
    inputs = [("calibration_pz", QPEnsembleFile), ("calibration_truth", HDF5Catalog)]
    outputs = [("calibrator", ModelDir)]
    config_options = CalipersStage.config_options | GRID_OPTIONS | {
        "method": Param(str, "pit_global", msg="Calibration method: pit_global, pit_local or conformal"),
        "n_knots": Param(int, 100, msg="pit_global: PIT quantiles describing the remapping (fewer = smoother)"),
        "n_components": Param(int, 5, msg="pit_local: Gaussians in the probit-PIT mixture"),
        "hidden": Param(int, 64, msg="pit_local: hidden-layer width"),
        "n_members": Param(int, 3, msg="pit_local: networks averaged (different seeds)"),
        "max_epochs": Param(int, 300, msg="pit_local: epoch cap"),
        "patience": Param(int, 20, msg="pit_local: early-stopping patience in epochs"),
    } | FEATURE_OPTIONS | TRUTH_OPTIONS

    @classmethod
    def required_columns(cls, config):
        cols = [config["redshift_column"]]
        if config["method"] == "pit_local":
            if config["feature_columns"]:
                cols += list(config["feature_columns"])
            else:
                mags, errs = band_columns(config, list(config["bands"]))
                cols += mags + errs
        return {"calibration_truth": (config["hdf5_groupname"], cols)}

    def validate(self):
        if self.config["method"] not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.config['method']!r}")

    def process(self):
        c = self.config
        pz_path = self.input_path("calibration_pz")
        n = qp_size(pz_path)
        z = read_truth(self, "calibration_truth", n, pz_path)
        zgrid = _grid(c)
        pits = []
        for start in range(0, n, c["chunk_size"]):
            end = min(start + c["chunk_size"], n)
            pdfs, valid = grid_pdfs(read_qp_rows(pz_path, start, end), zgrid)
            bad = np.flatnonzero(~(valid & np.isfinite(z[start:end])))
            if bad.size:
                raise ValueError(f"{pz_path}: p(z) or truth not finite in {bad.size} row(s), first at row {start + bad[0]}")
            pits.append(pit_values(pdfs, zgrid, z[start:end]))
        pit = np.concatenate(pits)
        spec = {"method": c["method"], "zgrid": [c["zmin"], c["zmax"], c["nzbins"]], "n_calibration": n}
        out = self.output_path("calibrator")
        os.makedirs(out, exist_ok=True)
        if c["method"] == "pit_global":
            spec |= PITRecalibrator(n_knots=c["n_knots"]).fit(pit).to_dict()
        elif c["method"] == "conformal":
            spec |= ConformalPredictiveDistribution().fit(pit).to_dict()
        else:
            spec["features"] = self._feature_spec()
            x = read_features(self.input_path("calibration_truth"), spec["features"])
            if len(x) != n:
                raise ValueError(f"{pz_path} holds {n} p(z) but {self.input_path('calibration_truth')} has {len(x)} rows")
            cfg = LocalPITConfig(n_components=c["n_components"], hidden=c["hidden"], n_members=c["n_members"],
                                 max_epochs=c["max_epochs"], patience=c["patience"], seed=c["seed"])
            log.info("fitting the local PIT model on %d galaxies x %d features", n, x.shape[1])
            cal = LocalPITRecalibrator(cfg).fit(x, pit, progress=self.rank == 0)
            meta, states = cal.state()
            spec |= meta
            torch.save(states, os.path.join(out, "weights.pt"))
        with open(os.path.join(out, "calibrator.json"), "w") as fh:
            json.dump(spec, fh)
        with open(os.path.join(out, "provenance.json"), "w") as fh:
            json.dump(self.provenance() | {"n_calibration": str(n)}, fh, indent=2)
        log.info("fitted %s calibrator on %d galaxies", c["method"], n)

    def _feature_spec(self) -> dict:
        c = self.config
        spec = {"hdf5_groupname": c["hdf5_groupname"], "feature_columns": list(c["feature_columns"])}
        if not spec["feature_columns"]:
            mags, errs = band_columns(c, list(c["bands"]))
            cols = catalog.read_columns(self.input_path("calibration_truth"), c["hdf5_groupname"], mags + errs)
            prep = PhotometryPreprocessor(list(c["bands"])).fit(stack(cols, mags), stack(cols, errs))
            spec |= {"mag_columns": mags, "err_columns": errs, "preprocessor": prep.to_dict()}
        return spec


def load_calibrator(directory: str):
    """(method, calibrator object, spec) from a calibrator directory, without executing code."""
    path = os.path.join(directory, "calibrator.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: not a calibrator directory (no calibrator.json)")
    with open(path) as fh:
        spec = json.load(fh)
    method = spec.get("method")
    if method == "pit_global":
        return method, PITRecalibrator.from_dict(spec), spec
    if method == "conformal":
        return method, ConformalPredictiveDistribution.from_dict(spec), spec
    if method == "pit_local":
        states = torch.load(os.path.join(directory, "weights.pt"), map_location="cpu", weights_only=True)
        return method, LocalPITRecalibrator.from_state(spec, states), spec
    raise ModelMismatchError(f"{path}: unknown calibration method {method!r}; expected one of {METHODS}")


class PZApplyCalibration(CalipersStage):
    """Apply a fitted calibrator to a qp ensemble, chunk by chunk, writing gridded (interp) p(z).

    ``catalog`` is the catalog the p(z) were estimated from (one row per distribution); the
    ``pit_local`` method reads its features from it, every method checks its length. The ancil
    is copied, except RAIL point estimates (zmode, zmean, zmedian, zlo68, zhi68), which are
    recomputed from the calibrated p(z).
    """

    name = "PZApplyCalibration"
    parallel = True
    inputs = [("pz", QPEnsembleFile), ("calibrator", ModelDir), ("catalog", HDF5Catalog)]
    outputs = [("calibrated_pz", QPEnsembleFile)]
    config_options = CalipersStage.config_options | {
        "chunk_size": Param(int, 20_000, msg="Distributions per chunk (memory scales with this); MPI ranks share the chunks"),
        "hdf5_groupname": Param(str, "photometry", msg="Group of the catalog (row count check for global methods)"),
    }

    def process(self):
        method, cal, spec = load_calibrator(self.input_path("calibrator"))
        zmin, zmax, nz = spec["zgrid"]
        zgrid = np.linspace(zmin, zmax, int(nz))
        path = self.input_path("pz")
        n = qp_size(path)
        cat = self.input_path("catalog")
        group = spec.get("features", {}).get("hdf5_groupname", self.config["hdf5_groupname"])
        n_cat = catalog.catalog_info(cat, group)[0]
        if n_cat != n:
            raise ValueError(f"{path} holds {n} p(z) but the catalog {cat} has {n_cat} rows")
        meta = {"pdf_name": np.array([b"interp"]), "pdf_version": np.array([0]), "xvals": zgrid[None, :]}
        first = read_qp_rows(path, 0, min(1, n))
        ancil_names = sorted(first.ancil) if first.ancil else []
        chunk = self.config["chunk_size"]
        ranges = catalog.chunk_ranges(n, chunk, self.rank, self.size)
        layout = dict(meta=meta, data_shapes={"yvals": (nz,)}, ancil_names=ancil_names, ancil_dtypes={"id": np.int64})
        with self.qp_output("calibrated_pz", n, chunk, **layout) as out:
            for start, end in tqdm(ranges, desc=self.instance_name, leave=False, disable=self.rank != 0):
                ens = read_qp_rows(path, start, end)
                pdfs, valid = grid_pdfs(ens, zgrid)
                new = np.full_like(pdfs, np.nan)  # invalid rows stay NaN: the gate counts them
                if valid.any():
                    if method == "pit_local":
                        feats = read_features(cat, spec["features"], start, end)
                        new[valid] = cal.transform_pdfs(pdfs[valid], zgrid, feats[valid])
                    else:
                        new[valid] = cal.transform_pdfs(pdfs[valid], zgrid)
                ancil = {k: ens.ancil[k] for k in ancil_names}
                # point estimates in the ancil describe the input p(z): recompute them from the calibrated ones
                stale = [k for k in ancil_names if k in POINT_ESTIMATES]
                if stale and valid.any():
                    fresh = grid_point_estimates(new[valid], zgrid, stale)
                    for k in stale:
                        ancil[k] = np.full(len(valid), np.nan)
                        ancil[k][valid] = fresh[k]
                out.write(start, end, {"yvals": new}, ancil)
