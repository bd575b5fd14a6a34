"""Photo-z stages: ``PZInform`` (catalog -> model) and ``PZEstimate`` (model + catalog -> qp)."""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
from tqdm.auto import tqdm

from calipers.core import catalog
from calipers.core.errors import ConfigError, ModelMismatchError
from calipers.core.file_types import HDF5Catalog, ModelDir, QPEnsembleFile
from calipers.core.models import check_model_bands, load_model, save_model
from calipers.core.options import CATALOG_OPTIONS, DEFAULT_BANDS, band_columns, stack
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
    }

    @classmethod
    def required_columns(cls, config):
        mags, errs = band_columns(config, list(config["bands"]))
        return {"training_catalog": (config["hdf5_groupname"], mags + errs + [config["redshift_column"]])}

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
        catalog.require_columns(self.input_path("training_catalog"), self.config["hdf5_groupname"],
                                mags + errs + [self.config["redshift_column"]])

    def process(self):
        c = self.config
        bands = list(c["bands"])
        mag_cols, err_cols = band_columns(c, bands)
        path = self.input_path("training_catalog")
        cols = catalog.read_columns(path, c["hdf5_groupname"], mag_cols + err_cols + [c["redshift_column"]])
        z = np.asarray(cols[c["redshift_column"]], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(z))
        if bad.size:
            raise ValueError(f"{path}: column '{c['redshift_column']}' is not finite in {bad.size} row(s), first at row {bad[0]}")
        mags, errs = stack(cols, mag_cols), stack(cols, err_cols)
        cfg = self._ensemble_config()
        ens = DeepEnsemble(cfg)
        mine = list(range(self.rank, cfg.n_members, self.size))
        log.info("rank %d: training members %s of a %d-member MDN ensemble on %d galaxies from %s",
                 self.rank, mine, cfg.n_members, len(z), path)
        t0 = time.time()
        prov = self.provenance()  # collective under MPI
        ens.fit(mags, errs, z, bands=bands, device=self.torch_device(), members=mine, progress=self.rank == 0)
        if self.size > 1:
            states = self.merge_on_root(ens.member_states(), lambda a, b: a | b)
            if self.rank != 0:
                return
            ens.adopt_members(states)
        nd = ens.preprocessor.count_nondetections(mags, errs)
        log.info("non-detections per band in the training catalog: %s", nd)
        out = self.output_path("model")
        os.makedirs(out, exist_ok=True)
        save_model(out, ens)
        write_provenance_json(out, prov | {"train_seconds": f"{time.time() - t0:.1f}", "n_train": str(len(z)),
                                           "mpi_ranks": str(self.size), "nondetections": json.dumps(nd)})


class PZEstimate(CalipersStage):
    """Apply a photo-z model to a catalog, chunk by chunk, writing a qp ensemble.

    The ensemble's ancil holds RAIL-style point estimates ``zmode``, ``zmean``, ``zmedian`` and
    the central 68% interval ``zlo68``/``zhi68``, plus the object ids when present.
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
        "nzbins": Param(int, 301, msg="Grid points for output_format=interp"),
    }

    @classmethod
    def required_columns(cls, config):
        bands = list(config["bands"])  # empty: the model's bands, known only once it exists
        mags, errs = band_columns(config, bands) if bands else ([], [])
        return {"catalog": (config["hdf5_groupname"], mags + errs)}

    def _model(self) -> DeepEnsemble:
        if not hasattr(self, "_ens"):
            self._ens = load_model(self.input_path("model"))
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
        ancil = which + (["id"] if id_col else [])
        if c["output_format"] == "mixmod":
            meta = {"pdf_name": np.array([b"mixmod"]), "pdf_version": np.array([0])}
            shapes = {"weights": (ncomp,), "means": (ncomp,), "stds": (ncomp,)}
        else:
            zgrid = np.linspace(c["zmin"], c["zmax"], c["nzbins"])
            meta = {"pdf_name": np.array([b"interp"]), "pdf_version": np.array([0]), "xvals": zgrid[None, :]}
            shapes = {"yvals": (len(zgrid),)}
        ranges = catalog.chunk_ranges(n, c["chunk_size"], self.rank, self.size)
        # background writes: chunk i is written while chunk i + 1 is estimated
        layout = dict(meta=meta, data_shapes=shapes, ancil_names=ancil, ancil_dtypes={"id": np.int64}, background=True)
        t0 = time.time()
        with self.qp_output("pz", n, c["chunk_size"], **layout) as out:
            chunks = self.iter_catalog("catalog", group, read_cols, c["chunk_size"])
            prep = ens.preprocessor
            flagged = {"non-detections": np.zeros(len(mag_cols), np.int64),
                       "replaced errors": np.zeros(len(mag_cols), np.int64)}
            for start, end, cols in tqdm(chunks, total=len(ranges), desc=f"{self.instance_name} chunks",
                                         disable=self.rank != 0, leave=False):
                mags, errs = stack(cols, mag_cols), stack(cols, err_cols)
                flagged["non-detections"] += list(prep.count_nondetections(mags, errs).values())
                flagged["replaced errors"] += list(prep.count_missing_errors(mags, errs).values())
                (w, mu, s), est = ens.estimate(mags, errs, which)
                if id_col:
                    est["id"] = cols[id_col]
                if c["output_format"] == "mixmod":
                    data = {"weights": w, "means": mu, "stds": s}
                else:
                    p = mixture_pdf(w, mu, s, zgrid)
                    data = {"yvals": p / np.trapezoid(p, zgrid, axis=1)[:, None]}
                out.write(start, end, data, est)
        dt = time.time() - t0
        flagged = self.merge_on_root(flagged, lambda a, b: {k: a[k] + b[k] for k in a})
        if self.rank == 0:
            for what, counts in flagged.items():
                log.info("%s per band in %s: %s", what, path, dict(zip(prep.bands, counts.tolist())))
            log.info("estimated p(z) for %d galaxies in %.1f s (%.0f galaxies/s)", n, dt, n / max(dt, 1e-9))
