"""Retrospective active learning: grow a labelled set round by round from a pool whose labels
are known but hidden, and read the learning curves.

Arrays in, arrays out; the model, its training, its test score and the acquisition rule are
callables, so the same loop runs any estimator and any acquisition:

- :func:`simulate_active_learning` - train on the labelled rows, score, ask the acquisition
  rule for the next batch of unlabelled pool rows, "observe" them (reveal their labels), repeat;
  one :class:`ActiveRound` per round, yielded as soon as it is scored;
- :func:`curve_at` - a learning curve (metric against labels, or against exposure cost)
  interpolated at given abscissae, never extrapolated;
- :func:`first_reach` - where a curve of a lower-is-better metric first reaches a target value
  (e.g. how many labels an acquisition needs to match random sampling's final CRPS).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np


class ActiveRound(NamedTuple):
    """One round of :func:`simulate_active_learning`."""

    round: int             #: 0 for the initial (seed) set
    rows: np.ndarray       #: the pool rows labelled in this round's training set, in the order labelled
    n_labels: int          #: len(rows)
    cost: float            #: summed cost of ``rows`` (their count when no cost was given)
    metrics: dict          #: what ``evaluate`` returned for this round's model
    model: Any             #: what ``fit`` returned


def _check_rows(rows, n_pool: int, what: str) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"{what} must be a 1-d array of integer pool rows, got shape {rows.shape} "
                         f"and dtype {rows.dtype}")
    bad = np.flatnonzero((rows < 0) | (rows >= n_pool))
    if bad.size:
        raise ValueError(f"{what}: row {rows[bad[0]]} (position {bad[0]}) is outside the pool of {n_pool} rows")
    unique, first = np.unique(rows, return_index=True)
    if len(unique) != len(rows):
        dup = np.setdiff1d(np.arange(len(rows)), first)[0]
        raise ValueError(f"{what}: row {rows[dup]} appears more than once (again at position {dup})")
    return rows.astype(np.int64)


def simulate_active_learning(initial_rows, n_pool: int, *, fit: Callable[[np.ndarray], Any],
                             evaluate: Callable[[Any], dict],
                             acquire: Callable[[Any, np.ndarray, int, int], np.ndarray],
                             batch_size: int, n_rounds: int, cost=None) -> Iterator[ActiveRound]:
    """Simulate pool-based active learning with labels revealed from a known truth.

    Round r (0, 1, ..., ``n_rounds`` - 1) trains ``model = fit(labelled)`` on the labelled pool
    rows (``initial_rows`` plus ``batch_size`` rows per earlier round), scores it with
    ``evaluate(model)`` and yields an :class:`ActiveRound`; unless it is the last round,
    ``acquire(model, candidates, batch_size, r)`` then picks the next ``batch_size`` rows among
    the unlabelled ``candidates`` (sorted pool rows), whose labels the caller's ``fit`` may use
    from the next round on.

    Parameters
    ----------
    initial_rows : (n0,) int array
        The initially labelled pool rows (distinct, in ``[0, n_pool)``).
    n_pool : int
        Rows in the pool; the labelled set never exceeds it.
    fit : callable
        ``fit(rows) -> model``: trains on the labelled pool rows ``rows`` (in the order labelled).
    evaluate : callable
        ``evaluate(model) -> dict`` of metrics (on a held-out test set: never on the pool).
    acquire : callable
        ``acquire(model, candidates, batch_size, round) -> rows``: exactly ``batch_size``
        distinct rows taken from ``candidates``.
    batch_size : int
        Labels added per round (>= 1).
    n_rounds : int
        Rounds, the initial one included (>= 1): the last trains on
        ``n0 + (n_rounds - 1) * batch_size`` labels.
    cost : (n_pool,) array, optional
        Positive cost of labelling each pool row (e.g. :func:`~calipers.active.exposure_cost`);
        :attr:`ActiveRound.cost` sums it over the labelled rows (without it: counts them).

    Yields
    ------
    ActiveRound
        One per round, as soon as it is scored (so a caller can log a long simulation as it goes).

    Raises
    ------
    ValueError
        When the pool is too small for the rounds asked, on bad initial rows or costs (naming
        the row), or when ``acquire`` returns other than ``batch_size`` distinct unlabelled rows
        (naming the round and the offending row).
    """
    if int(n_pool) != n_pool or n_pool < 1:
        raise ValueError(f"n_pool must be a positive integer, got {n_pool}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if int(n_rounds) != n_rounds or n_rounds < 1:
        raise ValueError(f"n_rounds must be a positive integer, got {n_rounds}")
    n_pool, batch_size, n_rounds = int(n_pool), int(batch_size), int(n_rounds)
    labelled = _check_rows(initial_rows, n_pool, "initial rows")
    if labelled.size == 0:
        raise ValueError("initial rows: need at least one labelled row to train the first model")
    final = labelled.size + (n_rounds - 1) * batch_size
    if final > n_pool:
        raise ValueError(f"{n_rounds} rounds of {batch_size} labels after {labelled.size} initial ones need "
                         f"{final} pool rows; the pool has {n_pool}")
    if cost is not None:
        cost = np.asarray(cost, dtype=float)
        if cost.shape != (n_pool,):
            raise ValueError(f"cost must be ({n_pool},), one value per pool row, got shape {cost.shape}")
        bad = np.flatnonzero(~(np.isfinite(cost) & (cost > 0)))
        if bad.size:
            raise ValueError(f"cost must be finite and positive: {bad.size} pool row(s) are not, first row "
                             f"{bad[0]} ({cost[bad[0]]})")
    is_labelled = np.zeros(n_pool, dtype=bool)
    is_labelled[labelled] = True
    for r in range(n_rounds):
        model = fit(labelled.copy())
        metrics = dict(evaluate(model))
        spent = float(labelled.size if cost is None else cost[labelled].sum())
        yield ActiveRound(r, labelled.copy(), int(labelled.size), spent, metrics, model)
        if r == n_rounds - 1:
            break
        candidates = np.flatnonzero(~is_labelled)
        chosen = _check_rows(acquire(model, candidates.copy(), batch_size, r), n_pool, f"round {r}: acquired rows")
        if chosen.size != batch_size:
            raise ValueError(f"round {r}: acquire returned {chosen.size} rows, expected {batch_size}")
        again = np.flatnonzero(is_labelled[chosen])
        if again.size:
            raise ValueError(f"round {r}: acquire returned row {chosen[again[0]]}, which is labelled already")
        is_labelled[chosen] = True
        labelled = np.concatenate([labelled, chosen])


def _curve(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"a curve needs 1-d x and y of one equal, non-zero length; got shapes {x.shape}, {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("a curve's x and y must be finite")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"a curve's x must increase strictly, got {x.tolist()}")
    return x, y


def curve_at(x, y, at) -> np.ndarray:
    """A learning curve ``y(x)``, piecewise linear between its points, at the abscissae ``at``.

    Parameters
    ----------
    x : (n,) array
        Strictly increasing abscissae (labels, or cumulative exposure cost).
    y : (n,) array
        Metric at each ``x``.
    at : array
        Where to read the curve.

    Returns
    -------
    array
        The interpolated values, shaped like ``at``; NaN outside ``[x[0], x[-1]]`` (a curve is
        never extrapolated: a comparison at a cost one method never spent has no answer).
    """
    x, y = _curve(x, y)
    at = np.asarray(at, dtype=float)
    out = np.interp(at, x, y)
    return np.where((at >= x[0]) & (at <= x[-1]), out, np.nan)


def first_reach(x, y, target: float) -> float:
    """The smallest ``x`` at which the piecewise-linear curve ``y(x)`` of a lower-is-better
    metric falls to ``target`` or below: ``x[0]`` when it starts there, the linear
    interpolation inside the first segment that crosses it, NaN when it never does.

    Parameters
    ----------
    x : (n,) array
        Strictly increasing abscissae.
    y : (n,) array
        Metric values (lower is better: CRPS, CDE loss).
    target : float
        The value to reach.

    Returns
    -------
    float
    """
    x, y = _curve(x, y)
    if not np.isfinite(target):
        raise ValueError(f"target must be finite, got {target}")
    hit = np.flatnonzero(y <= target)
    if not hit.size:
        return float("nan")
    k = int(hit[0])
    if k == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
    return float(x0 + (y0 - target) / (y0 - y1) * (x1 - x0))
