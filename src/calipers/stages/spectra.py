"""Stellar-spectra stages (issue 19): simulate PFS red-arm spectra at one or several S/N values,
measure the information ceiling of a log g regression on them (Fisher / Cramer-Rao bounds), train
log g regressors (CNN deep ensemble, ridge, LightGBM) and apply them as qp ensembles.

The science lives in :mod:`calipers.spectra` (simulator, Fisher bounds, models) and the figures in
:mod:`calipers.validate.spectra_plots`; the files in :mod:`calipers.core.spectrum_sets` and
:mod:`calipers.core.spectra_models`. These stages read, configure, parallelise and write.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from calipers.core.errors import ConfigError, FileFormatError
from calipers.core.file_types import HDF5Catalog, ModelDir, QPEnsembleFile, ReportDir, SpectrumSetFile
from calipers.core.gate_stage import GateStage
from calipers.core.options import GATE_OPTIONS
from calipers.core.report import html_table
from calipers.core.stage import DEVICE_OPTION, CalipersStage, Param, rank_block_range

log = logging.getLogger(__name__)

SNR_DISTRIBUTIONS = ("fixed", "log_uniform")
PRIORS = ("gaussian", "cosine")
ROW_ORDER = ("star-major: the rows of a star are adjacent, one per value of 'snr' in the order given; "
             "row = (star_id - start) * len(snr) + k")
MAX_SNR_GROUPS = 20  # more distinct S/N values than this: the ceiling table uses S/N quantile bins
N_SNR_BINS = 8
FLUX_TOLERANCE = 1e-3  # stored model_flux vs the float64 recomputation, relative to the flux scale


def _noise_seed(seed: int, snr: float) -> int:
    """The noise seed of S/N value ``snr`` in a set of seed ``seed`` when every S/N gets its own draw:
    derived from (seed, S/N to 0.001), so a star's noise at one S/N does not depend on which other
    S/N values the set holds."""
    state = np.random.SeedSequence([int(seed), 3, int(round(float(snr) * 1000))]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def _block_uniform(seed: int, stream: int, start: int, n: int, block_size: int) -> np.ndarray:
    """Uniform draws for items start .. start + n - 1, block ``b`` from ``default_rng([seed, stream, b])``
    alone (the same whatever the split into calls, like the simulator's labels)."""
    if n == 0:
        return np.zeros(0)
    parts = []
    for b in range(start // block_size, (start + n - 1) // block_size + 1):
        lo, hi = max(start - b * block_size, 0), min(start + n - b * block_size, block_size)
        parts.append(np.random.default_rng([seed, stream, b]).uniform(size=block_size)[lo:hi])
    return np.concatenate(parts)


def _simulator_config(values: dict, where: str, error: type[Exception]):
    from calipers.spectra.simulate import SpectraSimConfig

    try:
        return SpectraSimConfig.from_dict(dict(values))
    except (TypeError, ValueError) as err:
        raise error(f"{where}: {err}") from err


# ============================================================================ simulation

class SpectraSimulate(CalipersStage):
    """Simulate Subaru PFS red-arm spectra (:mod:`calipers.spectra.simulate`) in seeded blocks.

    Each star's labels (Teff, log g, [M/H], uniform in the simulator's ranges) and noise-free spectrum
    are made once; the noise is then drawn per S/N value. With ``snr_distribution: fixed`` every star
    appears once per value of ``snr`` (rows star-major: a star's rows are adjacent, in the order of
    ``snr``), so every S/N is judged on the same stars; with ``log_uniform`` each star appears once, at
    an S/N drawn log-uniformly in ``snr = [low, high]`` (training sets).

    Star ``i`` (its labels, spectrum, S/N draw and noise) is the same whatever ``n_stars``, the
    chunking or the number of MPI ranks (each rank simulates a contiguous run of chunks, rank 0 joins
    the parts). Writes a spectrum set with meta ``star_id``, ``teff``, ``logg``, ``m_h``, ``snr`` and the
    simulator's configuration as the JSON attribute ``simulator`` (what ``FisherBound`` rebuilds the
    model from), the seeds and S/N plan as ``simulation``.
    """

    name = "SpectraSimulate"
    parallel = True
    inputs = []
    outputs = [("spectra", SpectrumSetFile)]
    config_options = CalipersStage.config_options | {
        "n_stars": Param(int, 1000, msg="Number of stars (rows: n_stars x len(snr) when fixed, n_stars when "
                                        "log_uniform)"),
        "start": Param(int, 0, msg="Index of the first star in the seeded sequence (disjoint sets: same seed and "
                                   "non-overlapping ranges, or different seeds)"),
        "snr": Param(list, [10.0], msg="Median per-pixel S/N: the values each star is observed at (fixed), or "
                                       "[low, high] (log_uniform)"),
        "snr_distribution": Param(str, "fixed", msg="fixed: every star at every value of snr; log_uniform: one "
                                                    "row per star, S/N drawn log-uniformly in snr = [low, high]"),
        "independent_noise": Param(bool, True, msg="fixed S/N: an independent noise draw per S/N value (false: "
                                                   "the same standard normals scaled, common random numbers)"),
        "keep_model_flux": Param(bool, True, msg="Also store the noise-free spectra (model_flux)"),
        "chunk_size": Param(int, 256, msg="Stars simulated and written at a time (a multiple of the simulator's "
                                          "block_size wastes nothing)"),
        "simulator": Param(dict, {}, msg="SpectraSimConfig options (wavelength_min, wavelength_max, n_pix, "
                                         "resolving_power, teff_range, logg_range, m_h_range, line_list_seed, ...); "
                                         "{} = its defaults"),
    }

    def _sim_config(self):
        return _simulator_config(self.config["simulator"], f"stage {self.instance_name}: option 'simulator'",
                                 ConfigError)

    def _snr_plan(self) -> list[float]:
        c = self.config
        where = f"stage {self.instance_name}"
        if c["snr_distribution"] not in SNR_DISTRIBUTIONS:
            raise ConfigError(f"{where}: snr_distribution must be one of {SNR_DISTRIBUTIONS}, got "
                              f"{c['snr_distribution']!r}")
        values = []
        for v in c["snr"]:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{where}: snr = {c['snr']!r}: every S/N must be a finite number > 0")
            values.append(float(v))
        if c["snr_distribution"] == "log_uniform":
            if len(values) != 2 or not values[0] < values[1]:
                raise ConfigError(f"{where}: snr_distribution log_uniform needs snr = [low, high] with low < high, "
                                  f"got {c['snr']!r}")
        else:
            if not values:
                raise ConfigError(f"{where}: snr is empty; give at least one S/N value")
            milli = [round(v * 1000) for v in values]
            if len(set(milli)) != len(milli):
                raise ConfigError(f"{where}: snr = {c['snr']!r} repeats a value (to 0.001)")
        return values

    def validate(self):
        c = self.config
        if c["n_stars"] < 1 or c["start"] < 0 or c["chunk_size"] < 1:
            raise ConfigError(f"stage {self.instance_name}: need n_stars >= 1, start >= 0 and chunk_size >= 1, got "
                              f"{c['n_stars']}, {c['start']}, {c['chunk_size']}")
        self._snr_plan()
        self._sim_config()

    def _attributes(self, cfg, snrs: list[float]) -> dict:
        c = self.config
        fixed = c["snr_distribution"] == "fixed"
        noise = ("independent per S/N value: seed derived from (seed, S/N)" if fixed and c["independent_noise"]
                 else "the simulator's noise stream of seed (common random numbers across S/N values)")
        return {"simulator": cfg.to_dict(),
                "simulation": {"seed": c["seed"], "start": c["start"], "n_stars": c["n_stars"], "snr": snrs,
                               "snr_distribution": c["snr_distribution"],
                               "independent_noise": bool(c["independent_noise"]), "noise": noise,
                               "rows_per_star": len(snrs) if fixed else 1,
                               "row_order": ROW_ORDER if fixed else "one row per star, in star_id order"}}

    def _simulate_stars(self, model, cfg, first: int, n: int, snrs: list[float]):
        """Rows of stars first .. first + n - 1 as :class:`~calipers.core.spectrum_sets.Spectra`."""
        from calipers.core.spectrum_sets import Spectra
        from calipers.spectra.simulate import simulate_spectra

        c = self.config
        seed = c["seed"]
        # noise-free spectra and labels once per star (the noisy flux made here is not used)
        base = simulate_spectra(cfg, n, seed, snr=snrs[0], start=first, model=model, keep_model_flux=True)
        clean, labels = base.model_flux, base.labels
        star_id = np.arange(first, first + n, dtype=np.int64)
        if c["snr_distribution"] == "log_uniform":
            lo, hi = math.log(snrs[0]), math.log(snrs[1])
            snr = np.exp(lo + _block_uniform(seed, 2, first, n, cfg.block_size) * (hi - lo))
            flux, ivar = model.add_noise(clean, snr, seed, first)  # one S/N per star
            rows = np.arange(n)
        else:
            k = len(snrs)
            fluxes, ivars = [], []
            for value in snrs:
                noise_seed = _noise_seed(seed, value) if c["independent_noise"] else seed
                f, iv = model.add_noise(clean, value, noise_seed, first)
                fluxes.append(f)
                ivars.append(iv)
            # star-major: (star, S/N) -> row star * k + s
            flux = np.stack(fluxes, axis=1).reshape(n * k, -1)
            ivar = np.stack(ivars, axis=1).reshape(n * k, -1)
            snr = np.tile(np.asarray(snrs, dtype=np.float64), n)
            rows = np.repeat(np.arange(n), k)
        meta = {"star_id": star_id[rows], "teff": labels[rows, 0], "logg": labels[rows, 1], "m_h": labels[rows, 2],
                "snr": np.asarray(snr, dtype=np.float64)}
        return Spectra(model.wavelength, flux, ivar, meta, clean[rows] if c["keep_model_flux"] else None)

    def process(self):
        from tqdm.auto import tqdm

        from calipers.core.spectrum_sets import SpectrumSetWriter, iterate_spectrum_set
        from calipers.spectra.simulate import SpectrumModel

        c = self.config
        cfg = self._sim_config()
        snrs = self._snr_plan()
        model = SpectrumModel(cfg)
        n, first, chunk = c["n_stars"], c["start"], c["chunk_size"]
        target = self.output_path("spectra")
        prov = self.provenance()
        attrs = self._attributes(cfg, snrs)
        dtypes = {"star_id": np.int64, "teff": np.float64, "logg": np.float64, "m_h": np.float64, "snr": np.float64}
        keep = c["keep_model_flux"]
        lo, hi = rank_block_range(n, chunk, self.rank, self.size)
        path = target if self.size == 1 else f"{target}.rank{self.rank}"
        with SpectrumSetWriter(path, model.wavelength, with_model_flux=keep, meta_dtypes=dtypes, attrs=attrs,
                               provenance=prov) as out:
            for s in tqdm(range(lo, hi, chunk), desc=f"{self.instance_name} chunks", disable=self.rank != 0):
                out.append(self._simulate_stars(model, cfg, first + s, min(chunk, hi - s), snrs))
        if self.size == 1:
            return
        self.comm.Barrier()
        if self.rank == 0:
            rows_per_star = len(snrs) if c["snr_distribution"] == "fixed" else 1
            with SpectrumSetWriter(target, model.wavelength, with_model_flux=keep, meta_dtypes=dtypes, attrs=attrs,
                                   provenance=prov) as out:
                for r in range(self.size):
                    part = f"{target}.rank{r}"
                    for _, rows in iterate_spectrum_set(part, chunk * rows_per_star, with_model_flux=keep):
                        out.append(rows)
                    os.remove(part)
        self.comm.Barrier()


# ============================================================================ information ceiling

def _finite_or_none(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


class FisherBound(CalipersStage):
    """The information ceiling of a log g regression on a simulated spectrum set
    (:mod:`calipers.spectra.fisher`): per row, the marginal Cramer-Rao bound sigma_CRLB of log g (Teff
    and [M/H] free) and its prior-aware Bayesian form, each with the continuum known and with a free
    continuum scale and tilt; per S/N (and per [M/H] third), the median sigma and the largest R^2 they
    allow.

    The Jacobian d flux / d (Teff, log g, [M/H]) needs the differentiable model, so the set must carry
    the simulator configuration that made it (the ``simulator`` attribute ``SpectraSimulate`` writes);
    it is rebuilt from there and evaluated in float64 at each star's labels, once per star (a star's
    rows at several S/N values share it; stars are told apart by ``star_id``, or each row is its own
    star when the set has none). When the set stores ``model_flux`` it must match the recomputed flux
    (to 1e-3 of the flux scale): a set whose stored configuration is not the one that made it is an
    error. The Fisher matrix of a row uses the expected (noise-free) inverse variance at that row's S/N
    (``SpectrumModel.expected_ivar``), not the set's noisy ``ivar``.

    Outputs: ``fisher_bounds``, an HDF5 catalog (group ``fisher``) aligned with the set's rows
    (``star_id``, ``snr``, ``teff``, ``logg``, ``m_h``, ``sigma_crlb``, ``sigma_crlb_continuum``,
    ``sigma_bayes``, ``sigma_bayes_continuum``, in dex; inf where a Fisher matrix is singular), and
    ``ceiling_report`` (``report.json`` with the tables ``ceiling`` and ``ceiling_by_m_h``, PNG
    figures of sigma vs S/N and R^2_max vs S/N, ``index.html``). Star chunks are spread over MPI ranks.
    """

    name = "FisherBound"
    parallel = True
    inputs = [("spectra", SpectrumSetFile)]
    outputs = [("fisher_bounds", HDF5Catalog), ("ceiling_report", ReportDir)]
    config_options = CalipersStage.config_options | {
        "prior": Param(str, "gaussian", msg="Prior information of the Bayesian bound: gaussian (a Gaussian of the "
                                            "uniform prior's variance) or cosine (van Trees with the cos^2 prior)"),
        "continuum": Param(bool, True, msg="Headline ceiling with a free continuum scale and tilt (true) or a known "
                                           "continuum (false); both are computed and reported"),
        "chunk_size": Param(int, 64, msg="Stars per Jacobian evaluation (their rows at every S/N follow them)"),
    }

    def validate(self):
        c = self.config
        if c["prior"] not in PRIORS:
            raise ConfigError(f"stage {self.instance_name}: prior must be one of {PRIORS}, got {c['prior']!r}")
        if c["chunk_size"] < 1:
            raise ConfigError(f"stage {self.instance_name}: chunk_size must be >= 1, got {c['chunk_size']}")

    # ------------------------------------------------------------------ input
    def _read_input(self, path: str):
        """(simulator config, labels (N, 3), snr (N,), star ids (N,), has_model_flux), checked."""
        from calipers.core.spectrum_sets import LABEL_COLUMNS, SpectrumSetError, read_spectrum_meta, spectrum_set_info

        info = spectrum_set_info(path)
        if info["simulator"] is None:
            what = "stores model_flux but " if info["has_model_flux"] else "has no model_flux and "
            raise FileFormatError(
                f"{path}: the spectrum set {what}no simulator configuration (attribute 'simulator'); the Fisher "
                "bound needs the differentiable model that made the spectra to take d flux / d labels. Simulate "
                "the set with SpectraSimulate, which stores it")
        cfg = _simulator_config(info["simulator"], f"{path}: attribute 'simulator'", FileFormatError)
        need = list(LABEL_COLUMNS) + ["snr"]
        missing = [col for col in need if col not in info["meta_columns"]]
        if missing:
            raise SpectrumSetError(f"{path}: meta column(s) {missing} missing (columns: {info['meta_columns']}); the "
                                   "Fisher bound needs the labels teff, logg, m_h and the S/N of every row")
        has_ids = "star_id" in info["meta_columns"]
        meta = read_spectrum_meta(path, need + (["star_id"] if has_ids else []))
        labels = np.stack([np.asarray(meta[col], dtype=np.float64) for col in LABEL_COLUMNS], axis=1)
        snr = np.asarray(meta["snr"], dtype=np.float64)
        bad = ~(np.isfinite(snr) & (snr > 0))
        if bad.any():
            row = int(np.argmax(bad))
            raise SpectrumSetError(f"{path}: row {row}: snr = {snr[row]}; the S/N must be finite and > 0")
        ranges = cfg.label_ranges
        outside = ~np.isfinite(labels) | (labels < ranges[:, 0]) | (labels > ranges[:, 1])
        if outside.any():
            row, k = (int(v) for v in np.argwhere(outside)[0])
            raise SpectrumSetError(f"{path}: row {row}: {LABEL_COLUMNS[k]} = {labels[row, k]} is outside the "
                                   f"simulator's range {ranges[k].tolist()}")
        ids = np.asarray(meta["star_id"]) if has_ids else np.arange(len(snr))
        return info, cfg, labels, snr, ids

    @staticmethod
    def _stars(ids: np.ndarray, labels: np.ndarray, path: str):
        """Stars in order of first appearance: (first row of each star, star index of each row)."""
        from calipers.core.spectrum_sets import SpectrumSetError

        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        star_of_row = position[inverse.ravel()]
        first = first[order]
        differ = np.any(labels != labels[first][star_of_row], axis=1)
        if differ.any():
            row = int(np.argmax(differ))
            raise SpectrumSetError(f"{path}: rows {first[star_of_row[row]]} and {row} have the same star_id "
                                   f"({ids[row]}) but different labels; a star's rows must share its labels")
        return first, star_of_row

    # ------------------------------------------------------------------ bounds
    def _check_model_flux(self, path: str, rows: np.ndarray, flux: np.ndarray) -> None:
        from calipers.core.spectrum_sets import SpectrumSetError, read_spectrum_set

        stored = read_spectrum_set(path, rows=rows, columns=[], with_model_flux=True).model_flux
        diff = np.abs(stored.astype(np.float64) - flux)
        tol = FLUX_TOLERANCE * max(1.0, float(np.abs(flux).max()))
        if diff.max() > tol:
            i, p = (int(v) for v in np.unravel_index(np.argmax(diff), diff.shape))
            raise SpectrumSetError(
                f"{path}: row {int(rows[i])}, pixel {p}: the stored model_flux ({stored[i, p]:.6g}) differs from the "
                f"flux of the simulator configuration stored in the set ({flux[i, p]:.6g}) by more than {tol:.1e}; "
                "the set's 'simulator' attribute is not the configuration that made it")

    def _bounds(self, path, info, cfg, labels, snr, first, star_of_row) -> dict[str, np.ndarray]:
        """This rank's per-row bounds: {"rows": ..., column: values}."""
        import torch
        from tqdm.auto import tqdm

        from calipers.core.catalog import chunk_ranges
        from calipers.core.spectrum_sets import SpectrumSetError, read_spectrum_wavelength
        from calipers.spectra.fisher import (bayesian_crlb, continuum_nuisance_jacobian, fisher_matrix, jacobian,
                                             marginal_crlb, prior_information)
        from calipers.spectra.simulate import SpectrumModel

        c = self.config
        model = SpectrumModel(cfg)
        lam = read_spectrum_wavelength(path)
        if lam.shape != model.wavelength.shape or not np.allclose(lam, model.wavelength, rtol=1e-10, atol=0):
            raise SpectrumSetError(f"{path}: the set's wavelengths ({lam.size} pixels, {lam[0]:.2f}-{lam[-1]:.2f} A) "
                                   "are not those of the simulator configuration stored in it")
        ranges = cfg.label_ranges
        priors = {0: prior_information(ranges, c["prior"], 0), 2: prior_information(ranges, c["prior"], 2)}
        by_star = np.argsort(star_of_row, kind="stable")
        bounds = np.searchsorted(star_of_row[by_star], np.arange(len(first) + 1))
        names = ("sigma_crlb", "sigma_crlb_continuum", "sigma_bayes", "sigma_bayes_continuum")
        rows_done, values = [], {k: [] for k in names}
        chunks = chunk_ranges(len(first), c["chunk_size"], self.rank, self.size)
        for s0, s1 in tqdm(chunks, desc=f"{self.instance_name} star chunks", disable=self.rank != 0):
            theta = torch.as_tensor(labels[first[s0:s1]], dtype=torch.float64)
            flux, jac = (t.detach().numpy() for t in jacobian(model, theta, return_flux=True))
            if info["has_model_flux"]:
                self._check_model_flux(path, first[s0:s1], flux)
            jac_cont = np.concatenate([jac, continuum_nuisance_jacobian(flux, model.wavelength)], axis=-1)
            rows = by_star[bounds[s0]:bounds[s1]]
            local = star_of_row[rows] - s0
            out = {k: np.empty(rows.size) for k in names}
            for value in np.unique(snr[rows]):
                sel = snr[rows] == value
                ivar = model.expected_ivar(flux[local[sel]], float(value))
                for suffix, j, n_nuis in (("", jac, 0), ("_continuum", jac_cont, 2)):
                    fisher = fisher_matrix(j[local[sel]], ivar)
                    out[f"sigma_crlb{suffix}"][sel] = np.sqrt(marginal_crlb(fisher))
                    out[f"sigma_bayes{suffix}"][sel] = np.sqrt(bayesian_crlb(fisher, priors[n_nuis]))
            rows_done.append(rows)
            for k in names:
                values[k].append(out[k])
        part = {"rows": np.concatenate(rows_done) if rows_done else np.zeros(0, np.int64)}
        part |= {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in values.items()}
        return part

    # ------------------------------------------------------------------ tables
    @staticmethod
    def _snr_groups(snr: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """(S/N label, row mask): one group per distinct S/N, or N_SNR_BINS quantile bins (labelled by
        their median S/N) when there are more than MAX_SNR_GROUPS distinct values."""
        values = np.unique(snr)
        if values.size <= MAX_SNR_GROUPS:
            return [(float(v), snr == v) for v in values]
        edges = np.quantile(snr, np.linspace(0, 1, N_SNR_BINS + 1))
        which = np.clip(np.searchsorted(edges, snr, side="right") - 1, 0, N_SNR_BINS - 1)
        return [(float(np.median(snr[which == b])), which == b) for b in range(N_SNR_BINS) if np.any(which == b)]

    @staticmethod
    def _table_row(snr_label: float, sel: np.ndarray, snr, logg, ids, bounds) -> dict:
        from calipers.spectra.fisher import r2_ceiling

        n = int(sel.sum())
        row = {"snr": snr_label, "snr_min": float(snr[sel].min()), "snr_max": float(snr[sel].max()), "n": n,
               "n_stars": int(np.unique(ids[sel]).size)}
        spread = n >= 2 and float(np.var(logg[sel])) > 0
        for suffix in ("", "_continuum"):
            crlb, bayes = bounds[f"sigma_crlb{suffix}"][sel], bounds[f"sigma_bayes{suffix}"][sel]
            row[f"sigma_crlb_median{suffix}"] = _finite_or_none(np.median(crlb))
            row[f"sigma_bayes_median{suffix}"] = _finite_or_none(np.median(bayes))
            row[f"r2_crlb{suffix}"] = _finite_or_none(r2_ceiling(crlb ** 2, logg[sel])) if spread else None
            row[f"r2_bayes{suffix}"] = _finite_or_none(r2_ceiling(bayes ** 2, logg[sel])) if spread else None
            row[f"n_singular{suffix}"] = int(np.sum(~np.isfinite(crlb)))
        return row

    def _tables(self, labels, snr, ids, bounds, cfg) -> tuple[list[dict], dict[str, list[dict]], list[float]]:
        logg, m_h = labels[:, 1], labels[:, 2]
        groups = self._snr_groups(snr)
        table = [self._table_row(v, sel, snr, logg, ids, bounds) for v, sel in groups]
        lo, hi = cfg.m_h_range
        edges = np.linspace(lo, hi, 4)
        third = np.clip(np.searchsorted(edges, m_h, side="right") - 1, 0, 2)
        by_m_h = {}
        for t in range(3):
            name = f"[M/H] {edges[t]:+.2f} to {edges[t + 1]:+.2f}"
            by_m_h[name] = [self._table_row(v, sel & (third == t), snr, logg, ids, bounds)
                            for v, sel in groups if np.any(sel & (third == t))]
        return table, by_m_h, edges.tolist()

    # ------------------------------------------------------------------ run
    def process(self):
        path = self.input_path("spectra")
        info, cfg, labels, snr, ids = self._read_input(path)
        first, star_of_row = self._stars(ids, labels, path)
        log.info("%s: %d rows of %d stars at %d S/N value(s)", path, len(snr), len(first), np.unique(snr).size)
        part = self._bounds(path, info, cfg, labels, snr, first, star_of_row)
        parts = [part] if self.size == 1 else self.comm.gather(part, root=0)
        if self.rank == 0:
            self._write(path, cfg, labels, snr, ids, parts)
        if self.size > 1:
            self.comm.Barrier()

    def _write(self, path, cfg, labels, snr, ids, parts) -> None:
        from calipers.core.report import write_report
        from calipers.core.spectrum_sets import write_fisher_bounds
        from calipers.spectra.fisher import LOGG_INDEX, prior_information
        from calipers.validate import spectra_plots

        c = self.config
        n = len(snr)
        bounds = {k: np.full(n, np.nan) for k in parts[0] if k != "rows"}
        for p in parts:
            for k in bounds:
                bounds[k][p["rows"]] = p[k]
        if any(np.isnan(v).any() for v in bounds.values()):  # pragma: no cover - a bug, not a user error
            raise RuntimeError(f"{path}: some rows got no bound")
        primary = "_continuum" if c["continuum"] else ""
        prior_sigma = float(1.0 / np.sqrt(prior_information(cfg.label_ranges, c["prior"])[LOGG_INDEX]))
        columns = {"star_id": ids, "snr": snr, "teff": labels[:, 0], "logg": labels[:, 1], "m_h": labels[:, 2]} | bounds
        attrs = {"spectra": path, "prior": c["prior"], "prior_sigma_logg": prior_sigma,
                 "headline": "continuum" if c["continuum"] else "fixed_continuum",
                 "units": "sigma_*: dex of log g; inf where a Fisher matrix is singular",
                 "columns": {"sigma_crlb": "marginal CRLB of log g (Teff, [M/H] free), continuum known",
                             "sigma_crlb_continuum": "the same with a free continuum scale and tilt",
                             "sigma_bayes": f"posterior sigma of the linearised model with the {c['prior']} prior",
                             "sigma_bayes_continuum": "the same with a free continuum scale and tilt"},
                 "simulator": cfg.to_dict()}
        write_fisher_bounds(self.output_path("fisher_bounds"), columns, attrs, self.provenance())

        table, by_m_h, edges = self._tables(labels, snr, ids, bounds, cfg)
        summary: dict = {"spectra": path, "n_rows": n, "n_stars": int(np.unique(ids).size), "prior": c["prior"],
                         "headline": attrs["headline"], "prior_sigma_logg": prior_sigma}
        for row in table:
            for key in (f"sigma_crlb_median{primary}", f"r2_crlb{primary}", f"r2_bayes{primary}"):
                summary[f"S/N {row['snr']:.3g}: {key}"] = row[key] if row[key] is not None else "n/a"
        form = "free continuum" if c["continuum"] else "known continuum"
        figures = {"sigma_vs_snr": spectra_plots.crlb_vs_snr(table, prior_sigma, primary),
                   "r2_max_vs_snr": spectra_plots.r2_ceiling_vs_snr(table, primary),
                   "sigma_vs_snr_by_m_h": spectra_plots.crlb_by_group_vs_snr(
                       by_m_h, f"sigma_crlb_median{primary}", f"sigma_CRLB of log g by [M/H] third ({form})")}
        extra = {"ceiling": table, "ceiling_by_m_h": by_m_h, "m_h_edges": edges,
                 "settings": {"prior": c["prior"], "headline": attrs["headline"], "prior_sigma_logg": prior_sigma,
                              "snr_grouping": ("distinct values" if np.unique(snr).size <= MAX_SNR_GROUPS
                                               else f"{N_SNR_BINS} quantile bins"),
                              "simulator": cfg.to_dict()}}
        write_report(self.output_path("ceiling_report"), f"log g information ceiling (Fisher / CRLB, {form})",
                     summary, [], figures, provenance=self.provenance(), extra=extra)


# ============================================================================ log g regressors

REGRESSORS = ("cnn", "cnn_residual", "ridge", "lightgbm")
MODEL_KIND = {"cnn": "cnn", "cnn_residual": "cnn", "ridge": "ridge", "lightgbm": "lightgbm"}
NOISE_CHUNK = 1024  # rows per add_noise call when the training noise is redrawn (memory stays flat)
LABEL_UNITS = "dex (log10 of g in cm s^-2)"


def simulator_noise_fn(model):
    """The training-noise redraw of :class:`SpectraTrain`:
    :func:`calipers.spectra.simulate.redraw_noise_fn` of ``model``, ``NOISE_CHUNK`` rows at a time.
    Its ivar is the one a pipeline estimates from the *noisy* flux."""
    from calipers.spectra.simulate import redraw_noise_fn

    return redraw_noise_fn(model, NOISE_CHUNK)


class SpectraTrain(CalipersStage):
    """Train a log g regressor on a labelled spectrum set (:mod:`calipers.spectra.model`,
    :mod:`calipers.spectra.baselines`); every regressor gives a Gaussian per spectrum.

    ``regressor``:

    - ``cnn``: the 1-D CNN deep ensemble (``n_members`` members, member ``k`` with seed
      ``seed * 1000 + k``). It trains on the set's **noise-free** spectra (``model_flux``) and redraws
      the noise of every spectrum every epoch, at an S/N drawn log-uniformly in ``snr_range``, with the
      simulator's own noise model rebuilt from the set's ``simulator`` attribute
      (:func:`simulator_noise_fn`): the ivar channel always comes from the noisy flux. A set without
      ``model_flux`` or without ``simulator`` is refused, naming the file.
    - ``cnn_residual``: the same with the mean = a frozen ridge on the flux + the network's correction.
    - ``ridge``, ``lightgbm``: the baselines, fitted on the set's stored noisy ``flux`` and ``ivar``
      (a part ``validation_fraction`` of the spectra fits their width model).

    Members may be spread over MPI ranks (member ``k`` on rank ``k mod size``; the model does not
    depend on the number of ranks). Writes a model directory (:mod:`calipers.core.spectra_models`:
    JSON + state dicts, or the LightGBM booster as text; checksummed; loads without executing code)
    whose metadata holds a model card: training set, seeds, each member's history and training time,
    the device, the configuration and provenance.
    """

    name = "SpectraTrain"
    parallel = True
    inputs = [("spectra", SpectrumSetFile)]
    outputs = [("model", ModelDir)]
    config_options = CalipersStage.config_options | DEVICE_OPTION | {
        "regressor": Param(str, "cnn", msg="cnn (CNN deep ensemble), cnn_residual (ridge mean + CNN correction), "
                                           "ridge or lightgbm (baselines on the stored noisy spectra)"),
        "n_members": Param(int, 5, msg="CNN ensemble members (different seeds); ridge and lightgbm have one"),
        "max_epochs": Param(int, 30, msg="CNN: largest number of epochs per member"),
        "patience": Param(int, 5, msg="CNN: epochs without a better validation NLL before a member stops"),
        "batch_size": Param(int, 128, msg="CNN: spectra per optimisation step"),
        "learning_rate": Param(float, 2e-3, msg="CNN: peak AdamW learning rate (one-cycle schedule)"),
        "weight_decay": Param(float, 1e-4, msg="CNN: AdamW weight decay"),
        "validation_fraction": Param(float, 0.1, msg="Part of the spectra held out: the CNN's early-stopping split "
                                                     "(one fixed noise draw), the baselines' width-model split"),
        "snr_range": Param(list, [3.0, 20.0], msg="CNN: [low, high] median per-pixel S/N of the noise redrawn every "
                                                  "epoch, log-uniform per spectrum"),
        "channels": Param(list, [16, 32, 32, 64, 64], msg="CNN: output channels of each strided convolution"),
        "kernel_size": Param(int, 7, msg="CNN: convolution kernel (odd)"),
        "stem_stride": Param(int, 4, msg="CNN: stride of the first convolution (the others have 2)"),
        "hidden": Param(int, 64, msg="CNN: units of the dense layer"),
        "dropout": Param(float, 0.1, msg="CNN: dropout before the Gaussian head"),
        "ridge_alpha": Param(float, 1.0, msg="Ridge penalty: the ridge regressor's, and cnn_residual's frozen linear "
                                             "part (on the standardised label)"),
        "gbm_rebin": Param(int, 8, msg="lightgbm: pixels averaged into one feature"),
        "gbm_n_estimators": Param(int, 600, msg="lightgbm: boosting rounds"),
        "gbm_learning_rate": Param(float, 0.05, msg="lightgbm: shrinkage"),
        "gbm_num_leaves": Param(int, 31, msg="lightgbm: leaves per tree"),
        "max_stars": Param(int, 0, msg="Use at most this many spectra (the first rows; 0 = all)"),
        "aux_labels": Param(list, [], msg="CNN: other labels (meta columns, e.g. [teff, m_h]) the network also "
                                          "predicts with Gaussian heads (multi-task); SpectraEstimate writes their "
                                          "means as ancil '<label>_pred', which a calibrator can condition on"),
        "aux_weight": Param(float, 0.5, msg="CNN: weight of the auxiliary labels' NLL in the loss"),
    }

    def _where(self) -> str:
        return f"stage {self.instance_name}"

    def _train_config(self):
        from calipers.spectra.model import SpectrumTrainConfig

        c = self.config
        snr = c["snr_range"]
        if len(snr) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in snr):
            raise ConfigError(f"{self._where()}: snr_range must be [low, high], got {snr!r}")
        try:
            return SpectrumTrainConfig(max_epochs=c["max_epochs"], patience=c["patience"], batch_size=c["batch_size"],
                                       learning_rate=c["learning_rate"], weight_decay=c["weight_decay"],
                                       validation_fraction=c["validation_fraction"], snr_range=tuple(snr),
                                       ridge_alpha=c["ridge_alpha"], aux_weight=c["aux_weight"])
        except ValueError as err:
            raise ConfigError(f"{self._where()}: {err}") from err

    def _net_config(self, n_pix: int):
        from calipers.spectra.model import SpectrumNetConfig

        c = self.config
        try:
            return SpectrumNetConfig(n_pix=n_pix, channels=tuple(c["channels"]), kernel_size=c["kernel_size"],
                                     stem_stride=c["stem_stride"], hidden=c["hidden"], dropout=c["dropout"],
                                     residual_on_linear=c["regressor"] == "cnn_residual",
                                     n_aux=len(c["aux_labels"]))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{self._where()}: {err}") from err

    def validate(self):
        c = self.config
        if c["regressor"] not in REGRESSORS:
            raise ConfigError(f"{self._where()}: regressor must be one of {REGRESSORS}, got {c['regressor']!r}")
        aux = c["aux_labels"]
        if aux and (MODEL_KIND[c["regressor"]] != "cnn" or not all(isinstance(a, str) for a in aux)
                    or len(set(aux)) != len(aux) or "logg" in aux):
            raise ConfigError(f"{self._where()}: aux_labels must be distinct meta column names other than logg, for "
                              f"a CNN regressor; got {aux!r} with regressor {c['regressor']!r}")
        bad = {k: c[k] for k in ("n_members", "max_epochs", "batch_size", "stem_stride", "hidden", "gbm_rebin",
                                 "gbm_n_estimators", "gbm_num_leaves") if c[k] < 1}
        if c["patience"] < 1:
            bad["patience"] = c["patience"]
        if c["max_stars"] < 0:
            bad["max_stars"] = c["max_stars"]
        if not 0 <= c["dropout"] < 1:
            bad["dropout"] = c["dropout"]
        for k in ("learning_rate", "gbm_learning_rate", "ridge_alpha"):
            if not c[k] > 0:
                bad[k] = c[k]
        if c["weight_decay"] < 0:
            bad["weight_decay"] = c["weight_decay"]
        if bad:
            raise ConfigError(f"{self._where()}: invalid value(s) {bad} (counts, sizes and rates must be positive, "
                              "max_stars >= 0, weight_decay >= 0, dropout in [0, 1))")
        self._train_config()
        self._net_config(4096)  # the architecture itself (the set's pixel count is checked in process)

    # ------------------------------------------------------------------ input
    def _check_input(self, path: str, info: dict) -> int:
        """The number of spectra to use; the set must have finite log g labels, and the CNN its
        noise-free spectra and simulator."""
        from calipers.core.spectrum_sets import SpectrumSetError

        c = self.config
        for col in ["logg"] + c["aux_labels"]:
            if col not in info["meta_columns"]:
                raise SpectrumSetError(f"{path}: the spectrum set has no {col!r} meta column (columns: "
                                       f"{info['meta_columns']}); training needs it as a label")
        n = info["n"] if not c["max_stars"] else min(c["max_stars"], info["n"])
        if n < 10:
            raise SpectrumSetError(f"{path}: {n} spectra are too few to train on (need at least 10)")
        if MODEL_KIND[c["regressor"]] == "cnn":
            if not info["has_model_flux"]:
                raise SpectrumSetError(
                    f"{path}: regressor {c['regressor']} trains on the noise-free spectra (redrawing the noise every "
                    "epoch), but the set has no 'model_flux'; simulate it with SpectraSimulate keep_model_flux: true, "
                    "or use regressor ridge or lightgbm on the stored noisy spectra")
            if info["simulator"] is None:
                raise FileFormatError(
                    f"{path}: regressor {c['regressor']} redraws the training noise with the simulator's noise model, "
                    "but the set has no simulator configuration (attribute 'simulator'); simulate it with "
                    "SpectraSimulate, which stores it")
        return n

    def _labels(self, path: str, n: int, columns=("logg",)) -> np.ndarray:
        """The label columns [n, len(columns)] (log g first), refusing non-finite values by row."""
        from calipers.core.spectrum_sets import SpectrumSetError, read_spectrum_meta

        meta = read_spectrum_meta(path, list(columns), rows=slice(0, n))
        labels = np.stack([np.asarray(meta[k], dtype=np.float64) for k in columns], axis=1)
        bad = np.argwhere(~np.isfinite(labels))
        if bad.size:
            row, k = bad[0]
            raise SpectrumSetError(f"{path}: row {row}: {columns[k]} = {labels[row, k]}; every training label must "
                                   "be finite")
        return labels

    # ------------------------------------------------------------------ fitting
    def _train_cnn(self, path: str, info: dict, n: int) -> tuple[dict, list, dict] | None:
        """(params, member states, card part) on rank 0, None elsewhere."""
        from calipers.core.spectrum_sets import SpectrumSetError, read_spectrum_set
        from calipers.spectra.model import train_member
        from calipers.spectra.simulate import SpectrumModel

        c = self.config
        cfg = _simulator_config(info["simulator"], f"{path}: attribute 'simulator'", FileFormatError)
        model = SpectrumModel(cfg)
        clean = read_spectrum_set(path, rows=slice(0, n), columns=[], with_model_flux=True)
        if clean.wavelength.shape != model.wavelength.shape or not np.allclose(clean.wavelength, model.wavelength,
                                                                               rtol=1e-10, atol=0):
            raise SpectrumSetError(f"{path}: the set's wavelengths ({clean.wavelength.size} pixels) are not those of "
                                   "the simulator configuration stored in it; its noise cannot be redrawn")
        labels = self._labels(path, n, ["logg"] + c["aux_labels"])
        net, train = self._net_config(info["n_pix"]), self._train_config()
        device = self.torch_device()
        members = [k for k in range(c["n_members"]) if k % self.size == self.rank]
        log.info("%s: training %d of %d %s member(s) on %d noise-free spectra (noise redrawn each epoch at S/N "
                 "%s) on %s", self.instance_name, len(members), c["n_members"], c["regressor"], n,
                 list(train.snr_range), device)
        mine = {}
        for k in members:
            seed = c["seed"] * 1000 + k
            state, hist = train_member(clean.model_flux, labels, simulator_noise_fn(model), net, train, seed,
                                       device=device, progress=self.rank == 0)
            mine[k] = (state, seed, hist)
        del clean
        parts = [mine] if self.size == 1 else self.comm.gather(mine, root=0)
        if self.rank != 0:
            return None
        every = {k: v for p in parts for k, v in p.items()}
        order = range(c["n_members"])
        histories = [{"member": k, "seed": every[k][1], "seconds": every[k][2].seconds,
                      "best_epoch": every[k][2].best_epoch, "epochs": len(every[k][2].train_loss),
                      "train_loss": every[k][2].train_loss, "val_nll": every[k][2].val_nll} for k in order]
        card = {"members": histories, "device": device,
                "noise": ("redrawn every epoch from the noise-free spectra with the simulator's noise model "
                          "(SpectrumModel.add_noise, a fresh seed per epoch); ivar from the noisy flux"),
                "training_flux": "model_flux (noise-free)"}
        params = {"net": net.to_dict(), "train": train.to_dict(), "aux_labels": list(c["aux_labels"])}
        return params, [every[k][0] for k in order], card

    def _fit_baseline(self, path: str, n: int) -> tuple[dict, object, dict]:
        import time

        import torch

        from calipers.core.spectrum_sets import read_spectrum_set
        from calipers.spectra.baselines import GBMLogg, RidgeLogg

        c = self.config
        spectra = read_spectrum_set(path, rows=slice(0, n), columns=[])
        logg = self._labels(path, n)[:, 0]
        if c["regressor"] == "ridge":
            model = RidgeLogg(alpha=c["ridge_alpha"], width_fraction=c["validation_fraction"], seed=c["seed"])
        else:
            model = GBMLogg(rebin=c["gbm_rebin"], n_estimators=c["gbm_n_estimators"],
                            learning_rate=c["gbm_learning_rate"], num_leaves=c["gbm_num_leaves"],
                            width_fraction=c["validation_fraction"], seed=c["seed"],
                            n_jobs=max(1, torch.get_num_threads()))
        log.info("%s: fitting %s on %d stored noisy spectra", self.instance_name, c["regressor"], n)
        t0 = time.perf_counter()
        model.fit(spectra.flux, spectra.ivar, logg)
        seconds = time.perf_counter() - t0
        params, states = model.state()
        card = {"members": [{"member": 0, "seed": c["seed"], "seconds": seconds}], "device": "cpu",
                "noise": "the set's stored noisy flux and ivar", "training_flux": "flux (noisy, as stored)"}
        return params, states, card

    # ------------------------------------------------------------------ run
    def process(self):
        import time

        from calipers.core.spectra_models import write_spectra_model
        from calipers.core.spectrum_sets import spectrum_set_info

        c = self.config
        path = self.input_path("spectra")
        info = spectrum_set_info(path)
        n = self._check_input(path, info)
        t0 = time.perf_counter()
        kind = MODEL_KIND[c["regressor"]]
        if kind == "cnn":
            result = self._train_cnn(path, info, n)
        else:
            result = self._fit_baseline(path, n) if self.rank == 0 else None
        if self.rank == 0:
            from calipers.core.spectrum_sets import read_spectrum_wavelength

            params, states, card = result
            card = {"regressor": c["regressor"], "label": "logg", "units": LABEL_UNITS,
                    "output": "one Gaussian per member; the prediction is their equal-weight mixture",
                    "training_set": path, "n_training_spectra": int(n), "n_members": len(card["members"]),
                    "training_seconds": time.perf_counter() - t0,
                    "training_set_simulator": info["simulator"],
                    "training_set_simulation": info["attrs"].get("simulation"),
                    "config": self.config_dict(), "provenance": self.provenance()} | card
            write_spectra_model(self.output_path("model"), kind, {"params": params, "model_card": card}, states,
                                read_spectrum_wavelength(path))
            log.info("%s: %s model trained on %d spectra in %.1f s", self.instance_name, c["regressor"], n,
                     card["training_seconds"])
        if self.size > 1:
            self.comm.Barrier()


class SpectraEstimate(CalipersStage):
    """Apply a log g regressor (from ``SpectraTrain``) to a spectrum set, chunk by chunk (chunks spread
    over MPI ranks), writing a qp ``mixmod`` ensemble: per spectrum, the members' Gaussians (``means``,
    ``stds``) with equal ``weights`` 1/M (M = 1 for ridge and LightGBM).

    The ensemble's ancil holds ``star_id`` (the row number when the set has none), ``snr`` (the set's
    S/N column, or the median per-pixel S/N ``median(flux sqrt(ivar))`` when it has none),
    ``logg_mean`` and ``logg_std`` (the mixture's mean and standard deviation,
    :func:`calipers.spectra.model.mixture_moments`), ``<label>_pred`` for each auxiliary label of a
    multi-task CNN (the members' mean estimate, e.g. ``m_h_pred``: a feature for calibrators), and
    the true ``teff``, ``logg``, ``m_h`` when the set has them, so later stages judge the
    distributions without re-reading the set. A set on a
    pixel grid other than the model's is refused before anything is written, naming both.
    """

    name = "SpectraEstimate"
    parallel = True
    inputs = [("model", ModelDir), ("spectra", SpectrumSetFile)]
    outputs = [("logg_pdf", QPEnsembleFile)]
    config_options = CalipersStage.config_options | DEVICE_OPTION | {
        "chunk_size": Param(int, 4096, msg="Spectra read and written at a time (memory scales with this)"),
        "batch_size": Param(int, 512, msg="Spectra per forward pass of the CNN"),
    }

    def _model(self):
        if not hasattr(self, "_regressor"):
            from calipers.core.spectra_models import read_spectra_model

            self._regressor = read_spectra_model(self.input_path("model"))
        return self._regressor

    def validate(self):
        from calipers.core.spectrum_sets import read_spectrum_wavelength

        c = self.config
        if c["chunk_size"] < 1 or c["batch_size"] < 1:
            raise ConfigError(f"stage {self.instance_name}: chunk_size and batch_size must be >= 1, got "
                              f"{c['chunk_size']} and {c['batch_size']}")
        path = self.input_path("spectra")
        self._model().check_spectra(read_spectrum_wavelength(path), path)

    def process(self):  # ceci's execute() has already called validate(): the pixel grids agree
        import time

        import h5py
        from tqdm.auto import tqdm

        from calipers.core.catalog import chunk_ranges
        from calipers.core.spectrum_sets import LABEL_COLUMNS, read_spectrum_meta, read_spectrum_set, spectrum_set_info
        from calipers.spectra.baselines import median_snr
        from calipers.spectra.model import mixture_moments

        c = self.config
        reg = self._model()
        path = self.input_path("spectra")
        info = spectrum_set_info(path)
        have = info["meta_columns"]
        n, m = info["n"], reg.n_members
        truth = [k for k in LABEL_COLUMNS if k in have]
        has_id, has_snr = "star_id" in have, "snr" in have
        columns = (["star_id"] if has_id else []) + (["snr"] if has_snr else []) + truth
        id_dtype = np.int64
        if has_id and n:
            ids = read_spectrum_meta(path, ["star_id"], rows=slice(0, 1))["star_id"]
            id_dtype = h5py.string_dtype() if ids.dtype.kind in "OSU" else np.int64
        aux = [f"{k}_pred" for k in reg.aux_labels]
        ancil = ["star_id", "snr", "logg_mean", "logg_std"] + aux + truth
        layout = dict(meta={"pdf_name": np.array([b"mixmod"]), "pdf_version": np.array([0])},
                      data_shapes={"weights": (m,), "means": (m,), "stds": (m,)}, ancil_names=ancil,
                      ancil_dtypes={"star_id": id_dtype}, dtype=np.float64, background=True)
        device = self.torch_device()
        ranges = chunk_ranges(n, c["chunk_size"], self.rank, self.size)
        t0 = time.perf_counter()
        with self.qp_output("logg_pdf", n, c["chunk_size"], **layout) as out:
            for s, e in tqdm(ranges, desc=f"{self.instance_name} chunks", disable=self.rank != 0, leave=False):
                spectra = read_spectrum_set(path, rows=slice(s, e), columns=columns)
                means, sigmas, aux_means = reg.predict(spectra.flux, spectra.ivar, device=device,
                                                       batch_size=c["batch_size"], aux=True)
                mean, std = mixture_moments(means, sigmas)
                est = {"star_id": spectra.meta["star_id"] if has_id else np.arange(s, e, dtype=np.int64),
                       "snr": (np.asarray(spectra.meta["snr"], dtype=np.float64) if has_snr
                               else median_snr(spectra.flux, spectra.ivar)),
                       "logg_mean": mean, "logg_std": std} | dict(zip(aux, aux_means.T))
                est |= {k: np.asarray(spectra.meta[k], dtype=np.float64) for k in truth}
                data = {"weights": np.full((e - s, m), 1.0 / m), "means": np.ascontiguousarray(means.T),
                        "stds": np.ascontiguousarray(sigmas.T)}
                out.write(s, e, data, est)
        if self.rank == 0:
            dt = time.perf_counter() - t0
            log.info("%s: log g distributions of %d spectra (%s, %d member(s)) in %.1f s", self.instance_name, n,
                     reg.kind, m, dt)


# ============================================================================ model vs ceiling

class BoundComparison(GateStage):
    """How close a log g model comes to the information ceiling, per S/N and per [M/H] third, and a
    gate against leakage.

    Reads the model's log g distributions (any qp ensemble: ``SpectraEstimate``'s mixtures or their
    calibrated form) and the ``FisherBound`` catalog of the same spectrum set (row i of both = row i
    of the set: ids and S/N are compared when the ensemble's ancil carries them). The point estimate
    is each distribution's mean (on the grid ``xmin .. xmax``). Per group: R^2, RMSE, the ceiling
    R^2_max = 1 - mean(sigma^2) / Var(log g) from the catalog's ``ceiling_column`` (default the
    Bayesian bound with the continuum known), its bootstrap band, the efficiency R^2 / R^2_max and a
    bootstrap interval of R^2 (:mod:`calipers.spectra.bound`). An efficiency above
    ``max_efficiency`` (1.05) in any group fails the gate: the model knows more than the spectra
    carry, which means the truth leaked in (a channel built from noise-free data, test stars in
    training). Writes ``report.json`` (table ``comparison``, with ``model``), the R^2-vs-S/N figure
    and ``index.html``.
    """

    name = "BoundComparison"
    parallel = False
    inputs = [("logg_pdf", QPEnsembleFile), ("fisher_bounds", HDF5Catalog)]
    outputs = [("bound_comparison", ReportDir)]
    report_tag = "bound_comparison"
    config_options = CalipersStage.config_options | GATE_OPTIONS | {
        "model_name": Param(str, "", msg="Name of the model in tables and figures ('' = the stage's instance name)"),
        "ceiling_column": Param(str, "sigma_bayes", msg="Fisher-bound column whose sigma sets the ceiling: "
                                                        "sigma_bayes (continuum known, as simulated), "
                                                        "sigma_bayes_continuum, sigma_crlb, sigma_crlb_continuum"),
        "max_efficiency": Param(float, 1.05, msg="Largest allowed efficiency R^2 / R^2_max in any group (above: "
                                                 "probable leakage)"),
        "m_h_bins": Param(int, 3, msg="Quantile bins of [M/H] judged one by one (3 = thirds)"),
        "xmin": Param(float, -1.0, msg="Start of the log g grid the distribution means are taken on"),
        "xmax": Param(float, 7.0, msg="End of the grid"),
        "nx": Param(int, 801, msg="Points in the grid"),
        "n_boot": Param(int, 200, msg="Bootstrap resamples of the stars for the bands of R^2 and R^2_max"),
        "chunk_size": Param(int, 20_000, msg="Distributions per chunk"),
    }

    FISHER_COLUMNS = ("star_id", "snr", "logg", "m_h")

    def validate(self):
        super().validate()
        c = self.config
        if c["ceiling_column"] not in ("sigma_bayes", "sigma_bayes_continuum", "sigma_crlb", "sigma_crlb_continuum"):
            raise ConfigError(f"stage {self.instance_name}: ceiling_column must be a sigma column of FisherBound's "
                              f"catalog (sigma_bayes, sigma_bayes_continuum, sigma_crlb, sigma_crlb_continuum), got "
                              f"{c['ceiling_column']!r}")
        if not c["xmax"] > c["xmin"] or c["nx"] < 2 or c["m_h_bins"] < 1 or c["n_boot"] < 0 or c["chunk_size"] < 1:
            raise ConfigError(f"stage {self.instance_name}: needs xmax > xmin, nx >= 2, m_h_bins >= 1, n_boot >= 0 "
                              "and chunk_size >= 1")

    def _point_estimates(self, path: str, fisher: dict, fisher_path: str) -> np.ndarray:
        from calipers.core.catalog import chunk_ranges, compare_ids
        from calipers.core.qpio import qp_size, read_qp_rows
        from calipers.validate.metrics import grid_pdfs, grid_point_estimates

        c = self.config
        n = qp_size(path)
        if n != len(fisher["logg"]):
            raise ValueError(f"{path} holds {n} distributions but the Fisher-bound catalog {fisher_path} has "
                             f"{len(fisher['logg'])} rows: both must describe the same spectrum set, row by row")
        grid = np.linspace(c["xmin"], c["xmax"], c["nx"])
        mean = np.full(n, np.nan)
        for start, end in chunk_ranges(n, c["chunk_size"]):
            ens = read_qp_rows(path, start, end)
            ancil = ens.ancil or {}
            if "star_id" in ancil:
                compare_ids(ancil["star_id"], fisher["star_id"][start:end], start, path, fisher_path, "star_id")
            if "snr" in ancil and not np.allclose(np.asarray(ancil["snr"], dtype=float), fisher["snr"][start:end]):
                row = start + int(np.argmax(~np.isclose(np.asarray(ancil["snr"], dtype=float), fisher["snr"][start:end])))
                raise ValueError(f"{path}: row {row}: S/N {float(ancil['snr'][row - start]):g} but {fisher_path} has "
                                 f"{fisher['snr'][row]:g}: not the same rows")
            pdfs, valid = grid_pdfs(ens, grid)
            if not valid.all():
                row = start + int(np.argmax(~valid))
                raise ValueError(f"{path}: row {row}: the distribution is not finite on the grid "
                                 f"[{c['xmin']:g}, {c['xmax']:g}]")
            mean[start:end] = grid_point_estimates(pdfs, grid, ["zmean"])["zmean"]
        return mean

    def process(self):
        from calipers.core.spectrum_sets import read_fisher_bounds
        from calipers.spectra.bound import bootstrap_interval, bound_comparison, group_ceilings, r2_score
        from calipers.validate import spectra_plots
        from calipers.validate.gate import Check
        from calipers.validate.grouped import quantile_bins

        c = self.config
        path, fisher_path = self.input_path("logg_pdf"), self.input_path("fisher_bounds")
        cols, _ = read_fisher_bounds(fisher_path)
        missing = [k for k in (*self.FISHER_COLUMNS, c["ceiling_column"]) if k not in cols]
        if missing:
            raise FileFormatError(f"{fisher_path}: Fisher-bound column(s) {missing} missing (has {sorted(cols)})")
        fisher = {k: np.asarray(cols[k], dtype=float) for k in (*self.FISHER_COLUMNS, c["ceiling_column"])}
        sigma = fisher[c["ceiling_column"]]
        bad = np.flatnonzero(~np.isfinite(sigma))
        if bad.size:
            raise ValueError(f"{fisher_path}: column '{c['ceiling_column']}' is not finite in {bad.size} row(s), first "
                             f"at row {bad[0]} (a singular Fisher matrix): no ceiling for those stars")
        pred = self._point_estimates(path, fisher, fisher_path)
        model = c["model_name"] or self.instance_name
        third, edges = quantile_bins(fisher["m_h"], c["m_h_bins"])
        third_label = np.array([f"[{edges[k]:.2f}, {edges[k + 1]:.2f}]" for k in third])
        groups = {"snr": fisher["snr"], "m_h": third_label}
        ceilings = group_ceilings(sigma, fisher["logg"], groups, n_boot=c["n_boot"], seed=c["seed"])
        rows = bound_comparison(pred, fisher["logg"], groups,
                                {g: {k: v["r2_max"] for k, v in t.items()} for g, t in ceilings.items()},
                                model=model, leakage_threshold=c["max_efficiency"])
        for k, row in enumerate(rows):
            band = ceilings[row["grouping"]][row["group"]]
            sel = groups[row["grouping"]] == (float(row["group"]) if row["grouping"] == "snr" else row["group"])
            r2_lo, r2_hi = bootstrap_interval(r2_score, (pred[sel], fisher["logg"][sel]), c["n_boot"], c["seed"] + k)
            row |= {"r2_max_lo": band["lo"], "r2_max_hi": band["hi"], "r2_lo": r2_lo, "r2_hi": r2_hi}
            if row["grouping"] == "snr":
                row["snr"] = float(row["group"])
        checks = [Check(f"efficiency[{r['grouping']}={r['group']}]", r["efficiency"], "<=", c["max_efficiency"],
                        why=f"R^2 {r['r2']:.3f} against R^2_max {r['r2_max']:.3f}; above: the model knows more than "
                            "the spectra carry (probable leakage)")
                  for r in rows if r["efficiency"] is not None]
        snr_rows = [r for r in rows if r["grouping"] == "snr"]
        ceiling_rows = [{"snr": r["snr"], "r2_max": r["r2_max"], "lo": r["r2_max_lo"], "hi": r["r2_max_hi"]}
                        for r in snr_rows]
        summary = {"model": model, "n": int(pred.size), "ceiling_column": c["ceiling_column"],
                   "r2_all": r2_score(pred, fisher["logg"])}
        for r in snr_rows:
            summary[f"S/N {r['group']}: R^2 / R^2_max"] = f"{r['r2']:.4f} / {r['r2_max']:.4f} = {r['efficiency']:.3f}"
        figures = {"r2_vs_snr": spectra_plots.r2_models_vs_snr(ceiling_rows, {model: snr_rows})}
        table = html_table(rows, ["grouping", "group", "n", "r2", "r2_lo", "r2_hi", "rmse", "r2_max", "r2_max_lo",
                                  "r2_max_hi", "efficiency", "leakage"], f"{model}: R^2 against the ceiling")
        self.conclude(f"log g against its information ceiling: {model}", summary, checks, figures,
                      extra_html=table, extra={"model": model, "comparison": rows, "m_h_edges": edges.tolist()})


class SpectraReport(CalipersStage):
    """One HTML page for the stellar-spectra family: the information ceiling, every model against
    it, and the calibration of the delivered model's log g distributions.

    Reads the reports of ``FisherBound`` (``ceiling_report``), of ``BoundComparison`` for the
    delivered model (``bound_comparison``) and for the two baselines (``ridge_comparison``,
    ``lightgbm_comparison``), and of the ``DistributionGate`` of the calibrated distributions
    (``calibration_gate``). Draws the family's core figure, R^2 vs S/N of every model with the
    ceiling and its band, the efficiency per S/N, sigma_CRLB vs S/N and the coverage per S/N and per
    [M/H] third, with the tables beside them.
    """

    name = "SpectraReport"
    parallel = False
    inputs = [("ceiling_report", ReportDir), ("bound_comparison", ReportDir), ("ridge_comparison", ReportDir),
              ("lightgbm_comparison", ReportDir), ("calibration_gate", ReportDir)]
    outputs = [("spectra_report", ReportDir)]
    config_options = CalipersStage.config_options

    def _read(self, tag: str) -> dict:
        from calipers.core.provenance import read_json_object

        return read_json_object(os.path.join(self.input_path(tag), "report.json"), FileFormatError)

    def process(self):
        from calipers.core.report import write_report
        from calipers.validate import plots, spectra_plots

        ceiling = self._read("ceiling_report")
        gate = self._read("calibration_gate")
        comparisons = [self._read(t) for t in ("bound_comparison", "ridge_comparison", "lightgbm_comparison")]
        for tag, rep in zip(("bound_comparison", "ridge_comparison", "lightgbm_comparison"), comparisons):
            if "comparison" not in rep:
                raise FileFormatError(f"{self.input_path(tag)}/report.json: no 'comparison' table; is it a "
                                      "BoundComparison report?")
        if "coverage_by_group" not in gate:
            raise FileFormatError(f"{self.input_path('calibration_gate')}/report.json: no 'coverage_by_group' table; "
                                  "is it a DistributionGate report?")
        models = {rep["model"]: [r for r in rep["comparison"] if r["grouping"] == "snr"] for rep in comparisons}
        first = next(iter(models.values()))
        ceiling_rows = [{"snr": r["snr"], "r2_max": r["r2_max"], "lo": r["r2_max_lo"], "hi": r["r2_max_hi"]}
                        for r in first]
        table = ceiling.get("ceiling", [])
        prior_sigma = ceiling.get("settings", {}).get("prior_sigma_logg")
        headline = "_continuum" if ceiling.get("settings", {}).get("headline") == "continuum" else ""
        figures = {"r2_vs_snr": spectra_plots.r2_models_vs_snr(ceiling_rows, models),
                   "sigma_crlb_vs_snr": spectra_plots.crlb_vs_snr(table, prior_sigma, headline),
                   "coverage_by_group": plots.grouped_coverage_figure(gate["coverage_by_group"])}
        summary = {"calibration_gate": "passed" if gate.get("passed") else "FAILED"}
        for rep in comparisons:
            summary[f"{rep['model']}: bound comparison"] = "passed" if rep.get("passed") else "FAILED (leakage)"
            for r in rep["comparison"]:
                if r["grouping"] == "snr" and r["efficiency"] is not None:
                    summary[f"{rep['model']} S/N {r['group']}: efficiency"] = r["efficiency"]
        sections = [html_table([r for rep in comparisons for r in rep["comparison"]],
                               ["model", "grouping", "group", "n", "r2", "rmse", "r2_max", "efficiency", "leakage"],
                               "R^2, RMSE and efficiency per S/N and per [M/H] third"),
                    html_table(gate["coverage_by_group"], ["grouping", "group", "n", "coverage68", "coverage95", "pit_ks"],
                               "Calibrated log g distributions: coverage and PIT KS per group"),
                    html_table(table, [k for k in ("snr", "n", "sigma_crlb_median", "sigma_crlb_median_continuum",
                                                   "r2_bayes", "r2_bayes_continuum") if table and k in table[0]],
                               "Information ceiling per S/N (FisherBound)")]
        write_report(self.output_path("spectra_report"), "Stellar spectra: log g against its information ceiling",
                     summary, [], figures, provenance=self.provenance(), extra_html="\n".join(sections),
                     extra={"models": list(models), "comparison": [r for rep in comparisons for r in rep["comparison"]],
                            "coverage_by_group": gate["coverage_by_group"]})
