"""p(z) metrics from sufficient statistics, accumulated chunk by chunk and merged across ranks.

A validation gate over a survey catalog must not gather every p(z) (or every PIT) on one
process. :class:`PZMetricAccumulator` keeps, for each chunk it has seen, only

- integer histograms: the PIT on a fine grid (``pit_bins`` bins), the normalised residual
  dz/(1+z) of the grid mode (``dz_bins`` bins over ``dz_range`` plus under/overflow), and the
  interval-probability reliability bins;
- per-chunk floating-point partial sums (CDE-loss terms, CRPS, reliability confidences), all
  computed with the one CDF convention of :mod:`calipers.gridpdf`;
- counts of truths outside the grid (their PIT is 0 or 1 and their density 0).

Merging accumulators concatenates their per-chunk partials; :meth:`result` adds them with
:func:`math.fsum`, which is exactly rounded and so independent of the order. Chunks are keyed
by their first row, so any split of the same chunks over any number of ranks gives results
equal bit for bit to the serial run.

Resolution: statistics that need the sorted values are computed from the histograms. The PIT
KS distance is evaluated at the bin edges, so it can be low by at most the largest fraction of
rows in one PIT bin (reported as ``pit_ks_resolution``); the central-interval coverages are
exact whenever (1 - level)/2 is a multiple of 1/pit_bins (true for 68% and 95% with the
default 20000 bins); sigma_IQR, bias and the 3-sigma outlier rate are quantiles of the dz
histogram, exact to its bin width (1e-5 by default).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from calipers.validate.classification import interval_outcomes, interval_probabilities
from calipers.gridpdf import cdf_at, crps_values, grid_cdf, outside_grid, pdf_at


@dataclass
class PZMetricAccumulator:
    """Streaming, mergeable p(z) metrics on a common redshift grid."""

    zgrid: np.ndarray
    levels: tuple = (0.68, 0.95)
    reliability_edges: tuple = (0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 2.0, 3.0)
    pit_bins: int = 20_000
    reliability_bins: int = 10
    dz_range: tuple = (-0.5, 0.5)
    dz_bins: int = 100_000
    n: int = 0
    n_invalid: int = 0
    n_below: int = 0  # valid rows whose truth lies below the grid (PIT 0, density 0)
    n_above: int = 0  # ... above the grid (PIT 1, density 0)
    pit_counts: np.ndarray = field(default=None, repr=False)
    dz_counts: np.ndarray = field(default=None, repr=False)  # [underflow, bins..., overflow]
    rel_counts: np.ndarray = field(default=None, repr=False)
    rel_hits: np.ndarray = field(default=None, repr=False)
    partials: dict = field(default_factory=dict, repr=False)  # chunk start -> float64 vector of sums

    # order of the per-chunk partial sums
    _SUMS = ("int_p2", "p_true", "crps")

    def __post_init__(self):
        self.zgrid = np.asarray(self.zgrid, dtype=float)
        self.levels = tuple(self.levels)
        self.reliability_edges = tuple(float(e) for e in self.reliability_edges)
        if self.pit_counts is None:
            self.pit_counts = np.zeros(self.pit_bins, dtype=np.int64)
        if self.dz_counts is None:
            self.dz_counts = np.zeros(self.dz_bins + 2, dtype=np.int64)
        if self.rel_counts is None:
            self.rel_counts = np.zeros(self.reliability_bins, dtype=np.int64)
            self.rel_hits = np.zeros(self.reliability_bins, dtype=np.int64)

    # ------------------------------------------------------------------ accumulate
    def update(self, key: int, pdfs: np.ndarray, valid: np.ndarray, ztrue: np.ndarray) -> None:
        """Add one chunk: ``pdfs`` (rows on ``zgrid``, normalised; NaN rows allowed where not
        ``valid``) and their true redshifts. ``key`` (the chunk's first row) must be unique."""
        if key in self.partials:
            raise ValueError(f"chunk {key} was already added")
        ztrue = np.asarray(ztrue, dtype=float)
        ok = np.asarray(valid, dtype=bool) & np.isfinite(ztrue)
        self.n += len(ztrue)
        self.n_invalid += int((~ok).sum())
        rel_conf = np.zeros(self.reliability_bins)
        if not ok.any():
            self.partials[key] = np.concatenate([np.zeros(len(self._SUMS)), rel_conf])
            return
        p, z = pdfs[ok], ztrue[ok]
        g = self.zgrid
        cdf = grid_cdf(p, g)
        pit = cdf_at(p, g, z, cdf)
        self.pit_counts += np.bincount(self._pit_index(pit), minlength=self.pit_bins)
        below, above = outside_grid(z, g)
        self.n_below += int(below.sum())
        self.n_above += int(above.sum())
        sums = [np.trapezoid(p ** 2, g, axis=1).sum(), pdf_at(p, g, z).sum(), crps_values(p, g, z, cdf).sum()]
        dzn = (g[np.argmax(p, axis=1)] - z) / (1 + z)
        self.dz_counts += np.bincount(self._dz_index(dzn), minlength=self.dz_bins + 2)
        prob = interval_probabilities(p, g, self.reliability_edges, cdf).ravel()
        hit = interval_outcomes(z, self.reliability_edges).ravel().astype(np.int64)
        b = np.clip((prob * self.reliability_bins).astype(int), 0, self.reliability_bins - 1)
        self.rel_counts += np.bincount(b, minlength=self.reliability_bins)
        self.rel_hits += np.bincount(b, hit, self.reliability_bins).astype(np.int64)
        rel_conf = np.bincount(b, prob, self.reliability_bins)
        self.partials[key] = np.concatenate([np.asarray(sums, dtype=float), rel_conf])

    def _pit_index(self, pit: np.ndarray) -> np.ndarray:
        return np.clip((pit * self.pit_bins).astype(np.int64), 0, self.pit_bins - 1)

    def _dz_index(self, dzn: np.ndarray) -> np.ndarray:
        lo, hi = self.dz_range
        i = np.floor((dzn - lo) / (hi - lo) * self.dz_bins).astype(np.int64) + 1
        return np.clip(i, 0, self.dz_bins + 1)

    def merge(self, other: "PZMetricAccumulator") -> "PZMetricAccumulator":
        """Add another accumulator's chunks (same grid and binning) into this one."""
        same = (np.array_equal(self.zgrid, other.zgrid) and self.levels == other.levels
                and self.reliability_edges == other.reliability_edges and self.pit_bins == other.pit_bins
                and self.dz_bins == other.dz_bins and self.dz_range == other.dz_range
                and self.reliability_bins == other.reliability_bins)
        if not same:
            raise ValueError("cannot merge metric accumulators with different grids or binning")
        dup = set(self.partials) & set(other.partials)
        if dup:
            raise ValueError(f"chunks {sorted(dup)[:5]} were added on both sides")
        self.n += other.n
        self.n_invalid += other.n_invalid
        self.n_below += other.n_below
        self.n_above += other.n_above
        self.pit_counts += other.pit_counts
        self.dz_counts += other.dz_counts
        self.rel_counts += other.rel_counts
        self.rel_hits += other.rel_hits
        self.partials.update(other.partials)
        return self

    # ------------------------------------------------------------------ results
    def _sum(self, j: int) -> float:
        return math.fsum(self.partials[k][j] for k in sorted(self.partials))

    def pit_cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(bin edges, empirical PIT CDF at the edges)."""
        m = int(self.pit_counts.sum())
        edges = np.linspace(0.0, 1.0, self.pit_bins + 1)
        return edges, np.concatenate([[0.0], np.cumsum(self.pit_counts) / max(m, 1)])

    def coverage(self, level: float) -> float:
        """Fraction of valid rows with PIT inside the central ``level`` interval."""
        m = int(self.pit_counts.sum())
        lo = int(round((1 - level) / 2 * self.pit_bins))
        hi = int(round((1 - (1 - level) / 2) * self.pit_bins))
        return float(self.pit_counts[lo:hi].sum() / max(m, 1))

    def _dz_quantile(self, q: float) -> float:
        c = np.cumsum(self.dz_counts)
        m = c[-1]
        lo, hi = self.dz_range
        width = (hi - lo) / self.dz_bins
        target = q * m
        i = int(np.searchsorted(c, target, side="left"))
        if i == 0:
            return lo
        if i == self.dz_bins + 1:
            return hi
        before = c[i - 1]
        frac = (target - before) / max(self.dz_counts[i], 1)
        return lo + (i - 1 + frac) * width

    def _dz_fraction_beyond(self, t: float) -> float:
        """Fraction of |dz/(1+z)| > t (to the bin width)."""
        lo, hi = self.dz_range
        m = max(int(self.dz_counts.sum()), 1)
        centers = lo + (np.arange(self.dz_bins) + 0.5) * (hi - lo) / self.dz_bins
        inner = self.dz_counts[1:-1][np.abs(centers) > t].sum()
        return float((inner + self.dz_counts[0] + self.dz_counts[-1]) / m)

    def result(self) -> dict:
        """Every metric, with the NaN policy: invalid rows are counted, never zero-filled."""
        m = self.n - self.n_invalid
        out = {"n": int(self.n), "n_invalid": int(self.n_invalid), "n_truth_below_grid": int(self.n_below),
               "n_truth_above_grid": int(self.n_above)}
        if m == 0:
            raise ValueError("no valid rows: every p(z) or true redshift is non-finite")
        out["cde_loss"] = (self._sum(0) - 2 * self._sum(1)) / m
        out["crps"] = self._sum(2) / m
        edges, cdf = self.pit_cdf()
        dev = np.abs(cdf - edges)
        out["pit_ks"] = float(dev.max())
        out["pit_ks_resolution"] = float(self.pit_counts.max() / m)
        # Cramer-von Mises T = 1/(12m) + sum_i ((2i - 1)/(2m) - u_(i))^2 with the u in one bin at its
        # centre: closed form for the run of ranks i = a..b sharing a bin
        centers = (edges[:-1] + edges[1:]) / 2
        c = self.pit_counts.astype(float)
        b = np.cumsum(c)
        a = b - c + 1
        used = c > 0
        xbar = ((2 * a - 1) + (2 * b - 1)) / (4 * m)
        t = c * (xbar - centers) ** 2 + c * (c ** 2 - 1) / (12 * m ** 2)
        out["pit_cvm"] = float(1 / (12 * m) + t[used].sum())
        tail = int(round(1e-4 * self.pit_bins))
        out["pit_outlier"] = float((self.pit_counts[:tail].sum() + self.pit_counts[self.pit_bins - tail:].sum()) / m)
        for lev in self.levels:
            out[f"cov{int(round(100 * lev))}"] = self.coverage(lev)
        q25, q50, q75 = (self._dz_quantile(q) for q in (0.25, 0.5, 0.75))
        sig = (q75 - q25) / 1.349
        out |= {"sigma_iqr": float(sig), "bias": float(q50),
                "outlier_3sig": self._dz_fraction_beyond(max(3 * sig, 0.06)),
                "outlier_015": self._dz_fraction_beyond(0.15)}
        out |= self.reliability()
        return out

    def reliability(self) -> dict:
        """ECE, MCE and the reliability curve of the interval probabilities."""
        k = self.reliability_bins
        count = self.rel_counts
        conf = np.array([self._sum(len(self._SUMS) + j) for j in range(k)]) / np.maximum(count, 1)
        acc = self.rel_hits / np.maximum(count, 1)
        gap = np.abs(acc - conf)
        used = count > 0
        total = max(int(count.sum()), 1)
        return {"ece": float(np.sum(count[used] * gap[used]) / total),
                "mce": float(gap[used].max()) if used.any() else float("nan"),
                "reliability_count": count.tolist(), "reliability_confidence": conf.tolist(),
                "reliability_accuracy": acc.tolist()}
