"""A conformal test martingale over the objects of a stream (Vovk, Nouretdinov & Gammerman 2003;
Vovk, Gammerman & Shafer, *Algorithmic Learning in a Random World*, 2nd ed., ch. 8).

Each object carries a nonconformity score (for calibration drift, ``|PIT - 1/2|``: large when the
predictive distribution missed). Its smoothed conformal p-value ranks it among all scores seen so
far, the reference sample's included::

    p_n = (#{i <= n: a_i > a_n} + theta_n #{i <= n: a_i = a_n}) / n,   theta_n ~ U(0, 1)

While the stream is exchangeable (no drift), ``p_1, p_2, ...`` are independent and uniform, ties
included; so ``M_n = prod f(p_i)`` for any betting function with ``int_0^1 f = 1`` is a test
martingale, and Ville's inequality bounds the probability that it **ever** reaches ``c`` by
``1 / c``, over the whole stream. The martingale here is the equal-weight mixture of power bets
``f(p) = eps p^(eps - 1)`` (small p-values: the new scores are larger than before) and, two-sided,
``f(p) = eps (1 - p)^(eps - 1)`` (they are smaller: predictive distributions grew too wide), over a
grid of ``eps``, and a component that does not bet (``f = 1``). Capital moves between the
components as in Vovk's *Jumper* (Vovk, Petej, Nouretdinov, Ahlberg, Carlsson & Gammerman 2021,
"Retrain or not retrain: conformal test martingales for change-point detection"): before each
object a fraction ``jump`` of the total is spread evenly over them. Each step's bet is then a convex
combination of betting functions fixed by the past, so the product is still a test martingale; the
jumps keep capital in every component, so after a long calm stream the martingale does not have
to climb back from the ruin of the bets that lost (a plain mixture had fallen to 1e-10 after 5,000
calm objects in a test and then needed two batches of 600 to cross 100; with ``jump = 1e-4`` it crossed
in the first, at 10^18).

Scores are quantised to ``n_levels`` levels of ``[low, high]``, so the state is a histogram of
fixed size instead of every score of the stream; quantisation makes ties, which the smoothed
p-value handles exactly, so validity does not depend on it. The ``theta`` of each batch come from
``(seed, batch_index)``: a resumed stream draws the same ones.

The objects of one batch carry no time order (a catalog is sorted by position, identifier or even
redshift: RAIL's DC2 files are sorted by redshift), so :meth:`~ConformalTestMartingale.update` bets
on them in a random order drawn from ``(seed, batch_index)``; otherwise the martingale would test
the catalog's sort order (on the DC2 validation file in redshift order it reached 10^3.5 within the
first calm batch).
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

DEFAULT_EPSILONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class ConformalTestMartingale:
    def __init__(self, threshold: float = 100.0, low: float = 0.0, high: float = 0.5, n_levels: int = 4096,
                 epsilons=DEFAULT_EPSILONS, two_sided: bool = True, jump: float = 1e-4, seed: int = 0):
        if threshold <= 1:
            raise ValueError(f"ConformalTestMartingale: threshold must be > 1 (false-alarm bound 1 / threshold), "
                             f"got {threshold}")
        if not high > low or n_levels < 2:
            raise ValueError("ConformalTestMartingale: need high > low and n_levels >= 2")
        eps = np.asarray(epsilons, dtype=float)
        if eps.size == 0 or np.any((eps <= 0) | (eps >= 1)):
            raise ValueError(f"ConformalTestMartingale: epsilons must lie in (0, 1), got {list(eps)}")
        if not 0 <= jump <= 1:
            raise ValueError(f"ConformalTestMartingale: jump must lie in [0, 1], got {jump}")
        self.threshold, self.low, self.high, self.n_levels = float(threshold), float(low), float(high), int(n_levels)
        self.epsilons, self.two_sided, self.jump, self.seed = eps, bool(two_sided), float(jump), int(seed)
        self.counts = np.zeros(self.n_levels, dtype=np.int64)
        n_comp = len(eps) * (2 if two_sided else 1) + 1  # the bets and the component that does not bet
        self.log_m = np.full(n_comp, -np.log(n_comp))  # log capital of each component; the total starts at 1
        self.n_bet = 0
        self.max_log10 = 0.0
        self.alarm_at = None  # (batch_index, object index within it) of the first crossing

    # --- scores -------------------------------------------------------------------------------
    def levels(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=float).ravel()
        if not np.all(np.isfinite(s)):
            bad = int(np.flatnonzero(~np.isfinite(s))[0])
            raise ValueError(f"ConformalTestMartingale: non-finite score at row {bad}")
        q = np.floor((s - self.low) / (self.high - self.low) * self.n_levels).astype(np.int64)
        return np.clip(q, 0, self.n_levels - 1)

    @property
    def n_seen(self) -> int:
        return int(self.counts.sum())

    def add_reference(self, scores) -> None:
        """Scores that come first in the sequence but are not bet on (the reference sample)."""
        self.counts += np.bincount(self.levels(scores), minlength=self.n_levels)

    def p_values(self, scores, batch_index: int, chunk: int = 2048) -> np.ndarray:
        """The smoothed conformal p-values of ``scores`` in their order, each against all scores
        before it; the scores are then counted in."""
        lev = self.levels(scores)
        theta = 1.0 - np.random.default_rng([self.seed, int(batch_index)]).random(len(lev))  # (0, 1]
        p = np.empty(len(lev))
        for s in range(0, len(lev), chunk):
            l = lev[s:s + chunk]
            above = np.concatenate([np.cumsum(self.counts[::-1])[::-1][1:], [0]])  # counts strictly above a level
            earlier = np.tril(np.ones((len(l), len(l)), bool), -1)                  # i < j within the chunk
            g = above[l] + np.sum(earlier & (l[None, :] > l[:, None]), 1)
            e = self.counts[l] + np.sum(earlier & (l[None, :] == l[:, None]), 1) + 1
            n = self.n_seen + np.arange(1, len(l) + 1)
            p[s:s + chunk] = (g + theta[s:s + chunk] * e) / n
            self.counts += np.bincount(l, minlength=self.n_levels)
        return p

    # --- betting ------------------------------------------------------------------------------
    def _log_bets(self, p: np.ndarray) -> np.ndarray:
        """``log f_k(p_i)`` per component ``k`` (the bets, then the one that does not bet) and object ``i``."""
        eps = self.epsilons[:, None]
        rows = [np.log(eps) + (eps - 1.0) * np.log(p)[None, :]]
        if self.two_sided:
            rows.append(np.log(eps) + (eps - 1.0) * np.log1p(-np.minimum(p, 1.0 - 1e-16))[None, :])
        rows.append(np.zeros((1, len(p))))
        return np.vstack(rows)

    def _bet(self, log_f: np.ndarray) -> np.ndarray:
        """Run the Jumper over the objects' ``log_f[K, n]``; returns ``ln M`` after each object."""
        n_comp, n = log_f.shape
        scale = float(self.log_m.max())
        c = np.exp(self.log_m - scale)
        f = np.exp(log_f - log_f.max(0))  # per object, up to a factor kept in the log
        f_scale = log_f.max(0)
        out = np.empty(n)
        keep, spread = 1.0 - self.jump, self.jump / n_comp
        for i in range(n):
            c = (keep * c + spread * c.sum()) * f[:, i]
            total = c.sum()
            c /= total
            scale += float(np.log(total)) + float(f_scale[i])
            out[i] = scale
        with np.errstate(divide="ignore"):
            self.log_m = np.maximum(np.log(c), -700.0) + scale
        return out

    def update(self, scores, batch_index: int, shuffle: bool = True) -> dict:
        """Bet on a batch of scores, in a random order from ``(seed, batch_index)`` unless ``shuffle``
        is False. Returns the martingale's log10 at the end of the batch, its maximum within the
        batch, and whether (and at which object of the betting order) it first reached the threshold."""
        scores = np.asarray(scores, dtype=float).ravel()
        self.levels(scores)  # refuse non-finite scores, naming their row in the caller's order
        if shuffle:
            scores = scores[np.random.default_rng([self.seed, int(batch_index), 1]).permutation(len(scores))]
        p = self.p_values(scores, batch_index)
        if len(p) == 0:
            return {"log10_martingale": self.log10(), "max_log10_in_batch": self.log10(), "alarm": False,
                    "first_crossing": None, "n": 0, "mean_p": float("nan")}
        log_mix = self._bet(self._log_bets(p)) / np.log(10)
        self.n_bet += len(p)
        crossing = np.flatnonzero(log_mix >= np.log10(self.threshold))
        first = int(crossing[0]) if crossing.size else None
        if first is not None and self.alarm_at is None:
            self.alarm_at = [int(batch_index), first]
        self.max_log10 = max(self.max_log10, float(log_mix.max()))
        return {"log10_martingale": float(log_mix[-1]), "max_log10_in_batch": float(log_mix.max()),
                "alarm": first is not None, "first_crossing": first, "n": int(len(p)), "mean_p": float(p.mean())}

    def log10(self) -> float:
        return float(logsumexp(self.log_m) / np.log(10))

    # --- state --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        nz = np.flatnonzero(self.counts)
        return {"detector": "conformal_test_martingale", "threshold": self.threshold, "low": self.low,
                "high": self.high, "n_levels": self.n_levels, "epsilons": self.epsilons.tolist(),
                "two_sided": self.two_sided, "jump": self.jump, "seed": self.seed, "count_levels": nz.tolist(),
                "count_values": self.counts[nz].tolist(), "log_m": self.log_m.tolist(), "n_bet": self.n_bet,
                "max_log10": self.max_log10, "alarm_at": self.alarm_at}

    @classmethod
    def from_dict(cls, d: dict) -> ConformalTestMartingale:
        obj = cls(threshold=d["threshold"], low=d["low"], high=d["high"], n_levels=d["n_levels"],
                  epsilons=d["epsilons"], two_sided=d["two_sided"], jump=d["jump"], seed=d["seed"])
        obj.counts[np.asarray(d["count_levels"], dtype=np.int64)] = np.asarray(d["count_values"], dtype=np.int64)
        obj.log_m = np.asarray(d["log_m"], dtype=float)
        if obj.log_m.shape != (len(obj.epsilons) * (2 if obj.two_sided else 1) + 1,):
            raise ValueError("ConformalTestMartingale.from_dict: log_m does not match the bets")
        obj.n_bet, obj.max_log10, obj.alarm_at = int(d["n_bet"]), float(d["max_log10"]), d["alarm_at"]
        return obj
