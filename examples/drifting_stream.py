"""Build a drifting stream of nightly batches from RAIL's DC2 catalogs for pipelines/monitor_batches.yml.

    python examples/drifting_stream.py --out data/monitor/inputs
    ceci pipelines/monitor_batches.yml

A calipers photo-z deep ensemble is trained on the DC2 training catalog and predicts p(z) for the
DC2 validation catalog. A random part of the validation catalog (``--n-reference`` rows) is the
**reference**: its PITs fit a global PIT recalibration (calipers.calibrate.pit), applied to every
p(z), so the deployed model is calibrated on it. The rest is cut into batches of ``--batch-size``
objects (a random, seeded draw without replacement), each made into one kind of night:

- ``clean``: as observed;
- ``zeropoint``: the ``--zp-band`` magnitudes offset by ``--zp-offset`` mag (a photometric
  calibration error), and the p(z) predicted again from the offset photometry;
- ``noise``: extra Gaussian noise of ``--extra-noise`` mag in every band, errors left as they were
  (the model is told the photometry is better than it is), p(z) predicted again;
- ``shrink``: the p(z) widths shrunk by ``--shrink`` about each median (an over-confident model).

Writes ``reference.hdf5`` (photometry and redshift), ``reference_pz.hdf5`` (qp, gridded),
``batch_XX.hdf5`` / ``batch_XX_pz.hdf5``, two fresh monitor states and ``stream.json`` (the schedule).
What it simplifies: every batch is drawn from one population (no seasonal change), and a drift
begins at a batch boundary.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from calipers.calibrate.pit import PITRecalibrator
from calipers.core.catalog import read_columns
from calipers.core.monitor_files import write_fresh_state
from calipers.gridpdf import cdf_at, grid_quantiles
from calipers.photoz import DeepEnsemble, EnsembleConfig, mixture_pdf

BANDS = list("ugrizy")
DATA = "pkg://rail/examples_data/testdata/"
ZGRID = np.linspace(0.0, 3.0, 301)
KINDS = ("clean", "zeropoint", "noise", "shrink")


def load(name: str) -> dict:
    cols = [f"mag_{b}_lsst" for b in BANDS] + [f"mag_err_{b}_lsst" for b in BANDS] + ["redshift"]
    return read_columns(DATA + name, "photometry", cols)


def mags_errs(cat: dict, rows) -> tuple[np.ndarray, np.ndarray]:
    return (np.stack([cat[f"mag_{b}_lsst"][rows] for b in BANDS], 1).astype(np.float64),
            np.stack([cat[f"mag_err_{b}_lsst"][rows] for b in BANDS], 1).astype(np.float64))


def shrink_pdfs(pdfs: np.ndarray, factor: float) -> np.ndarray:
    """Each p(z) narrowed by ``factor`` about its median: ``p'(z) = p(m + (z - m) / f) / f``."""
    med = grid_quantiles(pdfs, ZGRID, [0.5])[:, 0]
    out = np.empty_like(pdfs)
    for i, (p, m) in enumerate(zip(pdfs, med)):
        out[i] = np.interp(m + (ZGRID - m) / factor, ZGRID, p, left=0.0, right=0.0) / factor
    return out / np.trapezoid(out, ZGRID, axis=1)[:, None]


def write_set(out: str, name: str, mags, errs, z, pdfs) -> None:
    import h5py
    import qp

    with h5py.File(os.path.join(out, f"{name}.hdf5"), "w") as f:
        g = f.create_group("photometry")
        for j, b in enumerate(BANDS):
            g.create_dataset(f"mag_{b}_lsst", data=mags[:, j])
            g.create_dataset(f"mag_err_{b}_lsst", data=errs[:, j])
        g.create_dataset("redshift", data=z)
    qp.Ensemble(qp.interp, data={"xvals": ZGRID, "yvals": pdfs}).write_to(os.path.join(out, f"{name}_pz.hdf5"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/monitor/inputs")
    ap.add_argument("--schedule", default="clean,clean,clean,clean,zeropoint,zeropoint,noise,noise,shrink,shrink",
                    help=f"comma-separated kinds of night, one per batch ({', '.join(KINDS)})")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--n-reference", type=int, default=6000)
    ap.add_argument("--zp-band", default="i")
    ap.add_argument("--zp-offset", type=float, default=0.02)
    ap.add_argument("--extra-noise", type=float, default=0.05)
    ap.add_argument("--shrink", type=float, default=0.75)
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--max-epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=22)
    a = ap.parse_args()
    schedule = a.schedule.split(",")
    if set(schedule) - set(KINDS):
        ap.error(f"unknown kinds {sorted(set(schedule) - set(KINDS))}; known: {KINDS}")
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    train, valid = load("test_dc2_training_9816.hdf5"), load("test_dc2_validation_9816.hdf5")
    n_valid = len(valid["redshift"])
    need = a.n_reference + a.batch_size * len(schedule)
    if need > n_valid:
        ap.error(f"the schedule needs {need} validation rows, the catalog has {n_valid}")
    mt, et = mags_errs(train, slice(None))
    ens = DeepEnsemble(EnsembleConfig(n_members=a.members, max_epochs=a.max_epochs, seed=a.seed)).fit(
        mt, et, train["redshift"], BANDS)

    def predict(m, e):
        p = mixture_pdf(*ens.predict(m, e), ZGRID)
        return p / np.trapezoid(p, ZGRID, axis=1)[:, None]

    order = rng.permutation(n_valid)
    ref_rows = np.sort(order[:a.n_reference])
    m_ref, e_ref = mags_errs(valid, ref_rows)
    z_ref = valid["redshift"][ref_rows]
    raw_ref = predict(m_ref, e_ref)
    recal = PITRecalibrator().fit(cdf_at(raw_ref, ZGRID, z_ref))
    write_set(a.out, "reference", m_ref, e_ref, z_ref, recal.transform_pdfs(raw_ref, ZGRID))
    band = BANDS.index(a.zp_band)
    for b, kind in enumerate(schedule):
        rows = np.sort(order[a.n_reference + b * a.batch_size:a.n_reference + (b + 1) * a.batch_size])
        m, e = mags_errs(valid, rows)
        detected = m < 40
        if kind == "zeropoint":
            m[:, band] = np.where(detected[:, band], m[:, band] + a.zp_offset, m[:, band])
        elif kind == "noise":
            m = np.where(detected, m + a.extra_noise * rng.normal(size=m.shape), m)
        pdfs = recal.transform_pdfs(predict(m, e), ZGRID)
        if kind == "shrink":
            pdfs = shrink_pdfs(pdfs, a.shrink)
        write_set(a.out, f"batch_{b:02d}", m, e, valid["redshift"][rows], pdfs)
    for name in ("covariate_state_start", "calibration_state_start"):
        write_fresh_state(os.path.join(a.out, f"{name}.json"))
    with open(os.path.join(a.out, "stream.json"), "w") as fh:
        json.dump({"schedule": schedule, "batch_size": a.batch_size, "n_reference": a.n_reference,
                   "zp_band": a.zp_band, "zp_offset": a.zp_offset, "extra_noise": a.extra_noise, "shrink": a.shrink,
                   "seed": a.seed}, fh, indent=1)
    print(f"wrote {len(schedule)} batches ({', '.join(schedule)}) and the reference to {os.path.abspath(a.out)}")


if __name__ == "__main__":
    main()
