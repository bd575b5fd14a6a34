"""Photo-z stages: ``PZInform`` (catalog -> model) and ``PZEstimate`` (model + catalog -> qp)."""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from calipers.core import catalog
from calipers.core.errors import ConfigError, ModelMismatchError
from calipers.core.file_types import HDF5Catalog, ModelDir, QPEnsembleFile
from calipers.core.features import photometry_features
from calipers.core.model_card import training_card
from calipers.core.models import check_model_bands, load_model_and_support, save_model
from calipers.core.options import CATALOG_OPTIONS, DEFAULT_BANDS, band_columns, model_catalog_columns, stack
from calipers.core.provenance import write_provenance_json
from calipers.core.stage import CalipersStage, Param
from calipers.photoz import DeepEnsemble, EnsembleConfig, mixture_pdf
from calipers.photoz.mixture import POINT_ESTIMATES

log = logging.getLogger(__name__)


class PZInform(CalipersStage):
    """Train a deep ensemble of mixture density networks on a catalog with true redshifts."""

    name = "PZInform"
    parallel = True  # under MPI, members are shared out over the ranks (rank r on GPU r mod n_gpus)
    inputs = [("training_catalog", HDF5Catalog)]
    outputs = [("model", ModelDir)]
    config_options = CalipersStage.config_options | CATALOG_OPTIONS | {
        "bands": Param(list, DEFAULT_BANDS, msg="Bands to use, in wavelength order"),
        "redshift_column": Param(str, "redshift", msg="Column of true (spectroscopic) redshifts"),
        "device": Param(str, "auto", msg="Torch device: auto (GPU if present), cpu, cuda, cuda:N"),
        "n_members": Param(int, 5, msg="Deep-ensemble members (different seeds and validation splits)"),
        "n_components": Param(int, 10, msg="Gaussian components per member"),
        "hidden": Param(int, 128, msg="Hidden-layer width"),
        "n_layers": Param(int, 3, msg="Number of hidden layers"),
        "activation": Param(str, "silu", msg="Hidden-layer non-linearity: silu, relu, gelu or tanh"),
        "colours": Param(str, "all", msg="Colour features: all band pairs, or adjacent bands only"),
        "learning_rate": Param(float, 1e-3, msg="AdamW learning rate"),
        "weight_decay": Param(float, 1e-4, msg="AdamW weight decay"),
        "batch_size": Param(int, 256, msg="Mini-batch size"),
        "max_epochs": Param(int, 500, msg="Upper limit on epochs per member"),
        "patience": Param(int, 40, msg="Early stopping: epochs without validation improvement"),
        "lr_patience": Param(int, 10, msg="Halve the learning rate after this many epochs without improvement"),
        "cde_weight": Param(float, 0.0, msg="Add this multiple of the CDE loss to the NLL training objective"),
        "crps_weight": Param(float, 0.0, msg="Add this multiple of the CRPS to the NLL training objective"),
        "val_fraction": Param(float, 0.1, msg="Fraction of rows held out for early stopping (per member)"),
        "augment": Param(bool, False, msg="Redraw magnitudes within their errors at each epoch"),
        "band_dropout": Param(float, 0.03, msg="Probability per band and row that training treats a detected "
                                               "magnitude as a non-detection (0 = off)"),
        "z_range": Param(list, [], msg="[zmin, zmax] every component mean is clamped into; [] = the training "
                                       "redshift range"),
        "ema": Param(float, 0.999, msg="Decay of the weight moving average that is validated and kept (0 = off)"),
        "weight_column": Param(str, "", msg="Column of importance weights of the training rows (e.g. shift_weight "
                                            "from ShiftWeights); '' = unweighted"),
        "support_neighbors": Param(int, 10, msg="k of the kNN support region stored with the model (0 = none)"),
        "support_level": Param(float, 0.99, msg="Share of training-like galaxies inside the support region"),
    }

    @classmethod
    def required_columns(cls, config):
        mags, errs = band_columns(config, list(config["bands"]))
        extra = [config["weight_column"]] if config["weight_column"] else []
        return {"training_catalog": (config["hdf5_groupname"], mags + errs + [config["redshift_column"]] + extra)}

    def _ensemble_config(self) -> EnsembleConfig:
        c = self.config
        z_range = list(c["z_range"])
        if z_range and len(z_range) != 2:
            raise ConfigError(f"stage {self.instance_name}: z_range must be [zmin, zmax] or [], got {z_range}")
        fields = {k: c[k] for k in EnsembleConfig.__dataclass_fields__ if k in c and k not in ("zmin", "zmax")}
        try:
            cfg = EnsembleConfig(**fields, **(dict(zip(("zmin", "zmax"), map(float, z_range))) if z_range else {}))
            cfg.validate()
        except ValueError as err:
            raise ConfigError(f"stage {self.instance_name}: {err}") from err
        return cfg

    def validate(self):
        self._ensemble_config()
        bands = list(self.config["bands"])
        mags, errs = band_columns(self.config, bands)
        weights = [self.config["weight_column"]] if self.config["weight_column"] else []
        catalog.require_columns(self.input_path("training_catalog"), self.config["hdf5_groupname"],
                                mags + errs + [self.config["redshift_column"]] + weights)
        if self.config["support_neighbors"] < 0 or not 0 < self.config["support_level"] < 1:
            raise ConfigError(f"stage {self.instance_name}: need support_neighbors >= 0 and 0 < support_level < 1, "
                              f"got {self.config['support_neighbors']} and {self.config['support_level']}")

    def _weights(self, cols: dict, path: str):
        column = self.config["weight_column"]
        if not column:
            return None
        w = np.asarray(cols[column], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise ValueError(f"{path}: column '{column}' (training weights) must be finite and >= 0; {bad.size} "
                             f"row(s) are not, first at row {bad[0]} ({w[bad[0]]})")
        if not w.sum() > 0:
            raise ValueError(f"{path}: column '{column}' (training weights) is 0 in every row")
        return w

    def process(self):
        c = self.config
        bands = list(c["bands"])
        mag_cols, err_cols = band_columns(c, bands)
        path = self.input_path("training_catalog")
        extra = [c["weight_column"]] if c["weight_column"] else []
        cols = catalog.read_columns(path, c["hdf5_groupname"], mag_cols + err_cols + [c["redshift_column"]] + extra)
        z = np.asarray(cols[c["redshift_column"]], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(z))
        if bad.size:
            raise ValueError(f"{path}: column '{c['redshift_column']}' is not finite in {bad.size} row(s), first at row {bad[0]}")
        weights = self._weights(cols, path)
        mags, errs = stack(cols, mag_cols), stack(cols, err_cols)
        cfg = self._ensemble_config()
        ens = DeepEnsemble(cfg)
        mine = list(range(self.rank, cfg.n_members, self.size))
        log.info("rank %d: training members %s of a %d-member MDN ensemble on %d galaxies from %s",
                 self.rank, mine, cfg.n_members, len(z), path)
        t0 = time.time()
        prov = self.provenance()  # collective under MPI
        ens.fit(mags, errs, z, bands=bands, device=self.torch_device(), members=mine, progress=self.rank == 0,
                weights=weights)
        if self.size > 1:
            states = self.merge_on_root(ens.member_states(), lambda a, b: a | b)
            if self.rank != 0:
                return
            ens.adopt_members(states)
        train_seconds = time.time() - t0
        nd = ens.preprocessor.count_nondetections(mags, errs)
        log.info("non-detections per band in the training catalog: %s", nd)
        support = None
        if c["support_neighbors"] > 0:
            from calipers.validate.support import KNNSupport

            support = KNNSupport(c["support_neighbors"], c["support_level"]).fit(
                photometry_features(mags, errs, ens.preprocessor))
            log.info("support region: %d-NN distance threshold %.3f at level %.2f", c["support_neighbors"],
                     support.threshold, c["support_level"])
        card = training_card(path, c["hdf5_groupname"], prov, mags, errs, z, weights, ens, support,
                             train_seconds, c["weight_column"])
        out = self.output_path("model")
        os.makedirs(out, exist_ok=True)
        save_model(out, ens, support=support, card=card)
        write_provenance_json(out, prov | {"train_seconds": f"{train_seconds:.1f}", "n_train": str(len(z)),
                                           "mpi_ranks": str(self.size), "nondetections": json.dumps(nd)})


class PZEstimate(CalipersStage):
    """Apply a photo-z model to a catalog, chunk by chunk, writing a qp ensemble.

    The ensemble's ancil holds RAIL-style point estimates ``zmode``, ``zmean``, ``zmedian`` and
    the central 68% interval ``zlo68``/``zhi68``, plus the object ids when present, and per-galaxy
    support flags: ``support_score`` (mean distance to the k nearest training galaxies in
    standardised magnitudes and colours) and ``ood`` (1 outside the training sample's support at
    the model's level), from the support region ``PZInform`` stores with the model; with
    ``epistemic``, also the ensemble p(z)'s ``entropy`` and the ``mutual_information`` between
    member and redshift (the epistemic term), exact on the zmin..zmax grid.
    """

    name = "PZEstimate"
    parallel = True
    inputs = [("model", ModelDir), ("catalog", HDF5Catalog)]
    outputs = [("pz", QPEnsembleFile)]
    config_options = CalipersStage.config_options | CATALOG_OPTIONS | {
        "bands": Param(list, [], msg="Bands expected by the model; empty = take them from the model"),
        "id_column": Param(str, "id", msg="Object-id column copied to the output ancil ('' to skip; skipped if absent)"),
        "chunk_size": Param(int, 100_000, msg="Rows per chunk; memory use scales with this, not the catalog"),
        "point_estimates": Param(list, list(POINT_ESTIMATES),
                                 msg="Point estimates stored in the ancil (subset of zmode, zmean, zmedian, zlo68, zhi68)"),
        "output_format": Param(str, "mixmod", msg="qp parameterization: mixmod (exact) or interp (on the z grid)"),
        "zmin": Param(float, 0.0, msg="Grid start for output_format=interp"),
        "zmax": Param(float, 3.0, msg="Grid end for output_format=interp"),
        "nzbins": Param(int, 301, msg="Grid points for output_format=interp (and the entropy grid)"),
        "support_flags": Param(bool, True, msg="Write support_score and ood (outside the training sample's support) "
                                               "to the ancil, when the model stores a support region"),
        "epistemic": Param(bool, False, msg="Write the ensemble's entropy and mutual information between member and "
                                            "z (exact on the zmin..zmax grid) to the ancil"),
    }

    @classmethod
    def required_columns(cls, config):
        return model_catalog_columns(config)

    def _model(self) -> DeepEnsemble:
        if not hasattr(self, "_ens"):
            self._ens, self._support, _ = load_model_and_support(self.input_path("model"))
        return self._ens

    def _columns(self):
        ens = self._model()
        bands = list(self.config["bands"]) or ens.bands
        check_model_bands(ens, bands, source=f"stage {self.instance_name} config 'bands'",
                          directory=self.input_path("model"))
        return band_columns(self.config, bands)

    def validate(self):
        if self.config["output_format"] not in ("mixmod", "interp"):
            raise ConfigError(f"output_format must be 'mixmod' or 'interp', got {self.config['output_format']!r}")
        unknown = set(self.config["point_estimates"]) - set(POINT_ESTIMATES)
        if unknown:
            raise ConfigError(f"point_estimates: unknown {sorted(unknown)}; choose from {list(POINT_ESTIMATES)}")
        if self.config["chunk_size"] < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {self.config['chunk_size']}")
        mags, errs = self._columns()
        path = self.input_path("catalog")
        _, have = catalog.catalog_info(path, self.config["hdf5_groupname"])  # missing file/group errors pass through
        missing = [c for c in mags + errs if c not in have]
        if missing:
            raise ModelMismatchError(
                f"{path}: group '{self.config['hdf5_groupname']}' is missing column(s) {missing}; the model "
                f"{self.input_path('model')} needs bands {self._model().bands} (it has {sorted(have)})")

    def process(self):  # ceci's execute() has already called validate()
        c = self.config
        ens = self._model()
        mag_cols, err_cols = self._columns()
        path = self.input_path("catalog")
        group = c["hdf5_groupname"]
        n, have = catalog.catalog_info(path, group)
        id_col = c["id_column"] if c["id_column"] and c["id_column"] in have else ""
        read_cols = mag_cols + err_cols + ([id_col] if id_col else [])
        ncomp = ens.config.n_members * ens.config.n_components
        which = [p for p in POINT_ESTIMATES if p in self.config["point_estimates"]]
        from calipers.validate.support import ensemble_entropies

        support = self._support if c["support_flags"] else None
        if c["support_flags"] and self._support is None and self.rank == 0:
            log.warning("%s stores no support region (trained before calipers kept one): no ood flags; retrain "
                        "to get them", self.input_path("model"))
        flags = ["support_score", "ood"] if support is not None else []
        flags += ["entropy", "mutual_information"] if c["epistemic"] else []
        zgrid_e = np.linspace(c["zmin"], c["zmax"], c["nzbins"])
        ancil = which + flags + (["id"] if id_col else [])
        if c["output_format"] == "mixmod":
            meta = {"pdf_name": np.array([b"mixmod"]), "pdf_version": np.array([0])}
            shapes = {"weights": (ncomp,), "means": (ncomp,), "stds": (ncomp,)}
        else:
            zgrid = np.linspace(c["zmin"], c["zmax"], c["nzbins"])
            meta = {"pdf_name": np.array([b"interp"]), "pdf_version": np.array([0]), "xvals": zgrid[None, :]}
            shapes = {"yvals": (len(zgrid),)}
        ranges = catalog.chunk_ranges(n, c["chunk_size"], self.rank, self.size)
        # background writes: chunk i is written while chunk i + 1 is estimated
        layout = dict(meta=meta, data_shapes=shapes, ancil_names=ancil, ancil_dtypes={"id": np.int64, "ood": np.int8},
                      background=True)
        t0 = time.time()
        with self.qp_output("pz", n, c["chunk_size"], **layout) as out:
            chunks = self.iter_catalog("catalog", group, read_cols, c["chunk_size"])
            prep = ens.preprocessor
            n_ood = 0
            flagged = {"non-detections": np.zeros(len(mag_cols), np.int64),
                       "replaced errors": np.zeros(len(mag_cols), np.int64)}
            for start, end, cols in tqdm(chunks, total=len(ranges), desc=f"{self.instance_name} chunks",
                                         disable=self.rank != 0, leave=False):
                mags, errs = stack(cols, mag_cols), stack(cols, err_cols)
                flagged["non-detections"] += list(prep.count_nondetections(mags, errs).values())
                flagged["replaced errors"] += list(prep.count_missing_errors(mags, errs).values())
                (w, mu, s), est = ens.estimate(mags, errs, which)
                if support is not None:
                    flag = support.flags(photometry_features(mags, errs, prep), workers=torch.get_num_threads())
                    est["support_score"], est["ood"] = flag["support_score"], flag["ood"].astype(np.int8)
                    n_ood += int(flag["ood"].sum())
                if c["epistemic"]:
                    ent = ensemble_entropies(w, mu, s, ens.config.n_members, zgrid_e)
                    est["entropy"], est["mutual_information"] = ent.total, ent.epistemic
                if id_col:
                    est["id"] = cols[id_col]
                if c["output_format"] == "mixmod":
                    data = {"weights": w, "means": mu, "stds": s}
                else:
                    p = mixture_pdf(w, mu, s, zgrid)
                    data = {"yvals": p / np.trapezoid(p, zgrid, axis=1)[:, None]}
                out.write(start, end, data, est)
        dt = time.time() - t0
        flagged = self.merge_on_root(flagged | {"ood": n_ood}, lambda a, b: {k: a[k] + b[k] for k in a})
        if self.rank == 0:
            if support is not None:
                log.info("%d of %d galaxies (%.2f%%) are outside the training sample's support (ood)", flagged["ood"],
                         n, 100 * flagged["ood"] / max(n, 1))
            flagged.pop("ood")
            for what, counts in flagged.items():
                log.info("%s per band in %s: %s", what, path, dict(zip(prep.bands, counts.tolist())))
            log.info("estimated p(z) for %d galaxies in %.1f s (%.0f galaxies/s)", n, dt, n / max(dt, 1e-9))
