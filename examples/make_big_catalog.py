"""Build a large catalog by resampling DC2 rows and redrawing their photometric noise.

Each output row is a random DC2 row whose measured magnitudes (error < 1 mag) are redrawn as
``m + err * N(0, 1)`` (errors kept), so rows are not exact copies. Non-detections and
magnitudes with errors of 1 mag or more are copied unchanged. Written in chunks: memory stays flat whatever ``--rows`` is.

    python examples/make_big_catalog.py --rows 1000000 --out data/dc2_1M.hdf5 --seed 1
"""
from __future__ import annotations

import argparse

import h5py
import numpy as np

from calipers.core.atomic import atomic_path
from calipers.core.catalog import read_columns
from calipers.core.paths import resolve_path

SOURCE = "pkg://rail/examples_data/testdata/test_dc2_validation_9816.hdf5"


def make_catalog(out: str, rows: int, seed: int = 0, source: str = SOURCE, group: str = "photometry",
                 chunk: int = 1_000_000) -> str:
    src = resolve_path(source)
    with h5py.File(src, "r") as f:
        cols = list(f[group].keys())
    data = read_columns(src, group, cols)
    n_src = len(data[cols[0]])
    mags = [c for c in cols if c.startswith("mag_") and not c.startswith("mag_err_")]
    rng = np.random.default_rng(seed)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group(group)
            for c in cols:
                g.create_dataset(c, shape=(rows,), dtype=data[c].dtype, chunks=(min(rows, 65536),))
            for start in range(0, rows, chunk):
                end = min(start + chunk, rows)
                idx = rng.integers(0, n_src, end - start)
                for c in cols:
                    v = data[c][idx]
                    if c in mags:
                        err = data[c.replace("mag_", "mag_err_", 1)][idx]
                        # redraw measured values only; a sentinel or a >= 1 mag error stays as it is
                        det = np.isfinite(v) & (np.abs(v) < 90) & np.isfinite(err) & (err < 1)
                        v = np.where(det, v + err * rng.standard_normal(len(v)).astype(v.dtype), v)
                    elif c == "id":
                        v = np.arange(start, end, dtype=v.dtype)
                    g[c][start:end] = v
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default=SOURCE)
    a = p.parse_args()
    print(make_catalog(a.out, a.rows, a.seed, a.source))
