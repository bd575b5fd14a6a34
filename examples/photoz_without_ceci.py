"""Use calipers' photo-z model from plain Python (no ceci): train, predict, plot, score.

    python examples/photoz_without_ceci.py --members 2 --out pz_examples.png

Trains a small deep ensemble on RAIL's DC2 training catalog, predicts p(z) for the
validation catalog, prints the neutral metrics and saves a figure of a few p(z) with their
true redshifts and the zphot-vs-zspec plane.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from calipers.core.catalog import read_columns
from calipers.photoz import DeepEnsemble, EnsembleConfig, mixture_pdf, mixture_point_estimates, mixture_to_qp

BANDS = list("ugrizy")
DATA = "pkg://rail/examples_data/testdata/"


def load(name: str):
    cols = read_columns(DATA + name, "photometry",
                        [f"mag_{b}_lsst" for b in BANDS] + [f"mag_err_{b}_lsst" for b in BANDS] + ["redshift"])
    mags = np.stack([cols[f"mag_{b}_lsst"] for b in BANDS], 1)
    errs = np.stack([cols[f"mag_err_{b}_lsst"] for b in BANDS], 1)
    return mags, errs, cols["redshift"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--out", default="pz_examples.png")
    a = p.parse_args()
    mt, et, zt = load("test_dc2_training_9816.hdf5")
    mv, ev, zv = load("test_dc2_validation_9816.hdf5")
    ens = DeepEnsemble(EnsembleConfig(n_members=a.members)).fit(mt, et, zt, BANDS)
    w, mu, s = ens.predict(mv, ev)
    est = mixture_point_estimates(w, mu, s)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from pzmetrics import grid_pdfs, metrics

    print({k: round(float(v), 4) for k, v in metrics(grid_pdfs(mixture_to_qp(w, mu, s)), zv).items()})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zg = np.linspace(0, 3, 601)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, c in zip(np.random.default_rng(0).choice(len(zv), 5, replace=False), plt.cm.tab10.colors):
        ax1.plot(zg, mixture_pdf(w[i:i + 1], mu[i:i + 1], s[i:i + 1], zg)[0], color=c)
        ax1.axvline(zv[i], color=c, ls="--")
    ax1.set(xlabel="z", ylabel="p(z)", title="p(z) (lines) and true z (dashed)")
    ax2.hexbin(zv, est["zmode"], gridsize=80, bins="log", extent=(0, 3, 0, 3), cmap="viridis")
    ax2.plot([0, 3], [0, 3], "w--", lw=0.8)
    ax2.set(xlabel="z true", ylabel="z mode", title="DC2 validation")
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"figure: {os.path.abspath(a.out)}")


if __name__ == "__main__":
    main()
