"""Calibration stages: fit a calibrator on held-out p(z), apply it to any qp ensemble, streaming."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
from tqdm.auto import tqdm

from calipers.calibrate import PITRecalibrator
from calipers.core.errors import ConfigError
from calipers.core.file_types import HDF5Catalog, ModelDir, QPEnsembleFile
from calipers.core.qpio import QPChunkWriter, qp_size, read_qp_rows
from calipers.core.stage import CalipersStage, Param
from calipers.stages.validation import TRUTH_OPTIONS, read_truth
from calipers.validate.metrics import grid_pdfs, pit_values

log = logging.getLogger(__name__)

GRID_OPTIONS = {
    "zmin": Param(float, 0.0, msg="Start of the redshift grid the calibrated p(z) live on"),
    "zmax": Param(float, 3.0, msg="End of the redshift grid"),
    "nzbins": Param(int, 601, msg="Points in the redshift grid"),
    "chunk_size": Param(int, 20_000, msg="Distributions per chunk (memory scales with this)"),
}
METHODS = ("pit_global",)


def _grid(config) -> np.ndarray:
    return np.linspace(config["zmin"], config["zmax"], config["nzbins"])


class PZCalibrate(CalipersStage):
    """Fit a p(z) calibrator from held-out p(z) (any qp ensemble) and their true redshifts."""

    name = "PZCalibrate"
    parallel = False
    inputs = [("calibration_pz", QPEnsembleFile), ("calibration_truth", HDF5Catalog)]
    outputs = [("calibrator", ModelDir)]
    config_options = CalipersStage.config_options | GRID_OPTIONS | {
        "method": Param(str, "pit_global", msg="Calibration method: pit_global (PIT remapping)"),
        "n_knots": Param(int, 100, msg="PIT quantiles describing the remapping (fewer = smoother)"),
    } | TRUTH_OPTIONS

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
        cal = PITRecalibrator(n_knots=c["n_knots"]).fit(np.concatenate(pits))
        out = self.output_path("calibrator")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "calibrator.json"), "w") as fh:
            json.dump({"method": c["method"], "zgrid": [c["zmin"], c["zmax"], c["nzbins"]], **cal.to_dict()}, fh)
        with open(os.path.join(out, "provenance.json"), "w") as fh:
            json.dump(self.provenance() | {"n_calibration": str(n)}, fh, indent=2)
        log.info("fitted %s calibrator on %d galaxies", c["method"], n)


class PZApplyCalibration(CalipersStage):
    """Apply a fitted calibrator to a qp ensemble, chunk by chunk, writing gridded (interp) p(z)."""

    name = "PZApplyCalibration"
    parallel = False
    inputs = [("pz", QPEnsembleFile), ("calibrator", ModelDir)]
    outputs = [("calibrated_pz", QPEnsembleFile)]
    config_options = CalipersStage.config_options | {
        "chunk_size": Param(int, 20_000, msg="Distributions per chunk (memory scales with this)"),
    }

    def process(self):
        with open(os.path.join(self.input_path("calibrator"), "calibrator.json")) as fh:
            spec = json.load(fh)
        cal = PITRecalibrator.from_dict(spec)
        zmin, zmax, nz = spec["zgrid"]
        zgrid = np.linspace(zmin, zmax, int(nz))
        path = self.input_path("pz")
        n = qp_size(path)
        meta = {"pdf_name": np.array([b"interp"]), "pdf_version": np.array([0]), "xvals": zgrid[None, :]}
        first = read_qp_rows(path, 0, min(1, n))
        ancil_names = sorted(first.ancil) if first.ancil else []
        chunk = self.config["chunk_size"]
        with QPChunkWriter(self.output_path("calibrated_pz"), n, meta, {"yvals": (nz,)}, ancil_names,
                           provenance=self.provenance(), ancil_dtypes={"id": np.int64}) as out:
            for start in tqdm(range(0, n, chunk), desc=self.instance_name, leave=False):
                end = min(start + chunk, n)
                ens = read_qp_rows(path, start, end)
                pdfs, valid = grid_pdfs(ens, zgrid)
                new = np.full_like(pdfs, np.nan)  # invalid rows stay NaN: the gate counts them
                if valid.any():
                    new[valid] = cal.transform_pdfs(pdfs[valid], zgrid)
                out.write(start, end, {"yvals": new}, {k: ens.ancil[k] for k in ancil_names})
