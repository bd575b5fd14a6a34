"""Build a large catalog by resampling DC2 rows and re-drawing their photometric noise.

Each output row is a random DC2 row (with replacement). Its photometry is then re-drawn:

- ``noise="photerr"`` (default): the row's magnitudes are taken as true magnitudes and the
  ``photerr`` package's LSST 10-year error model draws new observed magnitudes and errors;
  objects below 1 sigma become non-detections with RAIL's convention (magnitude 99, error = the
  band's 1-sigma limiting magnitude), as in the DC2 test catalogs. (The DC2 magnitudes already
  carry noise, so the result is slightly noisier than LSST; it is a realistic load, not a truth
  catalog.)
- ``noise="redraw"``: measured magnitudes (error < 1 mag) are redrawn as ``m + err * N(0, 1)``
  (errors kept); non-detections are copied.

Written in chunks: memory stays flat whatever ``--rows`` is.

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


def photerr_noise(mags: dict[str, np.ndarray], bands: list[str], seed: int, model=None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """New (magnitudes, errors) per band from true magnitudes with photerr's LSST error model."""
    import pandas as pd
    from photerr import LsstErrorModel

    model = model or LsstErrorModel(sigLim=1.0)
    limits = model.getLimitingMags(nSigma=1)
    true = pd.DataFrame({b: np.where(np.abs(mags[b]) < 90, mags[b], 35.0).astype(float) for b in bands})
    obs = model(true, random_state=int(seed))
    new_m, new_e = {}, {}
    for b in bands:
        m, e = obs[b].to_numpy(), obs[f"{b}_err"].to_numpy()
        nd = ~np.isfinite(m) | ~np.isfinite(e)
        new_m[b] = np.where(nd, 99.0, m).astype(np.float32)
        new_e[b] = np.where(nd, limits[b], e).astype(np.float32)
    return new_m, new_e


def make_catalog(out: str, rows: int, seed: int = 0, source: str = SOURCE, group: str = "photometry",
                 chunk: int = 1_000_000, noise: str = "photerr", progress: bool = False) -> str:
    """Write a ``rows``-row catalog resampled from ``source`` to ``out`` (atomically)."""
    if noise not in ("photerr", "redraw"):
        raise ValueError(f"noise must be 'photerr' or 'redraw', got {noise!r}")
    src = resolve_path(source)
    with h5py.File(src, "r") as f:
        cols = list(f[group].keys())
    data = read_columns(src, group, cols)
    n_src = len(data[cols[0]])
    mags = [c for c in cols if c.startswith("mag_") and not c.startswith("mag_err_")]
    bands = {c: c[len("mag_"):].split("_")[0] for c in mags}  # mag_u_lsst -> u
    rng = np.random.default_rng(seed)
    model = None
    if noise == "photerr":
        from photerr import LsstErrorModel

        model = LsstErrorModel(sigLim=1.0)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            g = f.create_group(group)
            for c in cols:
                g.create_dataset(c, shape=(rows,), dtype=data[c].dtype, chunks=(min(rows, 65536),))
            for start in range(0, rows, chunk):
                end = min(start + chunk, rows)
                idx = rng.integers(0, n_src, end - start)
                if noise == "photerr":
                    new_m, new_e = photerr_noise({bands[c]: data[c][idx] for c in mags}, list(bands.values()),
                                                 seed=int(rng.integers(2**31)), model=model)
                for c in cols:
                    v = data[c][idx]
                    if noise == "photerr" and c in mags:
                        v = new_m[bands[c]]
                    elif noise == "photerr" and c.startswith("mag_err_"):
                        v = new_e[bands["mag_" + c[len("mag_err_"):]]]
                    elif c in mags:
                        err = data[c.replace("mag_", "mag_err_", 1)][idx]
                        # redraw measured values only; a sentinel or a >= 1 mag error stays as it is
                        det = np.isfinite(v) & (np.abs(v) < 90) & np.isfinite(err) & (err < 1)
                        v = np.where(det, v + err * rng.standard_normal(len(v)).astype(v.dtype), v)
                    elif c == "id":
                        v = np.arange(start, end, dtype=v.dtype)
                    g[c][start:end] = v
                if progress:
                    print(f"  catalog rows {end}/{rows}", flush=True)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default=SOURCE)
    p.add_argument("--noise", default="photerr", choices=["photerr", "redraw"])
    a = p.parse_args()
    print(make_catalog(a.out, a.rows, a.seed, a.source, noise=a.noise, progress=True))
