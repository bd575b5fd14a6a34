"""n(z) per tomographic bin as the stack of p(z), with realizations that carry its uncertainty.

Two sources of n(z) uncertainty are modelled, separately or together (``method``):

- ``bootstrap`` (galaxy bootstrap): each realization re-weights the galaxies of a bin with
  independent Poisson(1) counts (the streaming form of resampling with replacement) and stacks
  their p(z). It captures the *sample variance of the stack*: how much n(z) would change with a
  different draw of galaxies of the same population. It does not know whether the p(z)
  themselves are right.
- ``sample`` (p(z) sampling): each realization draws one redshift per galaxy from its own p(z)
  and histograms the draws. It captures the *shot noise of finite galaxy numbers given the p(z)*:
  the scatter of the true n(z) of this very sample if each p(z) were the exact posterior.
- ``both``: Poisson weights and p(z) draws together.

Neither captures a *systematic* error of the p(z) (a bias common to all galaxies): that is what
calibration and the n(z) gate against spectroscopic truth are for.

Everything is accumulated chunk by chunk (:class:`NZAccumulator`), with the random numbers of a
chunk drawn from a generator seeded by ``(seed, first row of the chunk)``, so the result does not
depend on how chunks are spread over MPI ranks (partial accumulators add up exactly).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from calipers.gridpdf import inverse_cdf

METHODS = ("bootstrap", "sample", "both")


def _normalise_rows(p: np.ndarray, zgrid: np.ndarray) -> np.ndarray:
    norm = np.trapezoid(p, zgrid, axis=-1)
    return p / np.where(norm > 0, norm, 1.0)[..., None]


def _deposit(z: np.ndarray, weights: np.ndarray, zgrid: np.ndarray) -> np.ndarray:
    """Cloud-in-cell deposit of weighted points on a uniform grid (sum of weights preserved)."""
    dz = zgrid[1] - zgrid[0]
    x = np.clip((z - zgrid[0]) / dz, 0, len(zgrid) - 1 - 1e-9)
    i = x.astype(np.int64)
    f = x - i
    out = np.bincount(i, weights * (1 - f), minlength=len(zgrid))
    out += np.bincount(i + 1, weights * f, minlength=len(zgrid) + 1)[: len(zgrid)]
    return out


@dataclass
class NZAccumulator:
    """Accumulate n(z) per bin and its realizations over chunks of (p(z) on ``zgrid``, bin index)."""

    zgrid: np.ndarray
    n_bins: int
    n_realizations: int = 100
    method: str = "bootstrap"
    seed: int = 0
    sums: np.ndarray = field(init=False, repr=False)
    counts: np.ndarray = field(init=False, repr=False)
    real_sums: np.ndarray = field(init=False, repr=False)
    real_weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        self.zgrid = np.asarray(self.zgrid, dtype=float)
        dz = np.diff(self.zgrid)
        if len(self.zgrid) < 3 or np.any(dz <= 0) or not np.allclose(dz, dz[0], rtol=1e-6):
            raise ValueError("zgrid must be uniform and increasing, with at least 3 points")
        nz = len(self.zgrid)
        self.sums = np.zeros((self.n_bins, nz))
        self.counts = np.zeros(self.n_bins, dtype=np.int64)
        self.real_sums = np.zeros((self.n_realizations, self.n_bins, nz))
        self.real_weights = np.zeros((self.n_realizations, self.n_bins))

    def add(self, pdfs: np.ndarray, bins: np.ndarray, start: int) -> None:
        """Add a chunk: densities (n, len(zgrid)), bin indices (n,) (-1 = in no bin), and the
        catalog row of the chunk's first galaxy (seeds its random numbers)."""
        p = np.asarray(pdfs, dtype=float)
        bins = np.asarray(bins)
        if p.shape != (len(bins), len(self.zgrid)):
            raise ValueError(f"pdfs must be (n, {len(self.zgrid)}) with one bin index per row, got {p.shape} "
                             f"and {bins.shape}")
        if np.any(bins >= self.n_bins) or np.any(bins < -1):
            bad = np.flatnonzero((bins >= self.n_bins) | (bins < -1))
            raise ValueError(f"bin index out of range [-1, {self.n_bins - 1}] at row {start + bad[0]}")
        used = bins >= 0
        if np.any(~np.all(np.isfinite(p[used]), axis=1)) or np.any(p[used] < 0):
            rows = np.flatnonzero(used & ~(np.all(np.isfinite(p), axis=1) & np.all(p >= 0, axis=1)))
            raise ValueError(f"p(z) negative or not finite in {rows.size} binned row(s), first at row {start + rows[0]}")
        p = _normalise_rows(p, self.zgrid)
        rng = np.random.default_rng([self.seed, start])
        for b in range(self.n_bins):
            sel = np.flatnonzero(bins == b)
            if sel.size == 0:
                continue
            pb = p[sel]
            self.sums[b] += pb.sum(0)
            self.counts[b] += sel.size
            if self.method == "sample":
                w = np.ones((self.n_realizations, sel.size))
            else:
                w = rng.poisson(1.0, (self.n_realizations, sel.size)).astype(float)
            self.real_weights[:, b] += w.sum(1)
            if self.method == "bootstrap":
                self.real_sums[:, b] += w @ pb
                continue
            u = rng.random((self.n_realizations, sel.size))
            draws = inverse_cdf(pb, self.zgrid, u.T).T  # one redshift per galaxy from its (piecewise-linear) p(z)
            dz = self.zgrid[1] - self.zgrid[0]
            for r in range(self.n_realizations):
                self.real_sums[r, b] += _deposit(draws[r], w[r], self.zgrid) / dz

    def merge(self, other: NZAccumulator) -> None:
        """Add another accumulator's sums (e.g. another MPI rank's)."""
        self.sums += other.sums
        self.counts += other.counts
        self.real_sums += other.real_sums
        self.real_weights += other.real_weights

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(fiducial n(z) (n_bins, nz), realizations (n_realizations, n_bins, nz)), each normalised."""
        empty = np.flatnonzero(self.counts == 0)
        if empty.size:
            raise ValueError(f"tomographic bin(s) {empty.tolist()} hold no galaxies; change the bin edges")
        fid = _normalise_rows(self.sums / self.counts[:, None], self.zgrid)
        real = _normalise_rows(self.real_sums / np.maximum(self.real_weights, 1)[..., None], self.zgrid)
        return fid, real


def nz_mean_z(nz: np.ndarray, zgrid: np.ndarray) -> np.ndarray:
    """Mean redshift of each n(z) (last axis on ``zgrid``)."""
    return np.trapezoid(nz * zgrid, zgrid, axis=-1) / np.trapezoid(nz, zgrid, axis=-1)


def truth_nz(ztrue: np.ndarray, bins: np.ndarray, n_bins: int, zgrid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True n(z) per bin (cloud-in-cell histogram on ``zgrid``, normalised) and true mean z per bin."""
    z = np.asarray(ztrue, dtype=float)
    nz = np.zeros((n_bins, len(zgrid)))
    mean = np.full(n_bins, np.nan)
    for b in range(n_bins):
        sel = (bins == b) & np.isfinite(z)
        if sel.any():
            nz[b] = _deposit(z[sel], np.ones(sel.sum()), zgrid)
            mean[b] = z[sel].mean()
    return _normalise_rows(nz, zgrid), mean
