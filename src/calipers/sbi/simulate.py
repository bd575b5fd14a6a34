"""Prior draws and simulations in seeded blocks: the result does not depend on how the blocks are
shared out (MPI ranks), only on the seed."""
from __future__ import annotations

import numpy as np


def simulate_block(simulator, block: int, block_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(theta, x) of block ``block``: ``block_size`` prior draws and their simulations."""
    rng = np.random.default_rng([seed, block])
    theta = simulator.sample_prior(block_size, rng)
    x = simulator.simulate(theta, rng)
    bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if bad.size:
        raise ValueError(f"simulator {getattr(simulator, 'name', simulator)!r} returned non-finite x for "
                         f"{bad.size} draw(s) of block {block}, first theta = {theta[bad[0]].tolist()}")
    return theta, x


def simulate(simulator, n: int, seed: int, block_size: int = 1000, blocks=None):
    """(theta, x) for ``n`` simulations, or only for the given ``blocks`` (indices into the
    ``ceil(n / block_size)`` blocks; the last may be short)."""
    n_blocks = -(-n // block_size)
    thetas, xs = [], []
    for b in (range(n_blocks) if blocks is None else blocks):
        size = min(block_size, n - b * block_size)
        t, x = simulate_block(simulator, b, size, seed)
        thetas.append(t)
        xs.append(x)
    return np.concatenate(thetas), np.concatenate(xs)
