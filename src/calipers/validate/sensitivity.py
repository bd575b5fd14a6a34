"""Sensitivity of photo-z p(z) to their input photometry (arrays and a callable in, a table out).

A photo-z model is re-run on perturbed copies of the same galaxies and the change of what a
cosmology analysis uses is reported:

- **noise**: every detected magnitude redrawn as ``m + err * N(0, 1)`` (``n_noise`` seeded draws;
  the errors passed on unchanged). The input already carries one noise realisation, so a draw
  doubles the noise variance: the shifts measure how strongly the estimates follow noise of the
  size the catalog states, and a mean shift beyond its standard error is a noise bias of n(z);
- **zero point**: a ``+zero_point`` and a ``-zero_point`` magnitude offset of one band's detected
  magnitudes, for each band (2 x n_bands cases), and optionally of all bands together (a grey
  shift: the colours do not move). 0.02 mag is 2-4 times the LSST calibration requirements
  (~0.01 mag absolute, ~0.005 mag band-to-band), and shifts of this size act about linearly,
  so a result scales down to the requirement.

Non-detections (magnitude NaN, +-inf or ``|m| >= sentinel_abs``, as in
:mod:`calipers.photoz.preprocess`) are never touched; a detected magnitude whose error is missing
(NaN, inf or <= 0) is not redrawn (counted in ``n_not_redrawn``).

For each perturbation the table gives, for the point estimate ``z_p`` (the median of p(z) by
default), the median and the 68th / 95th percentiles of ``|dz_p| / (1 + z_p)`` and its mean
signed value; the median relative change of the central 68% width; and the shift of the
sample's n(z) mean - the mean of the per-galaxy p(z) means, which is the mean of the stacked
n(z), the quantity whose error enters cosmology - with its standard error over galaxies.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from calipers.photoz.mixture import mixture_point_estimates
from calipers.photoz.preprocess import missing_errors, nondetected

# (magnitudes (n, n_bands), errors (n, n_bands)) -> mixture (weights, means, stds), each (n, K),
# as DeepEnsemble.predict returns it
MixturePredictor = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]

POINTS = ("zmedian", "zmean", "zmode")


@dataclass
class PerturbationShift:
    """How the estimates of one perturbation moved (see the module docstring).

    ``name``: ``noise``, ``<band>+<offset>``, ``<band>-<offset>`` or ``all+<offset>``/``all-<offset>``;
    ``band``: the band shifted (``all`` for every band, ``""`` for noise); ``offset``: the
    magnitude offset (0 for noise); ``n_draws``: noise draws pooled in the row (1 otherwise).
    ``point_shift_*``: percentiles of ``|dz_p| / (1 + z_p)``; ``point_bias``: mean of
    ``dz_p / (1 + z_p)``; ``width_change_median``: median of ``width / width_0 - 1`` (central 68%
    interval); ``nz_mean_shift``: change of the mean of the per-galaxy p(z) means (redshift);
    ``nz_mean_shift_error``: its standard error, the spread of the per-galaxy shifts / sqrt(their
    number)."""

    name: str
    kind: str
    band: str
    offset: float
    n_draws: int
    point_shift_median: float
    point_shift_p68: float
    point_shift_p95: float
    point_bias: float
    width_change_median: float
    nz_mean_shift: float
    nz_mean_shift_error: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PhotometrySensitivity:
    """The result of :func:`photometry_sensitivity`: one :class:`PerturbationShift` per
    perturbation (``rows``), the unperturbed sample's n(z) mean and the settings."""

    bands: list[str]
    point: str
    zero_point: float
    n_noise: int
    seed: int
    n_galaxies: int
    nz_mean: float
    n_nondetected: dict[str, int]
    n_not_redrawn: dict[str, int]
    rows: list[PerturbationShift] = field(default_factory=list)

    def row(self, name: str) -> PerturbationShift:
        """The row named ``name`` (``KeyError`` listing the names otherwise)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no perturbation {name!r}; have {[r.name for r in self.rows]}")

    def worst(self, metric: str = "nz_mean_shift", kind: str | None = None) -> PerturbationShift | None:
        """The row (of ``kind``, ``noise`` or ``zero_point``, or of any kind) with the largest
        absolute value of ``metric`` (a :class:`PerturbationShift` field); None when there is none."""
        rows = [r for r in self.rows if kind is None or r.kind == kind]
        return max(rows, key=lambda r: abs(getattr(r, metric))) if rows else None

    @property
    def worst_nz_mean(self) -> PerturbationShift | None:
        """The perturbation with the largest |n(z) mean shift|."""
        return self.worst("nz_mean_shift")

    @property
    def worst_point_p68(self) -> PerturbationShift | None:
        """The perturbation with the largest 68th percentile of |dz_p| / (1 + z_p)."""
        return self.worst("point_shift_p68")

    @property
    def worst_band(self) -> str | None:
        """The single band whose zero-point shifts (+ or -) move the n(z) mean most (None when no
        zero-point rows were run)."""
        single = [r for r in self.rows if r.kind == "zero_point" and r.band in self.bands]
        return max(single, key=lambda r: abs(r.nz_mean_shift)).band if single else None

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "rows"}
        worst, worst_p68 = self.worst_nz_mean, self.worst_point_p68
        return out | {
            "worst_band": self.worst_band,
            "worst_nz_mean_perturbation": worst.name if worst else None,
            "max_abs_nz_mean_shift": abs(worst.nz_mean_shift) if worst else float("nan"),
            "worst_point_shift_perturbation": worst_p68.name if worst_p68 else None,
            "max_point_shift_p68": worst_p68.point_shift_p68 if worst_p68 else float("nan"),
            "rows": [r.to_dict() for r in self.rows],
        }


def _summaries(predict: MixturePredictor, mags: np.ndarray, errs: np.ndarray, point: str, what: str,
               threads: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point estimate, central 68% width, p(z) mean) per galaxy, checked finite."""
    out = predict(mags, errs)
    if not (isinstance(out, tuple | list) and len(out) == 3):
        raise TypeError(f"{what}: the predictor must return (weights, means, stds), got {type(out).__name__}")
    w, mu, s = (np.asarray(a, dtype=np.float64) for a in out)
    n = len(mags)
    if w.ndim != 2 or w.shape[0] != n or mu.shape != w.shape or s.shape != w.shape:
        raise ValueError(f"{what}: the predictor returned mixture arrays of shapes {w.shape}, {mu.shape}, "
                         f"{s.shape}; expected three ({n}, K) arrays")
    est = mixture_point_estimates(w, mu, s, which=tuple(dict.fromkeys((point, "zmean", "zlo68", "zhi68"))), threads=threads)
    zp, width, zmean = est[point], est["zhi68"] - est["zlo68"], est["zmean"]
    bad = np.flatnonzero(~(np.isfinite(zp) & np.isfinite(width) & np.isfinite(zmean)) | ~(width > 0))
    if bad.size:
        raise ValueError(f"{what}: {bad.size} galaxy(ies) have a non-finite point estimate or mean, or a zero "
                         f"68% width, first at row {bad[0]}")
    return zp, width, zmean


def photometry_sensitivity(predict: MixturePredictor, mags: np.ndarray, errs: np.ndarray, bands: Sequence[str],
                           zero_point: float = 0.02, n_noise: int = 1, all_bands: bool = True, seed: int = 0,
                           point: str = "zmedian", sentinel_abs: float = 90.0, threads: int | None = None
                           ) -> PhotometrySensitivity:
    """Perturb the photometry within its errors and by zero-point offsets, re-estimate, and
    report how far point estimates, widths and the n(z) mean move.

    Parameters
    ----------
    predict : callable
        ``predict(mags, errs) -> (weights, means, stds)``, the Gaussian-mixture p(z) of each
        galaxy, each (n, K) (e.g. ``DeepEnsemble.predict``). It receives copies of ``mags`` (with
        ``mags``' dtype) and ``errs``, never the caller's arrays.
    mags, errs : (n, n_bands) arrays
        Magnitudes and their 1-sigma errors (mag), in the order of ``bands``.
    bands : list of str
        Band names (used in the row names).
    zero_point : float
        Zero-point offset (mag) applied with either sign to each band; 0 runs no zero-point rows.
    n_noise : int
        Noise redraws, pooled into one ``noise`` row; 0 runs none.
    all_bands : bool
        Also shift every band together by +-``zero_point`` (rows ``all+..``, ``all-..``).
    seed : int
        Seed of the noise draws.
    point : str
        Point estimate of p(z): ``zmedian`` (default), ``zmean`` or ``zmode``.
    sentinel_abs : float
        ``|m| >=`` this is a non-detection (left untouched).
    threads : int, optional
        Threads of the point-estimate kernels (see :func:`calipers.photoz.mixture.in_threads`).

    Returns
    -------
    PhotometrySensitivity
        Rows in the order: noise, then per band ``+`` and ``-``, then ``all``.

    Raises
    ------
    ValueError
        Bad shapes or settings; a predictor output with non-finite values (naming the
        perturbation and the first row); a point estimate <= -1.
    """
    mags, errs = np.asarray(mags), np.asarray(errs)
    bands = [str(b) for b in bands]
    if mags.ndim != 2 or errs.shape != mags.shape or mags.shape[1] != len(bands) or len(mags) == 0:
        raise ValueError(f"expected non-empty magnitudes and errors of shape (n, {len(bands)}) for bands {bands}; "
                         f"got {mags.shape} and {errs.shape}")
    if point not in POINTS:
        raise ValueError(f"point must be one of {POINTS}, got {point!r}")
    if not (np.isfinite(zero_point) and zero_point >= 0):
        raise ValueError(f"zero_point must be a finite offset >= 0 (mag), got {zero_point}")
    if isinstance(n_noise, bool) or int(n_noise) != n_noise or n_noise < 0:
        raise ValueError(f"n_noise must be an integer >= 0, got {n_noise!r}")
    if n_noise == 0 and zero_point == 0:
        raise ValueError("nothing to perturb: n_noise is 0 and zero_point is 0")
    dtype = mags.dtype if mags.dtype.kind == "f" else np.dtype(np.float64)
    detected = ~nondetected(mags, sentinel_abs)
    redrawn = detected & ~missing_errors(errs)
    n = len(mags)

    zp0, width0, zmean0 = _summaries(predict, mags.astype(dtype, copy=True), errs.copy(), point, "unperturbed",
                                     threads)
    if np.any(zp0 <= -1):
        raise ValueError(f"unperturbed point estimate <= -1 at row {np.flatnonzero(zp0 <= -1)[0]}; "
                         "|dz|/(1+z) is undefined")
    result = PhotometrySensitivity(
        bands=bands, point=point, zero_point=float(zero_point), n_noise=int(n_noise), seed=int(seed), n_galaxies=n,
        nz_mean=float(zmean0.mean()),
        n_nondetected={b: int(k) for b, k in zip(bands, (~detected).sum(0))},
        n_not_redrawn={b: int(k) for b, k in zip(bands, (detected & ~redrawn).sum(0))})

    def shift_row(name, kind, band, offset, perturbed_list):
        rel, bias, width, dmean = [], [], [], []
        for perturbed in perturbed_list:
            zp, w, zm = _summaries(predict, perturbed, errs.copy(), point, f"perturbation {name}", threads)
            dz = (zp - zp0) / (1 + zp0)
            rel.append(np.abs(dz))
            bias.append(dz)
            width.append(w / width0 - 1)
            dmean.append(zm - zmean0)
        rel, width, dmean = np.concatenate(rel), np.concatenate(width), np.concatenate(dmean)
        p50, p68, p95 = np.percentile(rel, [50, 68, 95])
        error = float(dmean.std(ddof=1) / np.sqrt(dmean.size)) if dmean.size > 1 else float("nan")
        result.rows.append(PerturbationShift(
            name=name, kind=kind, band=band, offset=float(offset), n_draws=len(perturbed_list),
            point_shift_median=float(p50), point_shift_p68=float(p68), point_shift_p95=float(p95),
            point_bias=float(np.concatenate(bias).mean()), width_change_median=float(np.median(width)),
            nz_mean_shift=float(dmean.mean()), nz_mean_shift_error=error))

    if n_noise:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(int(n_noise)):
            eps = rng.standard_normal(mags.shape)
            with np.errstate(invalid="ignore"):
                draws.append(np.where(redrawn, mags + errs * eps, mags).astype(dtype))
        shift_row("noise", "noise", "", 0.0, draws)
    if zero_point > 0:
        cases = [(b, [j]) for j, b in enumerate(bands)] + ([("all", list(range(len(bands))))] if all_bands else [])
        for band, columns in cases:
            for sign in (+1, -1):
                offset = sign * float(zero_point)
                shifted = mags.astype(dtype, copy=True)
                sel = np.zeros(mags.shape, dtype=bool)
                sel[:, columns] = True
                sel &= detected
                shifted[sel] = (mags[sel].astype(np.float64) + offset).astype(dtype)
                shift_row(f"{band}{'+' if sign > 0 else '-'}{zero_point:g}", "zero_point", band, offset, [shifted])
    return result
