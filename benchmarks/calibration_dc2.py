"""Calibration on DC2: before/after metrics on held-out galaxies, one JSON line per method.

Trains the photo-z ensemble on the DC2 training file (the pipeline's stage config), estimates
p(z) for the DC2 validation file, splits it at random (seeded) into a calibration half and a
test half, fits each calibration method on the calibration half and scores the test half with
the neutral metrics (benchmarks/pzmetrics.py).

    python benchmarks/calibration_dc2.py [--model DIR]   (reuse a trained model directory)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from photoz_dc2 import TEST, TRAIN, grid_pdfs_chunked  # noqa: E402
from pzmetrics import ZGRID, metrics  # noqa: E402


def main() -> None:
    import qp
    import yaml

    from calipers.calibrate import PITRecalibrator
    from calipers.core.catalog import read_columns
    from calipers.validate.metrics import pit_values

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--config", default=os.path.join(os.path.dirname(HERE), "stages", "photoz.yml"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="calipers_calib_")
    py = [sys.executable, "-m", "calipers"]
    model = a.model or os.path.join(work, "model")
    if a.model is None:
        subprocess.run(py + ["PZInform", f"--training_catalog={TRAIN}", f"--config={a.config}", f"--model={model}"],
                       check=True, capture_output=True)
    pz = os.path.join(work, "pz.hdf5")
    subprocess.run(py + ["PZEstimate", f"--model={model}", f"--catalog={TEST}", f"--config={a.config}", f"--pz={pz}"],
                   check=True, capture_output=True)
    z = read_columns(TEST, "photometry", ["redshift"])["redshift"]
    pdfs = grid_pdfs_chunked(qp.read(pz))
    rng = np.random.default_rng(a.seed)
    cal = rng.random(len(z)) < 0.5
    test = ~cal

    from calipers.validate.local_coverage import local_coverage_test

    bands = list("ugrizy")
    phot = read_columns(TEST, "photometry", [f"mag_{b}_lsst" for b in bands])
    mags = np.stack([np.where(np.abs(phot[f"mag_{b}_lsst"]) < 90, phot[f"mag_{b}_lsst"], 30.0) for b in bands], 1)
    features = np.hstack([mags[:, 3:4], mags[:, :-1] - mags[:, 1:]])[test]  # i magnitude and colours

    def line(method, p_test, extra=None):
        m = {k: round(float(v), 5) for k, v in metrics(p_test, z[test]).items()}
        lct = local_coverage_test(features, pit_values(p_test, ZGRID, z[test]), n_null=20, seed=a.seed)
        m["local_coverage_p"] = round(lct.p_value, 4)
        m["local_coverage_stats"] = [round(v, 6) for v in lct.statistics]
        print(json.dumps({"method": method, "n_calibration": int(cal.sum()), "n_test": int(test.sum())} | m
                         | (extra or {})), flush=True)

    line("none", pdfs[test])
    rec = PITRecalibrator(n_knots=100).fit(pit_values(pdfs[cal], ZGRID, z[cal]))
    line("pit_global", rec.transform_pdfs(pdfs[test], ZGRID))
    with open(a.config) as fh:
        seed = yaml.safe_load(fh).get("PZInform", {}).get("seed", 0)
    print(json.dumps({"note": f"model seed {seed}; local_coverage_p uses the summed statistic over alpha = 0.16, 0.5, 0.84 against 20 uniform-PIT null refits (smallest possible 1/21)"}))


if __name__ == "__main__":
    main()
