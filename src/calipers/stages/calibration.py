"""Calibration stages: fit a calibrator on held-out p(z), apply it to any qp ensemble, streaming.

Methods (``PZCalibrate.method``):

- ``pit_global``: remap every CDF through the calibration set's PIT distribution;
- ``pit_local``: remap through P(PIT <= u | x), learned as a function of features x of each object
  (photometry: magnitudes and adjacent colours of ``bands``; or any ``feature_columns``), so
  calibration holds across feature space and over-dispersed regions are sharpened;
- ``conformal``: the split-conformal predictive distribution (uniform PIT for exchangeable data,
  up to the 1/(n+1) resolution of the calibration set and the grid).

A calibrator directory (:mod:`calipers.core.calibrators`) holds ``calibrator.json`` (method, grid,
parameters, feature definition, and ``fitted_on``: the model that produced the calibration p(z),
from their provenance) and, for ``pit_local``, ``weights.pt`` (torch state dicts, loaded with
``weights_only=True``). ``PZApplyCalibration`` refuses p(z) of another model (``on_model_mismatch``).

Rows are matched by position; when the p(z) ancil and the catalog both carry object ids
(``id_column``) they are compared and the first mismatching row is an error.

Covariate shift (``PZCalibrate.weight_column``): when the calibration objects are a biased
(e.g. spectroscopic) sample of the population the calibrated p(z) are for, a column of the
``calibration_truth`` catalog may hold each row's importance weight w(x) = p_target(x) /
p_labelled(x) (a ShiftWeights stage writes one, ``shift_weight``, into a copy of the labelled
catalog). Every method then fits on the importance-weighted calibration set (weighted PIT
quantiles, the weighted conformal predictive distribution of Tibshirani et al. 2019, the
importance-weighted local PIT likelihood; :mod:`calipers.calibrate`), so that calibration is
targeted on the target population. The weights are checked (finite, non-negative, not all
zero; errors name file, column and row), their Kish effective sample size must be at least
``min_ess_fraction`` of the rows, and they are scaled to mean 1. ``calibrator.json`` records
them under ``importance_weights`` (column, catalog, ESS, ESS fraction, the calibration set's
PIT summary unweighted and weighted) and ``provenance.json`` the column and ESS.
``PZApplyCalibration`` needs no test weights: a weighted conformal calibrator gives every object
the expected weight of a target object, sum w^2 / sum w over the calibration set.
"""
from __future__ import annotations

import json
import logging

import numpy as np
from tqdm.auto import tqdm

from calipers.calibrate import (
           ConformalPredictiveDistribution,
           LocalPITConfig,
           LocalPITRecalibrator,
           PITRecalibrator,
           WeightCollapseError,
           check_effective_sample_size,
)
from calipers.core import catalog
from calipers.core.calibrators import IMPORTANCE_WEIGHTS, METHODS, importance_weights_info, load_calibrator, save_calibrator
from calipers.core.errors import CatalogError, ConfigError, ModelMismatchError
from calipers.core.features import read_features, with_ancil_features
from calipers.core.file_types import HDF5Catalog, ModelDir, QPEnsembleFile
from calipers.core.options import CATALOG_OPTIONS, DEFAULT_BANDS, TRUTH_OPTIONS, band_columns, stack
from calipers.core.provenance import read_provenance, write_provenance_json
from calipers.core.qpio import qp_size, read_qp_rows
from calipers.core.stage import CalipersStage, Param
from calipers.photoz.mixture import POINT_ESTIMATES
from calipers.validate.metrics import grid_pdfs, grid_point_estimates, pit_summary, pit_values

log = logging.getLogger(__name__)

GRID_OPTIONS = {
    "zmin": Param(float, 0.0, msg="Start of the redshift grid the calibrated p(z) live on"),
    "zmax": Param(float, 3.0, msg="End of the redshift grid"),
    "nzbins": Param(int, 601, msg="Points in the redshift grid"),
    "chunk_size": Param(int, 20_000, msg="Distributions per chunk (memory scales with this)"),
}
FEATURE_OPTIONS = CATALOG_OPTIONS | {
    "bands": Param(list, DEFAULT_BANDS, msg="pit_local: bands whose magnitudes and adjacent colours are the features"),
    "feature_columns": Param(list, [], msg="pit_local: catalog columns used as features instead of the photometry"),
    "ancil_features": Param(list, [], msg="pit_local: ancil columns of the distributions' own file used as features "
                                          "too (e.g. a model's predicted width logg_std)"),
    "log_features": Param(list, [], msg="pit_local: features (catalog or ancil columns, all > 0) whose natural log is "
                                        "used, e.g. snr and logg_std"),
}


def _grid(config) -> np.ndarray:
    return np.linspace(config["zmin"], config["zmax"], config["nzbins"])


def _format_summary(summary: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in summary.items())


def source_model(pz_path: str) -> dict:
    """The model a qp file's p(z) came from, from its provenance: ``{"hash", "path", "stage"}``
    ({} when the file records none, e.g. p(z) written by another code)."""
    prov = read_provenance(pz_path)
    try:
        hashes = json.loads(prov.get("input_hashes", "{}"))
        inputs = json.loads(prov.get("inputs", "{}"))
    except json.JSONDecodeError:
        return {}
    if "model" not in hashes:
        return {}
    return {"hash": hashes["model"], "path": inputs.get("model", ""), "stage": prov.get("stage", "")}


class PZCalibrate(CalipersStage):
    """Fit a p(z) calibrator from held-out p(z) (any qp ensemble) and their true redshifts.

    The calibrator records the model that produced the p(z) (``fitted_on``, from the p(z)
    file's provenance). Every option is checked before anything is computed; an empty p(z) file
    or catalog is an error naming it.
    """

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
        "weight_column": Param(str, "", msg="Column of calibration_truth holding each row's importance weight "
                                            "p_target/p_labelled (e.g. shift_weight from ShiftWeights): calibrate "
                                            "for the target population ('' = unweighted)"),
        "min_ess_fraction": Param(float, 0.05, msg="weight_column: smallest effective sample size of the weights, "
                                                   "as a fraction of the calibration rows (below it: an error)"),
    } | FEATURE_OPTIONS | TRUTH_OPTIONS

    @classmethod
    def required_columns(cls, config):
        cols = [config["redshift_column"]]
        if config["weight_column"]:
            cols.append(config["weight_column"])
        if config["method"] == "pit_local":
            if config["feature_columns"]:
                cols += list(config["feature_columns"])
            else:
                mags, errs = band_columns(config, list(config["bands"]))
                cols += mags + errs
        return {"calibration_truth": (config["hdf5_groupname"], cols)}

    def validate(self):
        c = self.config
        if c["method"] not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {c['method']!r}")
        minimum = {"nzbins": 2, "chunk_size": 1, "n_knots": 2}
        if c["method"] == "pit_local":
            minimum |= {"n_members": 1, "n_components": 1, "hidden": 1, "max_epochs": 1, "patience": 1}
        for key, low in minimum.items():
            if c[key] < low:
                raise ConfigError(f"stage {self.instance_name}: {key} must be >= {low} (method {c['method']}), "
                                  f"got {c[key]}")
        if not c["zmax"] > c["zmin"]:
            raise ConfigError(f"stage {self.instance_name}: zmax ({c['zmax']}) must be larger than zmin ({c['zmin']})")
        if c["method"] == "pit_local" and not c["feature_columns"] and len(c["bands"]) < 1:
            raise ConfigError(f"stage {self.instance_name}: pit_local needs features: give bands or feature_columns")
        unknown = sorted(set(c["log_features"]) - set(c["feature_columns"]) - set(c["ancil_features"]))
        if unknown:
            raise ConfigError(f"stage {self.instance_name}: log_features {unknown} are neither feature_columns "
                              f"{c['feature_columns']} nor ancil_features {c['ancil_features']}")
        if not 0 <= c["min_ess_fraction"] <= 1:
            raise ConfigError(f"stage {self.instance_name}: min_ess_fraction must be in [0, 1], "
                              f"got {c['min_ess_fraction']}")
        if c["weight_column"] and c["weight_column"] == c["redshift_column"]:
            raise ConfigError(f"stage {self.instance_name}: weight_column and redshift_column are both "
                              f"'{c['weight_column']}'; the importance weights are a column of their own")

    def process(self):
        c = self.config
        pz_path, truth_path = self.input_path("calibration_pz"), self.input_path("calibration_truth")
        n = qp_size(pz_path)
        if n == 0:
            raise CatalogError(f"{pz_path}: holds no p(z) (0 rows); a calibrator needs a non-empty calibration set")
        z = catalog.read_truth(truth_path, c["hdf5_groupname"], c["redshift_column"], n, pz_path)
        weights, weight_record = None, None
        if c["weight_column"]:
            weights, weight_record = self._importance_weights(truth_path, pz_path, n)
        if catalog.check_matching_ids(pz_path, "ancil/id", truth_path, c["hdf5_groupname"], c["id_column"]):
            log.info("object ids of %s match %s row by row", pz_path, truth_path)
        zgrid = _grid(c)
        pit = np.empty(n)
        ancil_parts = []
        for start in range(0, n, c["chunk_size"]):
            end = min(start + c["chunk_size"], n)
            ens = read_qp_rows(pz_path, start, end)
            if c["method"] == "pit_local" and c["ancil_features"]:
                ancil_parts.append({k: np.asarray(ens.ancil[k]) for k in c["ancil_features"] if ens.ancil and k in ens.ancil})
            pdfs, valid = grid_pdfs(ens, zgrid)
            bad = np.flatnonzero(~(valid & np.isfinite(z[start:end])))
            if bad.size:
                raise ValueError(f"{pz_path}: p(z) or truth not finite in {bad.size} row(s), first at row {start + bad[0]}")
            pit[start:end] = pit_values(pdfs, zgrid, z[start:end])
        spec = {"method": c["method"], "zgrid": [c["zmin"], c["zmax"], c["nzbins"]], "n_calibration": n,
                "fitted_on": source_model(pz_path)}
        unweighted = pit_summary(pit)
        log.info("calibration-set PIT before calibration (unweighted): %s", _format_summary(unweighted))
        if weights is not None:
            weighted = pit_summary(pit, weights)
            log.info("calibration-set PIT before calibration (weighted by '%s', the target population): %s",
                     c["weight_column"], _format_summary(weighted))
            weight_record["pit_summary"] = {"unweighted": unweighted, "weighted": weighted}
            spec[IMPORTANCE_WEIGHTS] = weight_record
        states = None
        if c["method"] == "pit_global":
            spec |= PITRecalibrator(n_knots=c["n_knots"]).fit(pit, weights).to_dict()
        elif c["method"] == "conformal":
            spec |= ConformalPredictiveDistribution().fit(pit, weights).to_dict()
        else:
            spec["features"] = self._feature_spec()
            ancil = {k: np.concatenate([p[k] for p in ancil_parts]) for k in c["ancil_features"]
                     if ancil_parts and all(k in p for p in ancil_parts)}
            x = with_ancil_features(read_features(truth_path, spec["features"]), ancil, spec["features"], pz_path)
            cfg = LocalPITConfig(n_components=c["n_components"], hidden=c["hidden"], n_members=c["n_members"],
                                 max_epochs=c["max_epochs"], patience=c["patience"], seed=c["seed"])
            log.info("fitting the local PIT model on %d galaxies x %d features", n, x.shape[1])
            cal = LocalPITRecalibrator(cfg).fit(x, pit, progress=self.rank == 0, weights=weights)
            meta, states = cal.state()
            spec |= meta
        out = self.output_path("calibrator")
        save_calibrator(out, spec, states)
        prov = self.provenance() | {"n_calibration": str(n)}
        if weight_record is not None:
            prov |= {"weight_column": c["weight_column"], "weight_ess": f"{weight_record['ess']:.6g}",
                     "weight_ess_fraction": f"{weight_record['ess_fraction']:.6g}"}
        write_provenance_json(out, prov)
        if weight_record is None:
            log.info("fitted %s calibrator on %d galaxies", c["method"], n)
        else:
            log.info("fitted %s calibrator on %d galaxies importance-weighted by '%s' (effective sample size %.1f)",
                     c["method"], n, c["weight_column"], weight_record["ess"])

    def _importance_weights(self, truth_path: str, pz_path: str, n: int) -> tuple[np.ndarray, dict]:
        """The importance weights of the calibration rows (``weight_column`` of the truth catalog,
        the same rows as the redshifts), checked and scaled to mean 1, and their record for
        ``calibrator.json``.

        Raises
        ------
        CatalogError
            A weight that is not finite or negative (naming the file, column and first row), or
            weights all zero.
        WeightCollapseError
            An effective sample size below ``min_ess_fraction`` of the rows (naming the stage,
            the file and the rows holding the largest weights).
        """
        c = self.config
        column, group = c["weight_column"], c["hdf5_groupname"]
        raw = catalog.read_truth(truth_path, group, column, n, pz_path).astype(float)
        where = f"{truth_path}: importance-weight column '{column}' (group '{group}')"
        bad = np.flatnonzero(~np.isfinite(raw))
        if bad.size:
            raise CatalogError(f"{where} is not finite in {bad.size} row(s), first at row {bad[0]} ({raw[bad[0]]})")
        bad = np.flatnonzero(raw < 0)
        if bad.size:
            raise CatalogError(f"{where} is negative in {bad.size} row(s), first at row {bad[0]} ({raw[bad[0]]:g}); "
                               "importance weights p_target/p_labelled are >= 0")
        if not raw.sum() > 0:
            raise CatalogError(f"{where} is zero in every row: no calibration object resembles the target population")
        try:
            ess = check_effective_sample_size(raw, c["min_ess_fraction"], what="calibration rows")
        except WeightCollapseError as err:
            raise WeightCollapseError(f"stage {self.instance_name}: {where}: {err} (Or, knowing that calibration for "
                                      "the target then rests on a few objects, lower min_ess_fraction.)",
                                      err.ess, err.floor, err.rows) from err
        weights = raw / raw.mean()
        record = {"column": column, "catalog": truth_path, "n_rows": n, "n_zero": int(np.sum(raw == 0)),
                  "ess": ess, "ess_fraction": ess / n, "min_ess_fraction": c["min_ess_fraction"],
                  "max_weight": float(weights.max()), "scaled_to": "mean 1"}
        log.info("importance weights from %s: effective sample size %.1f of %d rows (fraction %.3f), largest "
                 "weight %.3g x the mean, %d row(s) of weight 0", where, ess, n, ess / n, record["max_weight"],
                 record["n_zero"])
        return weights, record

    def _feature_spec(self) -> dict:
        from calipers.photoz.preprocess import PhotometryPreprocessor

        c = self.config
        spec = {"hdf5_groupname": c["hdf5_groupname"], "feature_columns": list(c["feature_columns"]),
                "ancil_columns": list(c["ancil_features"]), "log_columns": list(c["log_features"])}
        if not spec["feature_columns"]:
            mags, errs = band_columns(c, list(c["bands"]))
            cols = catalog.read_columns(self.input_path("calibration_truth"), c["hdf5_groupname"], mags + errs)
            prep = PhotometryPreprocessor(list(c["bands"])).fit(stack(cols, mags), stack(cols, errs))
            spec |= {"mag_columns": mags, "err_columns": errs, "preprocessor": prep.to_dict()}
        return spec


class PZApplyCalibration(CalipersStage):
    """Apply a fitted calibrator to a qp ensemble, chunk by chunk, writing gridded (interp) p(z).

    ``catalog`` is the catalog the p(z) were estimated from (one row per distribution); the
    ``pit_local`` method reads its features from it, every method checks its length and, when
    both carry object ids, that they match row by row. The ancil is copied, except the columns named
    in ``drop_ancil`` (dropped: they describe the input distributions) and RAIL point
    estimates (zmode, zmean, zmedian, zlo68, zhi68), which are recomputed from the calibrated
    p(z); a row that could not be calibrated (invalid input p(z) or calibrated result) is NaN
    in the p(z) and in those point estimates - never the stale input values. p(z) from another
    model than the one the calibrator was fitted on are refused (``on_model_mismatch``).

    A calibrator fitted with importance weights (``PZCalibrate.weight_column``) needs no weights
    here: the PIT methods carry them in their fitted remapping, and the weighted conformal
    calibrator gives every object the expected weight of a target object (sum w^2 / sum w of the
    calibration weights; :mod:`calipers.calibrate.conformal`), an approximation to per-object
    test weights of order 1/n.
    """

    name = "PZApplyCalibration"
    parallel = True
    inputs = [("pz", QPEnsembleFile), ("calibrator", ModelDir), ("catalog", HDF5Catalog)]
    outputs = [("calibrated_pz", QPEnsembleFile)]
    config_options = CalipersStage.config_options | {
        "chunk_size": Param(int, 20_000, msg="Distributions per chunk (memory scales with this); MPI ranks share the chunks"),
        "hdf5_groupname": Param(str, "photometry", msg="Group of the catalog (row count check for global methods)"),
        "id_column": Param(str, "id", msg="Object-id column of the catalog compared with the p(z) ancil ids when "
                                          "both exist ('' = do not compare)"),
        "on_model_mismatch": Param(str, "error", msg="p(z) from another model than the calibrator was fitted on: "
                                                     "error, or warn and apply anyway"),
        "drop_ancil": Param(list, [], msg="Ancil columns that describe the input distributions (e.g. logg_mean, "
                                          "logg_std) and so are not copied to the calibrated ones"),
    }

    def validate(self):
        if self.config["on_model_mismatch"] not in ("error", "warn"):
            raise ConfigError(f"on_model_mismatch must be 'error' or 'warn', got {self.config['on_model_mismatch']!r}")
        if self.config["chunk_size"] < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {self.config['chunk_size']}")

    def _check_model(self, spec: dict, path: str) -> None:
        fitted = spec.get("fitted_on") or {}
        here = source_model(path)
        cal = self.input_path("calibrator")
        if not fitted.get("hash") or not here.get("hash"):
            if fitted.get("hash") and self.rank == 0:
                log.warning("%s records no model in its provenance: cannot check that calibrator %s (fitted on p(z) "
                            "of model %s) belongs to it", path, cal, fitted.get("path"))
            return
        if fitted["hash"] == here["hash"]:
            return
        msg = (f"{path} holds p(z) of model {here['path']} (sha256 {here['hash'][:12]}...), but calibrator {cal} "
               f"was fitted on p(z) of model {fitted['path']} (sha256 {fitted['hash'][:12]}...): a calibrator "
               "corrects one model's errors only")
        if self.config["on_model_mismatch"] == "error":
            raise ModelMismatchError(msg + "; set on_model_mismatch: warn to apply it anyway")
        if self.rank == 0:
            log.warning("%s (on_model_mismatch=warn: applying it anyway)", msg)

    def process(self):
        method, cal, spec = load_calibrator(self.input_path("calibrator"))
        weighted = importance_weights_info(spec)
        if weighted and self.rank == 0:
            log.info("calibrator %s was fitted with importance weights ('%s' of %s, effective sample size %.1f): "
                     "it targets calibration on that target population%s", self.input_path("calibrator"),
                     weighted["column"], weighted.get("catalog", "?"), weighted["ess"],
                     "; every object gets the expected target weight sum w^2 / sum w" if method == "conformal" else "")
        zmin, zmax, nz = spec["zgrid"]
        zgrid = np.linspace(zmin, zmax, int(nz))
        path = self.input_path("pz")
        n = qp_size(path)
        if n == 0:
            raise CatalogError(f"{path}: holds no p(z) (0 rows); nothing to calibrate")
        self._check_model(spec, path)
        cat = self.input_path("catalog")
        group = spec.get("features", {}).get("hdf5_groupname", self.config["hdf5_groupname"])
        n_cat, have = catalog.catalog_info(cat, group)
        if n_cat != n:
            raise ValueError(f"{path} holds {n} p(z) but the catalog {cat} has {n_cat} rows")
        id_col = self.config["id_column"] if self.config["id_column"] in have else ""
        meta = {"pdf_name": np.array([b"interp"]), "pdf_version": np.array([0]), "xvals": zgrid[None, :]}
        first = read_qp_rows(path, 0, 1)
        ancil_names = sorted(first.ancil) if first.ancil else []
        unknown = sorted(set(self.config["drop_ancil"]) - set(ancil_names))
        if unknown:
            raise ConfigError(f"stage {self.instance_name}: drop_ancil names {unknown}, which {path} does not carry "
                              f"(its ancil: {ancil_names})")
        ancil_names = [k for k in ancil_names if k not in self.config["drop_ancil"]]
        chunk = self.config["chunk_size"]
        ranges = catalog.chunk_ranges(n, chunk, self.rank, self.size)
        layout = dict(meta=meta, data_shapes={"yvals": (nz,)}, ancil_names=ancil_names, ancil_dtypes={"id": np.int64})
        with self.qp_output("calibrated_pz", n, chunk, **layout) as out:
            for start, end in tqdm(ranges, desc=self.instance_name, leave=False, disable=self.rank != 0):
                ens = read_qp_rows(path, start, end)
                if id_col and "id" in ancil_names:
                    ids = catalog.read_columns(cat, group, [id_col], start, end, numeric=False)[id_col]
                    catalog.compare_ids(ens.ancil["id"], ids, start, path, cat, id_col)
                pdfs, valid = grid_pdfs(ens, zgrid)
                new = np.full_like(pdfs, np.nan)  # invalid rows stay NaN: the gate counts them
                if valid.any():
                    if method == "pit_local":
                        feats = with_ancil_features(read_features(cat, spec["features"], start, end), ens.ancil,
                                                    spec["features"], path, start)
                        new[valid] = cal.transform_pdfs(pdfs[valid], zgrid, feats[valid])
                    else:
                        new[valid] = cal.transform_pdfs(pdfs[valid], zgrid)
                done = valid & np.all(np.isfinite(new), axis=1)
                new[~done] = np.nan
                new = new.astype(np.float32).astype(np.float64)  # the file stores float32: describe exactly that
                ancil = {k: ens.ancil[k] for k in ancil_names}
                # point estimates in the ancil describe the input p(z): recompute them from the calibrated
                # ones, and NaN them where there is no calibrated p(z) (never keep the stale input values)
                stale = [k for k in ancil_names if k in POINT_ESTIMATES]
                if stale:
                    fresh = grid_point_estimates(new[done], zgrid, stale) if done.any() else {}
                    for k in stale:
                        ancil[k] = np.full(len(done), np.nan)
                        if done.any():
                            ancil[k][done] = fresh[k]
                out.write(start, end, {"yvals": new}, ancil)
