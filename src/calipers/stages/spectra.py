"""Stellar-spectra stages (issue 19): simulate PFS red-arm spectra at one or several S/N values, and
measure the information ceiling of a log g regression on them (Fisher / Cramer-Rao bounds).

The science lives in :mod:`calipers.spectra` (simulator, Fisher bounds) and the figures in
:mod:`calipers.validate.spectra_plots`; the files in :mod:`calipers.core.spectrum_sets`. These stages
read, configure, parallelise and write.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from calipers.core.errors import ConfigError, FileFormatError
from calipers.core.file_types import HDF5Catalog, ReportDir, SpectrumSetFile
from calipers.core.stage import CalipersStage, Param

log = logging.getLogger(__name__)

SNR_DISTRIBUTIONS = ("fixed", "log_uniform")
PRIORS = ("gaussian", "cosine")
ROW_ORDER = ("star-major: the rows of a star are adjacent, one per value of 'snr' in the order given; "
             "row = (star_id - start) * len(snr) + k")
MAX_SNR_GROUPS = 20  # more distinct S/N values than this: the ceiling table uses S/N quantile bins
N_SNR_BINS = 8
FLUX_TOLERANCE = 1e-3  # stored model_flux vs the float64 recomputation, relative to the flux scale


def _rank_ranges(n: int, block: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous, block-aligned range [start, end) of ``n`` items that ``rank`` handles."""
    n_blocks = -(-n // block)
    per = -(-n_blocks // size)
    start = min(rank * per * block, n)
    return start, min((rank + 1) * per * block, n)


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
        lo, hi = _rank_ranges(n, chunk, self.rank, self.size)
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
