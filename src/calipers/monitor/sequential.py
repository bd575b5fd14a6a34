"""Sequential change detectors over a stream of per-batch statistics that are N(0, 1) before the
change (the standardised PIT mean and dispersion of :mod:`~calipers.monitor.calibration`).

- :class:`Cusum` (Page 1954), two-sided: ``S+ = max(0, S+ + x - k)``, ``S- = max(0, S- - x - k)``,
  an alarm when either exceeds ``h``. :func:`cusum_threshold` sets ``h`` for a target in-control
  average run length (ARL) from Siegmund's approximation,
  ``ARL+ = (exp(2 k b) - 2 k b - 1) / (2 k^2)`` with ``b = h + 1.166`` for N(0, 1) data, and
  ``1 / ARL = 1 / ARL+ + 1 / ARL-`` for the two sides.
- :class:`PageHinkley` (Page 1954; Hinkley 1971), two-sided, against the running mean of the stream
  so far (it needs no reference mean): ``m_t = sum (x_i - xbar_i - delta)`` and an alarm when
  ``m_t - min m`` (or the mirror statistic) exceeds ``lambda``; :func:`page_hinkley_threshold` sets
  ``lambda`` for a target ARL by simulation of N(0, 1) streams (there is no closed form).

Both restart from zero after an alarm, so a stream can raise several; the run length is the number
of batches up to and including the alarm. State is a plain dict (:meth:`to_dict`).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.optimize import brentq


def cusum_arl(h: float, k: float, mean: float = 0.0) -> float:
    """Siegmund's approximation of the ARL of the one-sided upper CUSUM with reference ``k`` and
    threshold ``h`` on N(``mean``, 1) data."""
    b = h + 1.166
    d = mean - k
    if abs(d) < 1e-9:
        return b * b
    return float((np.exp(-2 * d * b) + 2 * d * b - 1) / (2 * d * d))


def cusum_threshold(arl: float, k: float = 0.5, two_sided: bool = True) -> float:
    """The threshold ``h`` that gives the in-control ``arl`` (Siegmund; two sides share it)."""
    if arl <= 1 or k <= 0:
        raise ValueError(f"cusum_threshold: need arl > 1 and k > 0, got {arl}, {k}")
    target = 2 * arl if two_sided else arl
    return float(brentq(lambda h: cusum_arl(h, k) - target, 1e-6, 200.0))


class Cusum:
    """Two-sided CUSUM with reference ``k`` (half the shift, in sigma, it is tuned to) and threshold
    ``h`` (:func:`cusum_threshold` of a target ARL when ``h`` is None)."""

    def __init__(self, k: float = 0.5, h: float | None = None, arl: float = 100.0):
        self.k = float(k)
        self.h = float(cusum_threshold(arl, k)) if h is None else float(h)
        self.arl = float(arl)
        self.upper = self.lower = 0.0
        self.n = 0

    def update(self, values) -> list[dict]:
        out = []
        for x in np.atleast_1d(np.asarray(values, dtype=float)):
            self.n += 1
            self.upper = max(0.0, self.upper + x - self.k)
            self.lower = max(0.0, self.lower - x - self.k)
            stat = max(self.upper, self.lower)
            alarm = stat > self.h
            out.append({"statistic": stat, "threshold": self.h, "alarm": bool(alarm),
                        "direction": "up" if self.upper >= self.lower else "down"})
            if alarm:
                self.upper = self.lower = 0.0
        return out

    def to_dict(self) -> dict:
        return {"detector": "cusum", "k": self.k, "h": self.h, "arl": self.arl, "upper": self.upper,
                "lower": self.lower, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> Cusum:
        obj = cls(k=d["k"], h=d["h"], arl=d["arl"])
        obj.upper, obj.lower, obj.n = float(d["upper"]), float(d["lower"]), int(d["n"])
        return obj


def _page_hinkley_paths(x: np.ndarray, delta: float) -> np.ndarray:
    """The two-sided Page-Hinkley statistic along each row of ``x[n_streams, T]`` (no restarts)."""
    t = np.arange(1, x.shape[1] + 1)
    mean = np.cumsum(x, 1) / t
    m_up = np.cumsum(x - mean - delta, 1)
    m_down = np.cumsum(x - mean + delta, 1)
    up = m_up - np.minimum(np.minimum.accumulate(m_up, 1), 0.0)
    down = np.maximum(np.maximum.accumulate(m_down, 1), 0.0) - m_down
    return np.maximum(up, down)


@lru_cache(maxsize=32)
def page_hinkley_threshold(arl: float, delta: float = 0.5, n_streams: int = 2000, seed: int = 0) -> float:
    """``lambda`` for an in-control ARL of ``arl`` batches on N(0, 1) statistics, by simulating
    ``n_streams`` streams of ``10 arl`` batches (seeded; run lengths beyond that count as ``10 arl``)
    and bisecting on the mean run length."""
    if arl <= 1 or delta < 0:
        raise ValueError(f"page_hinkley_threshold: need arl > 1 and delta >= 0, got {arl}, {delta}")
    horizon = int(np.ceil(10 * arl))
    paths = np.maximum.accumulate(_page_hinkley_paths(np.random.default_rng(seed).normal(size=(n_streams, horizon)),
                                                      delta), 1)

    def mean_run_length(lam):
        crossed = paths > lam
        rl = np.where(crossed.any(1), crossed.argmax(1) + 1, horizon)
        return rl.mean()

    lo, hi = 0.0, float(paths[:, -1].max()) + 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_run_length(mid) < arl else (lo, mid)
    return 0.5 * (lo + hi)


class PageHinkley:
    """Two-sided Page-Hinkley detector with tolerance ``delta`` and threshold ``lam``
    (:func:`page_hinkley_threshold` of a target ARL when None)."""

    def __init__(self, delta: float = 0.5, lam: float | None = None, arl: float = 100.0):
        self.delta = float(delta)
        self.lam = float(page_hinkley_threshold(float(arl), self.delta)) if lam is None else float(lam)
        self.arl = float(arl)
        self._reset()

    def _reset(self):
        self.n, self.mean = 0, 0.0
        self.m_up = self.min_up = self.m_down = self.max_down = 0.0

    def update(self, values) -> list[dict]:
        out = []
        for x in np.atleast_1d(np.asarray(values, dtype=float)):
            self.n += 1
            self.mean += (x - self.mean) / self.n
            self.m_up += x - self.mean - self.delta
            self.m_down += x - self.mean + self.delta
            self.min_up = min(self.min_up, self.m_up)
            self.max_down = max(self.max_down, self.m_down)
            up, down = self.m_up - self.min_up, self.max_down - self.m_down
            stat = max(up, down)
            alarm = stat > self.lam
            out.append({"statistic": stat, "threshold": self.lam, "alarm": bool(alarm),
                        "direction": "up" if up >= down else "down"})
            if alarm:
                self._reset()
        return out

    def to_dict(self) -> dict:
        return {"detector": "page_hinkley", "delta": self.delta, "lam": self.lam, "arl": self.arl, "n": self.n,
                "mean": self.mean, "m_up": self.m_up, "min_up": self.min_up, "m_down": self.m_down,
                "max_down": self.max_down}

    @classmethod
    def from_dict(cls, d: dict) -> PageHinkley:
        obj = cls(delta=d["delta"], lam=d["lam"], arl=d["arl"])
        obj.n, obj.mean = int(d["n"]), float(d["mean"])
        obj.m_up, obj.min_up, obj.m_down, obj.max_down = (float(d[k]) for k in ("m_up", "min_up", "m_down", "max_down"))
        return obj
