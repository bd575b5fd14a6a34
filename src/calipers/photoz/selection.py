"""Spectroscopic selection: biased, labelled training samples from a catalog with true redshifts.

A spectroscopic training set is not a fair sample of the photometric one. Surveys target
galaxies with magnitude limits and colour boxes, and then fail to measure a redshift for a
fraction of their targets that grows towards the faint end. This module applies both steps to
magnitude arrays, as RAIL's selection degraders do (``rail.creation.degraders.
spectroscopic_selections`` in ``pz-rail-astro-tools``: ``SpecSelection_BOSS``, ``_DEEP2``,
``_GAMA``, ``_VVDSf02``, ``_zCOSMOS``, ``_HSC``); the cuts are taken from there and from the survey
papers cited in :data:`SURVEY_TARGETING`, the code is our own. Arrays in, masks out: nothing here
opens a file.

The pieces, each with ``bands`` (the bands it reads) and a vectorised test on a
``{band: magnitudes}`` mapping:

- :class:`MagnitudeLimit` - ``bright < m_band < faint``;
- :class:`LinearCut` - ``lower < sum_k c_k m_{band_k} + offset < upper`` (a colour cut, or a
  sloped cut in colour-magnitude space);
- :class:`ColourBox` - the intersection of several cuts (one targeting class, e.g. BOSS CMASS);
- :class:`Targeting` - the union of colour boxes (one survey, e.g. BOSS = LOWZ or CMASS);
- :class:`LogisticSuccess` - the probability of a successful redshift as a smooth, falling
  function of one magnitude;
- :class:`SpecSelection` - all cuts (intersection) followed by the success draws (probabilities
  multiply), returning a :class:`SelectionResult` with the mask, a per-row reason code and the
  success probability.

Conventions
-----------
- Every inequality is **strict**, as in the survey papers (``r < 19.8``): a value exactly on an
  edge fails.
- **Non-detections.** A magnitude is a non-detection when it is +-inf or ``|m| >=``
  ``sentinel_abs`` (90 by default: the 99 / -99 sentinels of DC2 and RAIL; the same convention as
  :func:`calipers.photoz.preprocess.nondetected`). A row that is not detected in a band **fails
  every cut that reads that band** (a magnitude limit, even a bright-only limit, or a colour), and
  its redshift-success probability in that band is 0. Its other bands are judged as usual, so a
  galaxy undetected in u can still pass a box that only reads g, r and i.
- **NaN** is not a non-detection by default: with ``nan_policy="error"`` a NaN magnitude raises a
  ``ValueError`` naming the column and the row (a NaN usually means a broken catalog, not a faint
  galaxy); ``nan_policy="nondetection"`` treats it as a non-detection instead.
- **Reproducible draws.** The success draw of a row depends only on the seed and the row's index
  in the whole catalog (:func:`row_uniforms`), so a catalog selected in chunks of any size, or by
  several processes, gives exactly the same mask.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np

NONDETECTION_SENTINEL = 90.0
"""Magnitudes with ``|m| >=`` this (and +-inf) are non-detections (DC2 and RAIL use 99)."""

NAN_POLICIES = ("error", "nondetection")

ROW_BLOCK = 4096
"""Rows per block of :func:`row_uniforms`; part of the definition of the draws (do not change it:
the same seed would select other rows)."""

# reason codes of SelectionResult.reason
SELECTED, NOT_DETECTED, NOT_TARGETED, REDSHIFT_FAILED = 0, 1, 2, 3
REASONS = ("selected", "not_detected", "not_targeted", "redshift_failed")
"""Names of the reason codes: ``selected``; ``not_detected`` (failed the cuts and is a
non-detection in at least one band they read); ``not_targeted`` (failed the cuts, detected in
every band they read); ``redshift_failed`` (passed the cuts, lost in the success draw)."""


# ------------------------------------------------------------------------------ magnitudes
def magnitude_table(mags: Mapping[str, np.ndarray] | np.ndarray, bands: Sequence[str] | None = None,
                    *, needed: Sequence[str] | None = None, columns: Mapping[str, str] | None = None,
                    first_row: int = 0, nan_policy: str = "error") -> dict[str, np.ndarray]:
    """Magnitudes as ``{band: float64 1-d array}``, checked.

    Parameters
    ----------
    mags
        A mapping band -> 1-d array, or an ``(n, n_bands)`` array whose columns are ``bands``.
    bands
        Band names of the columns of a 2-d ``mags`` (required then; ignored for a mapping).
    needed
        Bands that must be present (default: all given).
    columns
        Names to use for each band in error messages (e.g. catalog column names).
    first_row
        Index of the first row in the whole catalog, for error messages.
    nan_policy
        ``"error"``: a NaN raises; ``"nondetection"``: a NaN is kept (and later treated as a
        non-detection).

    Raises
    ------
    ValueError
        A missing band, arrays of different lengths or not 1-d, non-numeric values, or (with
        ``nan_policy="error"``) a NaN, naming the column and the row.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if isinstance(mags, Mapping):
        table = dict(mags)
    else:
        arr = np.asarray(mags)
        if bands is None:
            raise ValueError("a 2-d magnitude array needs `bands`, the band of each column")
        bands = list(bands)
        if arr.ndim != 2 or arr.shape[1] != len(bands):
            raise ValueError(f"magnitude array has shape {arr.shape}; expected (n_rows, {len(bands)}) for bands {bands}")
        if len(set(bands)) != len(bands):
            raise ValueError(f"bands {bands} name a band twice")
        table = {b: arr[:, k] for k, b in enumerate(bands)}
    names = dict(columns or {})
    wanted = list(needed) if needed is not None else list(table)
    missing = [b for b in wanted if b not in table]
    if missing:
        raise ValueError(f"no magnitudes for band(s) {missing}; have {sorted(table)}")
    label = {b: names.get(b, f"of band '{b}'") for b in wanted}
    raws = {b: np.asarray(table[b]) for b in wanted}
    for b, raw in raws.items():
        if raw.ndim != 1:
            raise ValueError(f"magnitude column {label[b]} has shape {raw.shape}; expected one value per row (1-d)")
        if raw.dtype.kind not in "biuf":
            raise ValueError(f"magnitude column {label[b]} holds {raw.dtype} values; magnitudes must be numeric")
    if len({len(raw) for raw in raws.values()}) > 1:
        lengths = ", ".join(f"{label[b]}: {len(raw)}" for b, raw in raws.items())
        raise ValueError(f"magnitude columns have different numbers of rows ({lengths})")
    out: dict[str, np.ndarray] = {}
    for b, raw in raws.items():
        name = label[b]
        m = raw.astype(np.float64)
        if nan_policy == "error":
            nan = np.isnan(m)
            if nan.any():
                rows = np.flatnonzero(nan)
                raise ValueError(f"magnitude column {name} is NaN at row {first_row + int(rows[0])} "
                                 f"({rows.size} NaN row(s) in rows {first_row}:{first_row + len(m)}); a "
                                 "non-detection must be a sentinel (e.g. 99) or inf, or set nan_policy to "
                                 "'nondetection'")
        out[b] = m
    return out


def nondetected(mag: np.ndarray, sentinel_abs: float = NONDETECTION_SENTINEL) -> np.ndarray:
    """Non-detection mask of one band's magnitudes: NaN, +-inf or ``|m| >= sentinel_abs``."""
    mag = np.asarray(mag, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(mag) | (np.abs(mag) >= sentinel_abs)


def _detected_in(mags: Mapping[str, np.ndarray], bands: Sequence[str], sentinel_abs: float) -> np.ndarray:
    n = len(next(iter(mags.values())))
    ok = np.ones(n, dtype=bool)
    for b in bands:
        ok &= ~nondetected(mags[b], sentinel_abs)
    return ok


def _check_real(owner: str, name: str, value: float, allow_inf: bool = True) -> float:
    value = float(value)
    if math.isnan(value) or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{owner}: {name} must be a{'' if allow_inf else ' finite'} number, got {value}")
    return value


# ------------------------------------------------------------------------------ cuts
@dataclass(frozen=True)
class MagnitudeLimit:
    """Keep ``bright < m_band < faint`` (strict). A non-detection in ``band`` fails.

    Parameters
    ----------
    band
        Band of the magnitude, e.g. ``"i"``.
    faint
        Faint (upper) limit in AB mag; ``inf`` for none.
    bright
        Bright (lower) limit in AB mag; ``-inf`` for none.
    """

    band: str
    faint: float = math.inf
    bright: float = -math.inf
    name: str = ""

    def __post_init__(self):
        who = f"MagnitudeLimit({self.band!r})"
        if not isinstance(self.band, str) or not self.band:
            raise ValueError(f"{who}: band must be a non-empty string")
        _check_real(who, "faint", self.faint)
        _check_real(who, "bright", self.bright)
        if not self.bright < self.faint:
            raise ValueError(f"{who}: bright limit {self.bright} must be smaller (brighter) than faint limit {self.faint}")

    @property
    def bands(self) -> tuple[str, ...]:
        return (self.band,)

    def passes(self, mags: Mapping[str, np.ndarray], sentinel_abs: float = NONDETECTION_SENTINEL) -> np.ndarray:
        """Boolean mask: detected in ``band`` and strictly between the limits."""
        m = np.asarray(mags[self.band], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return ~nondetected(m, sentinel_abs) & (m > self.bright) & (m < self.faint)

    def describe(self) -> str:
        parts = ([f"{self.bright:g} < "] if math.isfinite(self.bright) else []) + [self.band]
        parts += [f" < {self.faint:g}"] if math.isfinite(self.faint) else []
        return "".join(parts)


@dataclass(frozen=True)
class LinearCut:
    """Keep ``lower < sum_k coefficient_k * m_{band_k} + offset < upper`` (strict).

    A colour ``g - r`` is ``terms=(("g", 1), ("r", -1))``; a band may appear in several terms
    (their coefficients add), so a survey's published formula can be written term by term. A
    non-detection in any band of the terms fails.
    """

    terms: tuple[tuple[str, float], ...]
    lower: float = -math.inf
    upper: float = math.inf
    offset: float = 0.0
    name: str = ""

    def __post_init__(self):
        who = f"LinearCut({self.name or self.terms!r})"
        terms = tuple((str(b), float(c)) for b, c in self.terms)
        if not terms:
            raise ValueError(f"{who}: needs at least one (band, coefficient) term")
        for b, c in terms:
            _check_real(who, f"coefficient of band '{b}'", c, allow_inf=False)
        object.__setattr__(self, "terms", terms)
        _check_real(who, "offset", self.offset, allow_inf=False)
        _check_real(who, "lower", self.lower)
        _check_real(who, "upper", self.upper)
        if not self.lower < self.upper:
            raise ValueError(f"{who}: lower bound {self.lower} must be smaller than upper bound {self.upper}")

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b for b, _ in self.terms))

    def value(self, mags: Mapping[str, np.ndarray]) -> np.ndarray:
        """The linear combination ``sum_k c_k m_{band_k} + offset`` (float64)."""
        total = np.full(len(mags[self.terms[0][0]]), self.offset, dtype=np.float64)
        for b, c in self.terms:
            total += c * np.asarray(mags[b], dtype=np.float64)
        return total

    def passes(self, mags: Mapping[str, np.ndarray], sentinel_abs: float = NONDETECTION_SENTINEL) -> np.ndarray:
        """Boolean mask: detected in every band of the terms and strictly inside the bounds."""
        v = self.value(mags)
        with np.errstate(invalid="ignore"):
            return _detected_in(mags, self.bands, sentinel_abs) & (v > self.lower) & (v < self.upper)


def colour_cut(blue: str, red: str, lower: float = -math.inf, upper: float = math.inf, name: str = "") -> LinearCut:
    """``lower < m_blue - m_red < upper``."""
    return LinearCut(((blue, 1.0), (red, -1.0)), lower=lower, upper=upper, name=name or f"{blue}-{red}")


Cut = Union[MagnitudeLimit, LinearCut]


@dataclass(frozen=True)
class ColourBox:
    """One targeting class: the intersection of ``cuts`` (magnitude limits and linear cuts)."""

    name: str
    cuts: tuple[Cut, ...]

    def __post_init__(self):
        cuts = tuple(self.cuts)
        if not cuts:
            raise ValueError(f"ColourBox {self.name!r}: needs at least one cut")
        for c in cuts:
            if not isinstance(c, (MagnitudeLimit, LinearCut)):
                raise ValueError(f"ColourBox {self.name!r}: {c!r} is not a MagnitudeLimit or LinearCut")
        object.__setattr__(self, "cuts", cuts)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b for c in self.cuts for b in c.bands))

    def passes(self, mags: Mapping[str, np.ndarray], sentinel_abs: float = NONDETECTION_SENTINEL) -> np.ndarray:
        out = self.cuts[0].passes(mags, sentinel_abs)
        for c in self.cuts[1:]:
            out &= c.passes(mags, sentinel_abs)
        return out


@dataclass(frozen=True)
class Targeting:
    """One survey's targeting: a row is targeted when it lies in **any** of ``boxes``."""

    name: str
    boxes: tuple[ColourBox, ...]
    reference: str = ""

    def __post_init__(self):
        boxes = tuple(self.boxes)
        if not boxes:
            raise ValueError(f"Targeting {self.name!r}: needs at least one ColourBox")
        object.__setattr__(self, "boxes", boxes)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b for box in self.boxes for b in box.bands))

    def box_masks(self, mags: Mapping[str, np.ndarray], sentinel_abs: float = NONDETECTION_SENTINEL
                  ) -> dict[str, np.ndarray]:
        """Mask of each box, by box name."""
        return {box.name: box.passes(mags, sentinel_abs) for box in self.boxes}

    def passes(self, mags: Mapping[str, np.ndarray], sentinel_abs: float = NONDETECTION_SENTINEL) -> np.ndarray:
        masks = iter(self.box_masks(mags, sentinel_abs).values())
        out = next(masks)
        for m in masks:
            out |= m
        return out


# ------------------------------------------------------------------------------ surveys
def _boss() -> Targeting:
    # BOSS colour quantities (Eisenstein et al. 2011; Dawson et al. 2013; SDSS DR9 target selection,
    # http://www.sdss3.org/dr9/algorithms/boss_galaxy_ts.php), written term by term:
    #   c_par  = 0.7 (g - r) + 1.2 (r - i - 0.18)
    #   c_perp = (r - i) - (g - r) / 4 - 0.18
    #   d_perp = (r - i) - (g - r) / 8
    c_par = (("g", 0.7), ("r", -0.7), ("r", 1.2), ("i", -1.2))
    c_par_offset = -1.2 * 0.18
    c_perp = (("r", 1.0), ("i", -1.0), ("g", -0.25), ("r", 0.25))
    d_perp = (("r", 1.0), ("i", -1.0), ("g", -0.125), ("r", 0.125))
    lowz = ColourBox("lowz", (
        MagnitudeLimit("r", bright=16.0, faint=20.0, name="16 < r < 20"),
        LinearCut(c_perp, lower=-0.2, upper=0.2, offset=-0.18, name="|c_perp| < 0.2"),
        # r < 13.35 + c_par / 0.3   <=>   r - c_par / 0.3 < 13.35
        LinearCut((("r", 1.0),) + tuple((b, -c / 0.3) for b, c in c_par), upper=13.35,
                  offset=-c_par_offset / 0.3, name="r < 13.35 + c_par / 0.3"),
    ))
    cmass = ColourBox("cmass", (
        MagnitudeLimit("i", bright=17.5, faint=20.1, name="17.5 < i < 20.1"),
        LinearCut(d_perp, lower=0.55, name="d_perp > 0.55"),
        # i < 19.98 + 1.6 (d_perp - 0.7)   <=>   i - 1.6 d_perp < 19.98 - 1.12
        LinearCut((("i", 1.0),) + tuple((b, -1.6 * c) for b, c in d_perp), upper=19.98 - 1.6 * 0.7,
                  name="i < 19.98 + 1.6 (d_perp - 0.7)"),
        colour_cut("r", "i", upper=2.0, name="r - i < 2"),
    ))
    return Targeting("boss", (lowz, cmass), reference=(
        "BOSS LOWZ | CMASS (Dawson et al. 2013, AJ 145, 10; SDSS DR9 target selection), with the limits "
        "RAIL's SpecSelection_BOSS adapted to LSST gri: LOWZ r < 20 (BOSS: 19.6) and 13.35 (13.5) in the "
        "sliding cut; CMASS i < 20.1 (19.9) and i < 19.98 + 1.6 (d_perp - 0.7) (19.86 + 1.6 (d_perp - 0.8)). "
        "Simplified: LSST magnitudes stand for SDSS cmodel/model magnitudes; the star-galaxy (psf - model), "
        "fibre-magnitude (i_fib2 < 21.5) and sparse-sample cuts are not applied."))


def _deep2() -> Targeting:
    r_window = MagnitudeLimit("r", bright=18.5, faint=24.1, name="18.5 < r < 24.1")
    # B - R < 2.45 (R - I) - 0.2976  or  R - I > 1.1  or  B - R < 0.5, with g, r, i for B, R, I
    sloped = LinearCut((("g", 1.0), ("r", -1.0), ("r", -2.45), ("i", 2.45)), upper=-0.2976,
                       name="g - r < 2.45 (r - i) - 0.2976")
    return Targeting("deep2", (
        ColourBox("high_z_locus", (r_window, sloped)),
        ColourBox("red_r_i", (r_window, colour_cut("r", "i", lower=1.1, name="r - i > 1.1"))),
        ColourBox("blue_g_r", (r_window, colour_cut("g", "r", upper=0.5, name="g - r < 0.5"))),
    ), reference=(
        "DEEP2 fields 2-4 colour pre-selection for z > 0.7 (Newman et al. 2013, ApJS 208, 5, eq. 1 and "
        "Fig. 12) as RAIL's SpecSelection_DEEP2 applies it: 18.5 < R < 24.1 and (B-R < 2.45 (R-I) - 0.2976 "
        "or R-I > 1.1 or B-R < 0.5). Simplified: LSST g, r, i stand for CFHT B, R, I without a colour "
        "transformation; the surface-brightness cut and the weighted sampling near the colour boundary "
        "are not applied."))


def _gama() -> Targeting:
    return Targeting("gama", (ColourBox("main", (MagnitudeLimit("r", faint=19.8, name="r < 19.8"),)),), reference=(
        "GAMA II main survey r_petro < 19.8 (Driver et al. 2011, MNRAS 413, 971; Liske et al. 2015). "
        "Simplified: LSST r stands for the SDSS Petrosian r (RAIL's SpecSelection_GAMA uses r < 19.87); "
        "no star-galaxy separation."))


def _zcosmos_bright() -> Targeting:
    return Targeting("zcosmos_bright", (ColourBox("bright", (
        MagnitudeLimit("i", bright=15.0, faint=22.5, name="15 < i < 22.5"),)),), reference=(
        "zCOSMOS-bright 15 < I_AB < 22.5 (Lilly et al. 2007, ApJS 172, 70; 2009). Simplified: LSST i for "
        "the HST/ACS F814W I; the redshift-dependent success map of Lilly et al. 2009 Fig. 3 (used by "
        "RAIL) is replaced by the magnitude-dependent LogisticSuccess if one is configured."))


def _vvds_f02() -> Targeting:
    return Targeting("vvds_f02", (ColourBox("deep", (
        MagnitudeLimit("i", bright=17.5, faint=24.0, name="17.5 < i < 24"),)),), reference=(
        "VVDS-Deep F02 17.5 < I_AB < 24 (Le Fevre et al. 2005, A&A 439, 845). Simplified: LSST i for the "
        "CFHT I; the tabulated success rates in I and z (used by RAIL) are replaced by the "
        "magnitude-dependent LogisticSuccess if one is configured."))


SURVEY_TARGETING: dict[str, Targeting] = {t.name: t for t in (_boss(), _deep2(), _gama(), _zcosmos_bright(),
                                                               _vvds_f02())}
"""Targeting of real spectroscopic surveys, adapted to LSST bands; each entry's ``reference`` says
where the cuts come from and what is simplified. HSC's (a 2-d map of the spec-z fraction from
RAIL's data files) is not included: it is a data table, not a colour box."""


def survey_targeting(name: str) -> Targeting:
    """The :class:`Targeting` of a survey in :data:`SURVEY_TARGETING` (``ValueError`` naming the
    known ones otherwise)."""
    try:
        return SURVEY_TARGETING[name]
    except KeyError:
        raise ValueError(f"unknown survey targeting {name!r}; known: {sorted(SURVEY_TARGETING)}") from None


# ------------------------------------------------------------------------------ success
@dataclass(frozen=True)
class LogisticSuccess:
    """Redshift-success probability falling smoothly with magnitude:

    ``p(m) = max_rate / (1 + exp((m - m50) / width))``

    so ``p = max_rate / 2`` at ``m50`` (the 50%-completeness magnitude when ``max_rate`` is 1),
    ``p -> max_rate`` for bright and ``-> 0`` for faint galaxies, and ``width`` (mag) sets how fast
    (from 88% to 12% of ``max_rate`` over 4 widths). A non-detection in ``band`` has ``p = 0``.

    This stands in for the tabulated success curves RAIL reads (e.g. DEEP2 Q >= 3 success against
    R, Newman et al. 2013 Fig. 13; VVDS against I, Le Fevre et al. 2005 Fig. 16), which fall
    similarly over the last ~1-2 mag above the survey limit; the smooth form needs no data file
    and has an exact value to test against.
    """

    band: str = "i"
    m50: float = 23.0
    width: float = 0.25
    max_rate: float = 1.0

    def __post_init__(self):
        who = f"LogisticSuccess({self.band!r})"
        if not isinstance(self.band, str) or not self.band:
            raise ValueError(f"{who}: band must be a non-empty string")
        _check_real(who, "m50", self.m50, allow_inf=False)
        if not (_check_real(who, "width", self.width, allow_inf=False) > 0):
            raise ValueError(f"{who}: width must be > 0 mag, got {self.width}")
        if not 0 < _check_real(who, "max_rate", self.max_rate) <= 1:
            raise ValueError(f"{who}: max_rate must be in (0, 1], got {self.max_rate}")

    @property
    def bands(self) -> tuple[str, ...]:
        return (self.band,)

    def probability(self, mags: Mapping[str, np.ndarray], sentinel_abs: float = NONDETECTION_SENTINEL) -> np.ndarray:
        """Success probability per row (0 for a non-detection in ``band``)."""
        m = np.asarray(mags[self.band], dtype=np.float64)
        bad = nondetected(m, sentinel_abs)
        x = np.where(bad, 0.0, m - self.m50) / self.width
        # 1 / (1 + e^x), as e^-x / (1 + e^-x) for x > 0: no overflow, full relative precision
        e = np.exp(-np.abs(x))
        p = self.max_rate * np.where(x > 0, e, 1.0) / (1.0 + e)
        return np.where(bad, 0.0, p)


# ------------------------------------------------------------------------------ draws
def row_uniforms(seed: int, first_row: int, n_rows: int, stream: int = 0) -> np.ndarray:
    """Uniform draws in [0, 1) for catalog rows ``first_row .. first_row + n_rows - 1``.

    Row ``k``'s draw depends only on ``(seed, stream, k)``: rows are grouped in blocks of
    :data:`ROW_BLOCK` and each block has its own generator ``default_rng([seed, stream, block])``,
    so any chunking of the catalog (or any split over processes) gives the same draws.
    """
    seed, first_row, n_rows, stream = int(seed), int(first_row), int(n_rows), int(stream)
    if seed < 0 or stream < 0 or first_row < 0 or n_rows < 0:
        raise ValueError(f"seed, stream, first_row and n_rows must be >= 0, got {seed}, {stream}, {first_row}, {n_rows}")
    out = np.empty(n_rows, dtype=np.float64)
    end = first_row + n_rows
    row = first_row
    while row < end:
        block = row // ROW_BLOCK
        block_start = block * ROW_BLOCK
        stop = min(end, block_start + ROW_BLOCK)
        draws = np.random.default_rng([seed, stream, block]).random(stop - block_start)
        out[row - first_row:stop - first_row] = draws[row - block_start:]
        row = stop
    return out


# ------------------------------------------------------------------------------ composition
@dataclass(frozen=True)
class SelectionResult:
    """Outcome of :meth:`SpecSelection.select` for ``n`` rows.

    Attributes
    ----------
    mask
        ``(n,)`` bool: the row is in the spectroscopic sample.
    reason
        ``(n,)`` int8 codes into :data:`REASONS` (``SELECTED``, ``NOT_DETECTED``, ``NOT_TARGETED``,
        ``REDSHIFT_FAILED``).
    targeted
        ``(n,)`` bool: the row passed every cut (before the success draw).
    p_success
        ``(n,)`` float64: probability of a successful redshift given the row was targeted (the
        product over the success models; 1 when there is none).
    """

    mask: np.ndarray
    reason: np.ndarray
    targeted: np.ndarray
    p_success: np.ndarray

    def counts(self) -> dict[str, int]:
        """Number of rows per reason, by name."""
        n = np.bincount(self.reason, minlength=len(REASONS))
        return {name: int(n[k]) for k, name in enumerate(REASONS)}


Targeter = Union[MagnitudeLimit, LinearCut, ColourBox, Targeting]


@dataclass(frozen=True)
class SpecSelection:
    """A spectroscopic selection: every one of ``cuts`` (magnitude limits, colour cuts, colour
    boxes, survey targetings; their intersection), then a redshift-success draw with probability
    the product of ``success`` models.

    Parameters
    ----------
    cuts
        Targeting steps, all of which a row must pass. Use :func:`survey_targeting` for a real
        survey's; a union of several surveys is a :class:`Targeting` whose boxes are theirs.
    success
        Redshift-success models; a targeted row is kept with probability the product of theirs.
    nan_policy
        ``"error"`` (a NaN magnitude raises, naming column and row) or ``"nondetection"``.
    sentinel_abs
        Magnitudes with ``|m| >=`` this are non-detections.

    Examples
    --------
    >>> sel = SpecSelection(cuts=(MagnitudeLimit("i", faint=23.5),),
    ...                     success=(LogisticSuccess("i", m50=23.0, width=0.25),))
    >>> result = sel.select({"i": np.array([20.0, 23.2, 24.0, 99.0])}, seed=1)
    >>> result.targeted.tolist()
    [True, True, False, False]
    """

    cuts: tuple[Targeter, ...] = ()
    success: tuple[LogisticSuccess, ...] = ()
    nan_policy: str = "error"
    sentinel_abs: float = NONDETECTION_SENTINEL
    _bands: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        cuts, success = tuple(self.cuts), tuple(self.success)
        for c in cuts:
            if not isinstance(c, (MagnitudeLimit, LinearCut, ColourBox, Targeting)):
                raise ValueError(f"SpecSelection: cut {c!r} is not a MagnitudeLimit, LinearCut, ColourBox or Targeting")
        for s in success:
            if not isinstance(s, LogisticSuccess):
                raise ValueError(f"SpecSelection: success model {s!r} is not a LogisticSuccess")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"SpecSelection: nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        if not _check_real("SpecSelection", "sentinel_abs", self.sentinel_abs) > 0:
            raise ValueError(f"SpecSelection: sentinel_abs must be > 0, got {self.sentinel_abs}")
        object.__setattr__(self, "cuts", cuts)
        object.__setattr__(self, "success", success)
        bands = tuple(dict.fromkeys(b for step in (*cuts, *success) for b in step.bands))
        object.__setattr__(self, "_bands", bands)

    @property
    def bands(self) -> tuple[str, ...]:
        """Every band the selection reads, in first-use order."""
        return self._bands

    @property
    def cut_bands(self) -> tuple[str, ...]:
        """The bands the cuts read (a non-detection in one of them makes a failure ``not_detected``)."""
        return tuple(dict.fromkeys(b for c in self.cuts for b in c.bands))

    def targeted(self, mags: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray:
        """Rows that pass every cut (all rows when there is none)."""
        out = np.ones(n_rows, dtype=bool)
        for c in self.cuts:
            out &= c.passes(mags, self.sentinel_abs)
        return out

    def success_probability(self, mags: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray:
        """Product of the success models' probabilities (1 when there is none)."""
        p = np.ones(n_rows, dtype=np.float64)
        for s in self.success:
            p *= s.probability(mags, self.sentinel_abs)
        return p

    def select(self, mags: Mapping[str, np.ndarray] | np.ndarray, seed: int | np.random.Generator,
               first_row: int = 0, *, bands: Sequence[str] | None = None,
               columns: Mapping[str, str] | None = None) -> SelectionResult:
        """Select rows.

        Parameters
        ----------
        mags
            ``{band: (n,) magnitudes}`` or an ``(n, n_bands)`` array with ``bands``; every band in
            :attr:`bands` must be present.
        seed
            An int: the success draw of row ``first_row + k`` is :func:`row_uniforms` of that row,
            the same however the catalog is chunked. A ``numpy.random.Generator``: ``n`` draws are
            taken from it in order (reproducible for one call, but chunk-dependent).
        first_row
            Index of the first row in the whole catalog (for int seeds and error messages).
        columns
            Name of each band's column, for error messages.
        """
        table = magnitude_table(mags, bands, needed=self.bands, columns=columns, first_row=first_row,
                                nan_policy=self.nan_policy)
        if not table:
            n_rows = len(mags) if not isinstance(mags, Mapping) else len(next(iter(mags.values()), []))
        else:
            n_rows = len(next(iter(table.values())))
        targeted = self.targeted(table, n_rows)
        p = self.success_probability(table, n_rows)
        if self.success:
            if isinstance(seed, np.random.Generator):
                u = seed.random(n_rows)
            else:
                u = row_uniforms(seed, first_row, n_rows)
            succeeded = u < p
        else:
            succeeded = np.ones(n_rows, dtype=bool)
        mask = targeted & succeeded
        reason = np.full(n_rows, SELECTED, dtype=np.int8)
        reason[targeted & ~succeeded] = REDSHIFT_FAILED
        cut_bands = self.cut_bands
        if cut_bands:
            seen = _detected_in(table, cut_bands, self.sentinel_abs)
            reason[~targeted & seen] = NOT_TARGETED
            reason[~targeted & ~seen] = NOT_DETECTED
        return SelectionResult(mask=mask, reason=reason, targeted=targeted, p_success=p)
