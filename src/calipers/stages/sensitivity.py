"""Sensitivity gate: how far a photo-z model's estimates move when the photometry moves within its
errors and by small zero-point offsets (issue 17, item 7)."""
from __future__ import annotations

import logging
import os

import numpy as np

from calipers.core import catalog
from calipers.core.errors import CatalogError, ConfigError
from calipers.core.file_types import HDF5Catalog, ModelDir, ReportDir
from calipers.core.gate_stage import GateStage
from calipers.core.models import check_model_bands, load_model
from calipers.core.options import CATALOG_OPTIONS, GATE_OPTIONS, band_columns, model_catalog_columns, stack
from calipers.core.stage import CalipersStage, Param

log = logging.getLogger(__name__)


class SensitivityGate(GateStage):
    """Perturb a catalog's photometry, re-estimate p(z) with the model, and stop the pipeline when
    the n(z) mean or the point estimates move too far.

    Perturbations (see :func:`calipers.validate.sensitivity.photometry_sensitivity`): ``n_noise``
    redraws of every detected magnitude within its error, and a +-``zero_point`` offset of each
    band's detected magnitudes (and of all bands together, ``all_bands``); non-detections are never
    touched. At most ``max_rows`` rows are used, a seeded random subset (catalogs may be sorted).

    Checks: the largest |shift of the sample's n(z) mean| and the largest 68th percentile of
    |dz_point| / (1 + z_point) over the zero-point offsets, and the same two for the noise redraws,
    each against its own limit: a redraw doubles the noise variance, which even a good model
    follows (on DC2 the shipped pipeline's model moves its n(z) mean by +0.011 under one redraw,
    but by at most 0.0015 under any 0.02 mag zero-point offset). Writes ``report.json`` (every
    perturbation's row, the worst band), a bar chart of the shifts against the limits and
    ``index.html``.
    """

    name = "SensitivityGate"
    parallel = False
    inputs = [("model", ModelDir), ("catalog", HDF5Catalog)]
    outputs = [("sensitivity_report", ReportDir)]
    report_tag = "sensitivity_report"
    config_options = CalipersStage.config_options | GATE_OPTIONS | CATALOG_OPTIONS | {
        "bands": Param(list, [], msg="Bands expected by the model; empty = take them from the model"),
        "zero_point": Param(float, 0.02, msg="Zero-point offset (mag) applied with each sign to each band; 2-4x the "
                                             "LSST calibration requirements (~0.01 absolute, ~0.005 band-to-band); "
                                             "0 = no zero-point perturbations"),
        "all_bands": Param(bool, True, msg="Also offset every band together by +-zero_point (a grey shift)"),
        "n_noise": Param(int, 1, msg="Redraws of the detected magnitudes within their errors (0 = none)"),
        "point_estimate": Param(str, "zmedian", msg="Point estimate whose shifts are judged: zmedian, zmean or zmode"),
        "max_rows": Param(int, 20_000, msg="Rows used: a seeded random subset of the catalog when it has more"),
        "chunk_size": Param(int, 100_000, msg="Rows per chunk while the subset is read"),
        "max_nz_mean_shift": Param(
            float, 0.01,
            msg="Largest allowed |shift of the sample's n(z) mean| (redshift) under any zero-point offset. LSST DESC "
                "requires the mean of each tomographic n(z) to ~0.001-0.003 (1+z) for Y10 (SRD); the shifts scale about "
                "linearly with the offset, so 0.01 at 0.02 mag is ~0.0025-0.005 at the calibration requirement: a "
                "model beyond it spends the whole budget on calibration alone (DC2 pipeline model: 0.0015)"),
        "max_point_shift_p68": Param(
            float, 0.02, msg="Largest allowed 68th percentile of |dz_point|/(1+z_point) under any zero-point offset "
                             "(DC2 pipeline model: 0.007)"),
        "max_noise_nz_mean_shift": Param(
            float, 0.02, msg="Largest allowed |shift of the n(z) mean| under a noise redraw, which doubles the noise "
                             "variance: even a good model follows it (DC2 pipeline model: +0.011 +- 0.001)"),
        "max_noise_point_shift_p68": Param(
            float, 0.04, msg="Largest allowed 68th percentile of |dz_point|/(1+z_point) under a noise redraw "
                             "(DC2 pipeline model: 0.017)"),
    }

    @classmethod
    def required_columns(cls, config):
        return model_catalog_columns(config)

    def _model(self):
        if not hasattr(self, "_ens"):
            self._ens = load_model(self.input_path("model"))
        return self._ens

    def _bands(self) -> list[str]:
        ens = self._model()
        bands = list(self.config["bands"]) or ens.bands
        check_model_bands(ens, bands, source=f"stage {self.instance_name} config 'bands'",
                          directory=self.input_path("model"))
        return bands

    def validate(self):
        super().validate()
        from calipers.validate.sensitivity import POINTS

        c = self.config
        where = f"stage {self.instance_name}"
        if not c["zero_point"] >= 0 or c["n_noise"] < 0 or (c["zero_point"] == 0 and c["n_noise"] == 0):
            raise ConfigError(f"{where}: need zero_point >= 0 and n_noise >= 0, not both 0; got zero_point="
                              f"{c['zero_point']}, n_noise={c['n_noise']}")
        if c["max_rows"] < 1 or c["chunk_size"] < 1:
            raise ConfigError(f"{where}: max_rows and chunk_size must be >= 1, got {c['max_rows']} and {c['chunk_size']}")
        if c["point_estimate"] not in POINTS:
            raise ConfigError(f"{where}: point_estimate must be one of {list(POINTS)}, got {c['point_estimate']!r}")
        for key in ("max_nz_mean_shift", "max_point_shift_p68", "max_noise_nz_mean_shift", "max_noise_point_shift_p68"):
            if not c[key] > 0:
                raise ConfigError(f"{where}: {key} must be > 0, got {c[key]}")
        mags, errs = band_columns(c, self._bands())
        catalog.require_columns(self.input_path("catalog"), c["hdf5_groupname"], mags + errs)

    def _read_subset(self, mag_cols, err_cols):
        """(rows, mags, errs) of at most ``max_rows`` rows drawn at random (seeded), in file order,
        read chunk by chunk."""
        c = self.config
        path = self.input_path("catalog")
        n, _ = catalog.catalog_info(path, c["hdf5_groupname"])
        if n == 0:
            raise CatalogError(f"{path}: group '{c['hdf5_groupname']}' has 0 rows; there is nothing to perturb")
        rows = np.arange(n) if n <= c["max_rows"] else np.sort(self.rng(1).choice(n, c["max_rows"], replace=False))
        mags, errs = [], []
        for start, end, cols in self.iter_catalog("catalog", c["hdf5_groupname"], mag_cols + err_cols, c["chunk_size"]):
            take = rows[(rows >= start) & (rows < end)] - start
            if take.size:
                mags.append(stack(cols, mag_cols)[take])
                errs.append(stack(cols, err_cols)[take])
        return rows, n, np.concatenate(mags), np.concatenate(errs)

    def process(self):
        from calipers.validate import plots
        from calipers.validate.gate import Check
        from calipers.validate.sensitivity import photometry_sensitivity

        c = self.config
        ens, bands = self._model(), self._bands()
        mag_cols, err_cols = band_columns(c, bands)
        rows, n_catalog, mags, errs = self._read_subset(mag_cols, err_cols)
        path = self.input_path("catalog")
        log.info("perturbing the photometry of %d of %d rows of %s (%d noise redraw(s), +-%g mag zero points)",
                 len(rows), n_catalog, path, c["n_noise"], c["zero_point"])
        result = photometry_sensitivity(lambda m, e: ens.estimate(m, e)[0], mags, errs, bands,
                                        zero_point=c["zero_point"], n_noise=c["n_noise"], all_bands=c["all_bands"],
                                        seed=c["seed"], point=c["point_estimate"],
                                        sentinel_abs=ens.preprocessor.sentinel_abs)
        checks = []
        limits = {"zero_point": (c["max_nz_mean_shift"], c["max_point_shift_p68"]),
                  "noise": (c["max_noise_nz_mean_shift"], c["max_noise_point_shift_p68"])}
        for kind, (mean_limit, p68_limit) in limits.items():
            worst_mean = result.worst("nz_mean_shift", kind)
            if worst_mean is None:
                continue
            worst_p68 = result.worst("point_shift_p68", kind)
            what = "noise redraw" if kind == "noise" else "zero-point offset"
            checks.append(Check(f"nz_mean_shift_{kind}", abs(worst_mean.nz_mean_shift), "<=", mean_limit,
                                why=f"worst {what}: {worst_mean.name}, shift {worst_mean.nz_mean_shift:+.5f} +- "
                                    f"{worst_mean.nz_mean_shift_error:.5f} of <z> = {result.nz_mean:.4f}"))
            checks.append(Check(f"point_shift_p68_{kind}", worst_p68.point_shift_p68, "<=", p68_limit,
                                why=f"68th percentile of |dz_{c['point_estimate']}|/(1+z), worst {what}: "
                                    f"{worst_p68.name}"))
        summary = result.to_dict() | {"catalog": path, "n_catalog_rows": int(n_catalog), "n_rows_used": int(len(rows))}
        figure = plots.sensitivity_figure(
            [r.name for r in result.rows], [r.nz_mean_shift for r in result.rows],
            [r.nz_mean_shift_error for r in result.rows], [limits[r.kind][0] for r in result.rows],
            [r.point_shift_p68 for r in result.rows], [limits[r.kind][1] for r in result.rows])
        self.conclude(f"Photometry sensitivity: {os.path.basename(self.input_path('model'))} on "
                      f"{os.path.basename(path)}", summary, checks, {"sensitivity": figure})
