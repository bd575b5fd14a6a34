"""Cosmology stages: tomographic bins -> n(z) with realizations -> n(z) gate -> C_ell (sacc).

``TomographicBinning`` (p(z) -> bin per galaxy), ``NZEstimate`` (p(z) + bins -> qp ensemble of
n(z): fiducial and realizations per bin), ``NZGate`` (n(z) against spectroscopic truth),
``TheoryCl`` (n(z) -> sacc file with the C_ell data vector, the Gaussian + n(z)-induced
covariance and the n(z) tracers, plus a report with both error contributions).
"""
from __future__ import annotations

import json
import logging
import os

import h5py
import numpy as np
from tqdm.auto import tqdm

from calipers.core import catalog
from calipers.core.errors import CatalogError, ConfigError
from calipers.core.file_types import HDF5Catalog, QPEnsembleFile, ReportDir, SaccFile
from calipers.core.gate_stage import GateStage
from calipers.core.nz_files import read_nz, read_tomography, write_nz, write_tomography
from calipers.core.options import GATE_OPTIONS, TRUTH_OPTIONS
from calipers.core.qpio import qp_size, read_qp_rows
from calipers.core.stage import CalipersStage, Param
from calipers.cosmology import nz as nzmod
from calipers.cosmology import tomography
from calipers.validate.metrics import grid_pdfs

log = logging.getLogger(__name__)

DESC_Y1_MEAN_Z = 0.002  # DESC SRD Y1 lensing sources: |d<z>| <= 0.002 (1 + z) per bin
Z_GRID_OPTIONS = {
    "zmax": Param(float, 3.0, msg="End of the redshift grid (starts at 0) on which p(z) and n(z) are evaluated"),
    "nzbins": Param(int, 301, msg="Points of the redshift grid"),
    "chunk_size": Param(int, 20_000, msg="p(z) per chunk (memory scales with this)"),
}


def _zgrid(c) -> np.ndarray:
    return np.linspace(0.0, c["zmax"], c["nzbins"])


def _chunks(stage: CalipersStage, path: str, n: int, zgrid, chunk_size: int, desc: str):
    """(start, end, normalised pdfs on the grid, valid) for this rank's chunks of a qp file."""
    ranges = catalog.chunk_ranges(n, chunk_size, stage.rank, stage.size)
    for start, end in tqdm(ranges, desc=desc, disable=stage.rank != 0, leave=False):
        pdfs, valid = grid_pdfs(read_qp_rows(path, start, end), zgrid)
        yield start, end, pdfs, valid


class TomographicBinning(CalipersStage):
    """Assign every galaxy of a p(z) ensemble to a tomographic bin.

    ``assign_by``: ``mass`` puts a galaxy in the bin that holds the largest share of its p(z);
    ``zmode``/``zmedian``/``zmean`` bin a point estimate computed from the p(z) themselves (never
    from possibly stale ancil values). ``edges`` are given, or (empty) chosen so that ``n_bins``
    bins hold equal numbers of galaxies by their ``zmedian``.
    """

    name = "TomographicBinning"
    parallel = False
    inputs = [("pz", QPEnsembleFile)]
    outputs = [("tomography", HDF5Catalog)]
    config_options = CalipersStage.config_options | Z_GRID_OPTIONS | {
        "assign_by": Param(str, "mass", msg="mass (largest p(z) share), zmode, zmedian or zmean"),
        "edges": Param(list, [], msg="Bin edges; empty = equal-number bins by zmedian"),
        "n_bins": Param(int, 5, msg="Number of equal-number bins when edges is empty"),
        "zmin_bins": Param(float, 0.0, msg="Lower end of the binned range for equal-number edges"),
        "zmax_bins": Param(float, 3.0, msg="Upper end of the binned range for equal-number edges"),
        "min_mass": Param(float, 0.0, msg="assign_by=mass: leave a galaxy unbinned (-1) below this share"),
        "drop_ood": Param(bool, False, msg="Leave galaxies flagged ood (outside the training support, p(z) "
                                           "ancil) unbinned (-1); an error when the p(z) carry no ood flags"),
    }

    def validate(self):
        if self.config["assign_by"] not in ("mass", *tomography.POINT_KINDS):
            raise ConfigError(f"assign_by must be mass, zmode, zmedian or zmean, got {self.config['assign_by']!r}")

    def process(self):
        c = self.config
        path = self.input_path("pz")
        n = qp_size(path)
        if n == 0:
            raise CatalogError(f"{path}: holds no p(z) (0 rows)")
        zgrid = _zgrid(c)
        kind = "zmedian" if c["assign_by"] == "mass" else c["assign_by"]
        zpoint = np.full(n, np.nan)
        bins = np.full(n, -1, dtype=np.int64)
        edges = np.asarray(c["edges"], dtype=float) if c["edges"] else None
        mass_rows = {}
        for start, end, pdfs, valid in _chunks(self, path, n, zgrid, c["chunk_size"], "point estimates"):
            zpoint[start:end][valid] = tomography.grid_point_estimate(pdfs[valid], zgrid, kind)
            if c["assign_by"] == "mass" and edges is not None:
                mass_rows[start] = tomography.assign_by_mass(pdfs, zgrid, edges, c["min_mass"])
        if edges is None:
            edges = tomography.equal_number_edges(zpoint, c["n_bins"], c["zmin_bins"], c["zmax_bins"])
        if c["assign_by"] == "mass":
            if not mass_rows:  # edges were just computed: second pass
                for start, end, pdfs, _ in _chunks(self, path, n, zgrid, c["chunk_size"], "assign"):
                    mass_rows[start] = tomography.assign_by_mass(pdfs, zgrid, edges, c["min_mass"])
            for start, b in mass_rows.items():
                bins[start:start + len(b)] = b
        else:
            bins = tomography.assign_by_point(zpoint, edges)
        if c["drop_ood"]:
            with h5py.File(path, "r") as src:
                if "ancil" not in src or "ood" not in src["ancil"]:
                    raise CatalogError(f"{path}: drop_ood is set but the p(z) carry no 'ood' flags in their ancil "
                                       "(made by PZEstimate from a model with a support region)")
                ood = src["ancil"]["ood"][:] != 0
            bins[ood] = -1
            log.info("%d galaxies flagged ood left unbinned", int(ood.sum()))
        counts = np.bincount(bins[bins >= 0], minlength=len(edges) - 1)
        log.info("tomographic bins %s: %s galaxies (%d unbinned)", np.round(edges, 4).tolist(), counts.tolist(),
                 int((bins < 0).sum()))
        ids = None
        with h5py.File(path, "r") as src:
            if "ancil" in src and "id" in src["ancil"]:
                ids = src["ancil"]["id"][:]
        write_tomography(self.output_path("tomography"), bins, edges, counts, c["assign_by"], kind, zpoint, ids,
                         self.provenance())


class NZEstimate(CalipersStage):
    """n(z) per tomographic bin as the stack of p(z), with realizations carrying its uncertainty.

    Output: a qp ``interp`` ensemble on the z grid. Rows ``0..n_bins-1`` are the fiducial n(z)
    of each bin; then ``n_realizations`` blocks of ``n_bins`` rows. Ancil ``bin`` and
    ``realization`` (-1 for the fiducial) say which is which. ``method`` (see
    :mod:`calipers.cosmology.nz`): bootstrap (galaxy sample variance), sample (draws from each
    p(z)) or both. Chunks are split over MPI ranks and the partial sums reduced on rank 0.
    """

    name = "NZEstimate"
    parallel = True
    inputs = [("pz", QPEnsembleFile), ("tomography", HDF5Catalog)]
    outputs = [("nz", QPEnsembleFile)]
    config_options = CalipersStage.config_options | Z_GRID_OPTIONS | {
        "n_realizations": Param(int, 100, msg="n(z) realizations per bin"),
        "method": Param(str, "both", msg="Realizations by galaxy bootstrap, p(z) sampling, or both"),
    }

    def validate(self):
        if self.config["method"] not in nzmod.METHODS:
            raise ConfigError(f"method must be one of {nzmod.METHODS}, got {self.config['method']!r}")
        if self.config["n_realizations"] < 2:
            raise ConfigError(f"n_realizations must be >= 2, got {self.config['n_realizations']}")

    def process(self):
        c = self.config
        path = self.input_path("pz")
        n = qp_size(path)
        if n == 0:
            raise CatalogError(f"{path}: holds no p(z) (0 rows)")
        bins, edges = read_tomography(self.input_path("tomography"))
        if len(bins) != n:
            raise ValueError(f"{path} holds {n} p(z) but {self.input_path('tomography')} bins {len(bins)} galaxies")
        zgrid = _zgrid(c)
        acc = nzmod.NZAccumulator(zgrid, len(edges) - 1, c["n_realizations"], c["method"], c["seed"])
        for start, end, pdfs, valid in _chunks(self, path, n, zgrid, c["chunk_size"], "n(z)"):
            b = bins[start:end].copy()
            bad = np.flatnonzero(~valid & (b >= 0))
            if bad.size:
                raise ValueError(f"{path}: p(z) not finite in {bad.size} binned row(s), first at row {start + bad[0]}")
            acc.add(np.where(valid[:, None], pdfs, 0.0), b, start)
        if self.size > 1:
            parts = self.comm.gather(acc, root=0)
            if self.rank != 0:
                return
            acc = parts[0]
            for other in parts[1:]:
                acc.merge(other)
        fid, real = acc.result()
        nb = len(edges) - 1
        write_nz(self.output_path("nz"), zgrid, fid, real,
                 self.provenance() | {"edges": json.dumps(edges.tolist()), "counts": json.dumps(acc.counts.tolist())})
        mean_z = nzmod.nz_mean_z(fid, zgrid)
        spread = nzmod.nz_mean_z(real, zgrid).std(0)
        for b in range(nb):
            log.info("bin %d: %d galaxies, <z> = %.4f +- %.4f", b, acc.counts[b], mean_z[b], spread[b])


class NZGate(GateStage):
    """Compare each bin's n(z) with the spectroscopic truth and stop the pipeline if it fails.

    Checks per bin: the mean-z offset |<z>_nz - <z>_true| against ``max_mean_offset`` x (1 + <z>)
    (the DESC Y1 lensing-source requirement is 0.002), and whether the true mean lies within
    ``n_sigma`` standard deviations of the realizations' mean-z spread (is the stated
    uncertainty honest?). Writes n(z) bands over the true histogram per bin. When the
    tomography file (ids from the p(z)) and the truth catalog both carry ids they must agree row
    by row.
    """

    name = "NZGate"
    parallel = False
    inputs = [("nz", QPEnsembleFile), ("tomography", HDF5Catalog), ("truth", HDF5Catalog)]
    outputs = [("nz_report", ReportDir)]
    report_tag = "nz_report"
    config_options = CalipersStage.config_options | GATE_OPTIONS | TRUTH_OPTIONS | {
        "max_mean_offset": Param(float, 0.002, msg="Allowed |mean-z offset| per bin, in units of (1 + <z>)"),
        "n_sigma": Param(float, 2.0, msg="The true mean must lie within this many realization sigmas"),
    }

    @classmethod
    def required_columns(cls, config):
        return {"truth": (config["hdf5_groupname"], [config["redshift_column"]])}

    def process(self):
        from calipers.validate.gate import Check
        from calipers.validate.plots import nz_bands_figure

        c = self.config
        zgrid, fid, real = read_nz(self.input_path("nz"))
        bins, edges = read_tomography(self.input_path("tomography"))
        tomo, truth = self.input_path("tomography"), self.input_path("truth")
        z = catalog.read_truth(truth, c["hdf5_groupname"], c["redshift_column"], len(bins), tomo)
        if catalog.check_matching_ids(tomo, "tomography/id", truth, c["hdf5_groupname"], c["id_column"]):
            log.info("object ids of %s match %s row by row", tomo, truth)
        nb = len(fid)
        true_nz, true_mean = nzmod.truth_nz(z, bins, nb, zgrid)
        est_mean = nzmod.nz_mean_z(fid, zgrid)
        real_mean = nzmod.nz_mean_z(real, zgrid)          # (n_real, n_bins)
        sigma = real_mean.std(0, ddof=1)
        checks, rows = [], []
        for b in range(nb):
            dz = est_mean[b] - true_mean[b]
            allowed = c["max_mean_offset"] * (1 + true_mean[b])
            pull = abs(true_mean[b] - real_mean[:, b].mean()) / sigma[b] if sigma[b] > 0 else np.inf
            checks.append(Check(f"bin{b}_mean_offset", abs(dz), "<=", allowed,
                                why=f"<z> {est_mean[b]:.4f} vs true {true_mean[b]:.4f}; "
                                    f"requirement {c['max_mean_offset']:g}(1+z)"))
            checks.append(Check(f"bin{b}_truth_pull", pull, "<=", c["n_sigma"],
                                why=f"true <z> {true_mean[b]:.4f} vs realizations {real_mean[:, b].mean():.4f} "
                                    f"+- {sigma[b]:.4f}"))
            rows.append({"bin": b, "z_lo": float(edges[b]), "z_hi": float(edges[b + 1]),
                         "n_galaxies": int((bins == b).sum()), "mean_z": float(est_mean[b]),
                         "true_mean_z": float(true_mean[b]), "delta_mean_z": float(dz),
                         "delta_over_1pz": float(dz / (1 + true_mean[b])), "gate_threshold_1pz": c["max_mean_offset"],
                         "desc_y1_requirement_1pz": DESC_Y1_MEAN_Z,
                         "realization_sigma": float(sigma[b]), "pull": float(pull)})
        self.conclude("n(z) gate: tomographic n(z) against spectroscopic truth", {"bins": rows}, checks,
                      {"nz_bands": nz_bands_figure(zgrid, fid, real, true_nz, edges)})


class TheoryCl(CalipersStage):
    """Angular power spectra of the tomographic n(z) with pyccl, written as a sacc file.

    The data vector is C_ell of the fiducial n(z) for every tracer pair (shear-shear i<=j,
    density autos, density-shear; see :func:`calipers.cosmology.tracer_pairs`) at log-spaced
    ell bins. The sacc covariance is the Gaussian (Knox) covariance of the configured survey
    plus the n(z)-induced covariance (the sample covariance of C_ell over the n(z)
    realizations); the two parts are also stored on their own in the sacc metadata
    (``covariance_gaussian``, ``covariance_nz``) and in ``covariances.hdf5`` of the report, with
    a table and a figure of their ratio per ell bin. Each bin is a ``QPNZTracer`` holding its
    fiducial n(z) and its realizations.
    """

    name = "TheoryCl"
    parallel = False
    inputs = [("nz", QPEnsembleFile), ("tomography", HDF5Catalog)]
    outputs = [("cl_sacc", SaccFile), ("cl_report", ReportDir)]
    config_options = CalipersStage.config_options | {
        "Omega_c": Param(float, 0.25, msg="Cold dark matter density"),
        "Omega_b": Param(float, 0.05, msg="Baryon density"),
        "h": Param(float, 0.67, msg="Hubble constant / 100 km/s/Mpc"),
        "n_s": Param(float, 0.96, msg="Primordial spectral index"),
        "sigma8": Param(float, 0.81, msg="Amplitude of matter fluctuations"),
        "transfer_function": Param(str, "eisenstein_hu", msg="pyccl transfer function (eisenstein_hu, boltzmann_camb)"),
        "matter_power_spectrum": Param(str, "halofit", msg="pyccl non-linear matter power spectrum"),
        "probes": Param(list, ["shear", "density"], msg="Tracers of each bin: shear and/or density"),
        "bias": Param(float, 1.5, msg="Constant linear galaxy bias of the density tracers"),
        "ell_min": Param(float, 20.0, msg="Lowest ell bin edge"),
        "ell_max": Param(float, 2000.0, msg="Highest ell bin edge"),
        "n_ell": Param(int, 15, msg="Number of log-spaced ell bins"),
        "f_sky": Param(float, 0.3, msg="Survey sky fraction (Gaussian covariance)"),
        "n_gal_arcmin2": Param(float, 10.0, msg="Galaxies per arcmin^2 over all bins (noise)"),
        "sigma_e": Param(float, 0.26, msg="Shape noise per component"),
        "max_realizations": Param(int, 0, msg="Use at most this many n(z) realizations (0 = all)"),
    }

    def process(self):
        import sacc

        from calipers import cosmology as cos

        c = self.config
        zgrid, fid, real = read_nz(self.input_path("nz"))
        bins, edges = read_tomography(self.input_path("tomography"))
        if c["max_realizations"] > 0:
            real = real[: c["max_realizations"]]
        if len(real) < 2:
            raise ValueError(f"{self.input_path('nz')}: need at least 2 n(z) realizations for a covariance")
        nb = len(fid)
        counts = np.bincount(bins[bins >= 0], minlength=nb)
        params = cos.CosmologyParams(**{k: c[k] for k in cos.CosmologyParams.__dataclass_fields__})
        cosmo = cos.make_cosmology(params)
        ell, dell = cos.ell_bins(c["ell_min"], c["ell_max"], c["n_ell"])
        pairs = cos.tracer_pairs(nb, tuple(c["probes"]))
        survey = cos.SurveySpec(c["f_sky"], c["n_gal_arcmin2"], c["sigma_e"])
        data = cos.angular_power_spectra(cosmo, zgrid, fid, ell, pairs, c["bias"])
        gauss = cos.knox_covariance(cosmo, zgrid, fid, ell, dell, pairs, c["bias"], counts / counts.sum(), survey)
        reals = np.array([cos.angular_power_spectra(cosmo, zgrid, r, ell, pairs, c["bias"]).ravel()
                          for r in tqdm(real, desc="C_ell per n(z) realization", leave=False)])
        nzcov = np.cov(reals, rowvar=False)
        self._write_sacc(sacc, zgrid, fid, real, ell, pairs, data, gauss, nzcov)
        self._write_report(ell, pairs, data, gauss, nzcov, reals, len(real))

    def _write_sacc(self, sacc, zgrid, fid, real, ell, pairs, data, gauss, nzcov):
        import qp

        s = sacc.Sacc()
        for b in range(len(fid)):
            ens = qp.Ensemble(qp.interp, data={"xvals": zgrid, "yvals": real[:, b]})
            s.add_tracer_object(sacc.tracers.QPNZTracer(f"bin{b}", ens, z=zgrid, nz=fid[b]))
        from calipers.cosmology.cl import SACC_DATA_TYPES

        for (a, b), cl in zip(pairs, data):
            s.add_ell_cl(SACC_DATA_TYPES[(a[0], b[0])], f"bin{a[1]}", f"bin{b[1]}", ell, cl)
        s.add_covariance(gauss + nzcov)
        s.metadata["covariance"] = "covariance_gaussian + covariance_nz"
        s.metadata["covariance_gaussian"] = gauss   # Knox, for the configured survey
        s.metadata["covariance_nz"] = nzcov         # sample covariance over the n(z) realizations
        s.metadata["calipers_run_key"] = self.provenance().get("run_key", "")
        c = self.config  # the cosmology of this (noise-free) data vector
        s.metadata["Omega_m"] = c["Omega_c"] + c["Omega_b"]
        s.metadata["sigma8"] = c["sigma8"]
        s.save_fits(self.output_path("cl_sacc"), overwrite=True)

    def _write_report(self, ell, pairs, data, gauss, nzcov, reals, n_real):
        from calipers.core.report import write_report
        from calipers.validate.plots import cl_error_ratio_figure, cl_errors_figure

        n_ell = len(ell)
        sg = np.sqrt(np.diag(gauss)).reshape(len(pairs), n_ell)
        snz = np.sqrt(np.diag(nzcov)).reshape(len(pairs), n_ell)
        ratio = snz / sg
        names = [f"{a[0]}{a[1]}-{b[0]}{b[1]}" for a, b in pairs]
        table = [{"ell": float(ell[i]), "median_ratio": float(np.median(ratio[:, i])),
                  "max_ratio": float(ratio[:, i].max()), "max_ratio_spectrum": names[int(ratio[:, i].argmax())]}
                 for i in range(n_ell)]
        for row in table:
            log.info("ell %7.1f: sigma_nz / sigma_gauss median %.3f, max %.3f (%s)", row["ell"], row["median_ratio"],
                     row["max_ratio"], row["max_ratio_spectrum"])
        out = self.output_path("cl_report")
        figures = {"cl_errors": cl_errors_figure(ell, pairs, data, sg, snz),
                   "error_ratio": cl_error_ratio_figure(ell, ratio, names)}
        write_report(out, "C_ell with Gaussian and n(z)-induced errors",
                     {"n_realizations": n_real, "spectra": names, "ratio_table": table,
                      "ratio_per_spectrum": {n: r.tolist() for n, r in zip(names, ratio)}}, [], figures,
                     provenance=self.provenance())
        with h5py.File(os.path.join(out, "covariances.hdf5"), "w") as f:
            f.create_dataset("ell", data=ell)
            f.create_dataset("data_vector", data=data.ravel())
            f.create_dataset("gaussian", data=gauss)
            f.create_dataset("nz", data=nzcov)
            f.create_dataset("realizations", data=reals)
            f.attrs["spectra"] = json.dumps(names)
