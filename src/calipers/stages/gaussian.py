"""The shared Gaussian-vector stages (DESIGN: output kind "Gaussian vector per object"): calibrate
``(mu[N, K], sigma[N, K])`` predictions against the truth (temperature, then per-output conformal
factors), apply the calibration, and gate on coverage per output at 1 and 2 sigma.

Predictions are Gaussian-vector array sets (:mod:`calipers.core.transit_files`, meta ``id``); the
truth is any array set holding a ``truth_array`` [N, K] and an id column ``truth_id_column`` in its
meta, matched row by row (ids compared). The science is :mod:`calipers.calibrate.gaussian`,
:class:`calipers.calibrate.GaussianWidthScaling` and :mod:`calipers.validate.gaussian`.
"""
from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from calipers.core.errors import ConfigError, FileFormatError
from calipers.core.file_types import ArraySetFile, GaussianVectorFile, JSONFile, ReportDir
from calipers.core.gate_stage import GateStage
from calipers.core.options import GATE_OPTIONS
from calipers.core.stage import CalipersStage, Param

log = logging.getLogger(__name__)

__all__ = ["GaussianApplyCalibration", "GaussianCalibrate", "GaussianGate"]

METHODS = ("temperature", "conformal", "temperature_conformal")
CALIBRATOR_FORMAT = "calipers.gaussian_vector_calibrator"
TRUTH_OPTIONS = {
    "truth_array": Param(str, "depth", msg="Array of the truth file with the true values [N, K]"),
    "truth_id_column": Param(str, "planet_id", msg="Meta column of the truth file with the ids ('' = do not compare)"),
}


def read_with_truth(stage: CalipersStage, pred_tag: str = "predictions", truth_tag: str = "truth"):
    """``(mu, sigma, y, ids, info)``: the predictions and the truth matched row by row
    (:func:`calipers.core.transit_files.read_gaussian_with_truth`)."""
    from calipers.core.transit_files import read_gaussian_with_truth

    c = stage.config
    return read_gaussian_with_truth(stage.input_path(pred_tag), stage.input_path(truth_tag), c["truth_array"],
                                    c["truth_id_column"])


class GaussianCalibrate(CalipersStage):
    """Fit the calibration of Gaussian vectors on a labelled set: ``temperature`` (one factor T on
    every sigma, maximum likelihood: T^2 = mean z^2), ``conformal`` (a factor per output from the
    split-conformal quantile of |z| at ``coverage``, so that mu +- sigma covers it per output), or
    ``temperature_conformal`` (both, the conformal factors fitted after the temperature), the scores
    of ``window`` neighbouring outputs on each side pooled into each factor. Writes the factors as
    JSON."""

    name = "GaussianCalibrate"
    parallel = False
    inputs = [("predictions", GaussianVectorFile), ("truth", ArraySetFile)]
    outputs = [("calibrator", JSONFile)]
    config_options = CalipersStage.config_options | TRUTH_OPTIONS | {
        "method": Param(str, "temperature_conformal", msg="temperature, conformal or temperature_conformal"),
        "coverage": Param(float, 0.6827, msg="Conformal: the coverage of mu +- sigma per output after calibration"),
        "window": Param(int, 0, msg="Conformal: pool the scores of outputs k-window..k+window into output k's factor "
                                    "(0 = each output alone)"),
    }

    def validate(self):
        c = self.config
        if c["method"] not in METHODS:
            raise ConfigError(f"stage {self.instance_name}: method must be one of {METHODS}, got {c['method']!r}")
        if not 0 < c["coverage"] < 1 or c["window"] < 0:
            raise ConfigError(f"stage {self.instance_name}: need coverage in (0, 1) and window >= 0, got "
                              f"{c['coverage']}, {c['window']}")

    def process(self):
        from calipers.calibrate import GaussianWidthScaling
        from calipers.calibrate.gaussian import PerOutputConformalScaling
        from calipers.core.atomic import remove_path

        c = self.config
        mu, sigma, y, _, _ = read_with_truth(self)
        out = {"format": CALIBRATOR_FORMAT, "method": c["method"], "n_rows": int(mu.shape[0]),
               "n_outputs": int(mu.shape[1]), "temperature": 1.0, "conformal": None,
               "fitted_on": self.input_path("predictions"), "provenance": self.provenance()}
        if c["method"] in ("temperature", "temperature_conformal"):
            out["temperature"] = GaussianWidthScaling().fit(mu, sigma, y).temperature
        if c["method"] in ("conformal", "temperature_conformal"):
            try:
                out["conformal"] = PerOutputConformalScaling(c["coverage"], c["window"]).fit(
                    mu, sigma * out["temperature"], y).to_dict()
            except ValueError as err:
                raise ConfigError(f"stage {self.instance_name}: {err}") from err
        log.info("%s: temperature %.4f%s", self.instance_name, out["temperature"],
                 "" if out["conformal"] is None else
                 f", per-output factors {min(out['conformal']['factors']):.3f}-{max(out['conformal']['factors']):.3f}")
        path = self.output_path("calibrator")
        try:
            with open(path, "w") as fh:
                json.dump(out, fh, indent=1)
        except BaseException:
            remove_path(path)
            raise


def read_calibrator(path: str) -> dict:
    """A :class:`GaussianCalibrate` JSON, checked."""
    from calipers.calibrate.gaussian import PerOutputConformalScaling

    try:
        with open(path) as fh:
            cal = json.load(fh)
    except (OSError, ValueError) as err:
        raise FileFormatError(f"{path}: not a readable calibrator ({err})") from err
    if cal.get("format") != CALIBRATOR_FORMAT:
        raise FileFormatError(f"{path}: not a Gaussian-vector calibrator (format {cal.get('format')!r})")
    t = cal.get("temperature")
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise FileFormatError(f"{path}: temperature {t!r} must be a positive number")
    if cal.get("conformal") is not None:
        try:
            cal["conformal_scaling"] = PerOutputConformalScaling.from_dict(cal["conformal"])
        except (KeyError, TypeError, ValueError) as err:
            raise FileFormatError(f"{path}: bad conformal factors ({err})") from err
    return cal


class GaussianApplyCalibration(CalipersStage):
    """Apply a :class:`GaussianCalibrate` calibrator: ``sigma -> T sigma`` and, when fitted, times the
    per-output factors; ``mu`` is unchanged. A calibrator fitted for another number of outputs is
    refused before anything is written."""

    name = "GaussianApplyCalibration"
    parallel = False
    inputs = [("predictions", GaussianVectorFile), ("calibrator", JSONFile)]
    outputs = [("calibrated", GaussianVectorFile)]
    config_options = CalipersStage.config_options

    def process(self):
        from calipers.core.array_sets import ArraySetWriter
        from calipers.core.transit_files import GAUSSIAN_VECTORS, read_gaussian_vectors

        cal_path, path = self.input_path("calibrator"), self.input_path("predictions")
        cal = read_calibrator(cal_path)
        mu, sigma, meta, info = read_gaussian_vectors(path)
        if cal["n_outputs"] != mu.shape[1]:
            raise FileFormatError(f"{cal_path} was fitted for {cal['n_outputs']} outputs; {path} has {mu.shape[1]}")
        sigma = sigma * cal["temperature"]
        if "conformal_scaling" in cal:
            sigma = cal["conformal_scaling"].transform(sigma)
        attrs = {k: v for k, v in info["attrs"].items() if k != "provenance"} | {"calibrator": cal_path}
        with ArraySetWriter(self.output_path("calibrated"), GAUSSIAN_VECTORS,
                            {"mu": ((mu.shape[1],), np.float64), "sigma": ((mu.shape[1],), np.float64)},
                            fixed=info["fixed"], attrs=attrs, provenance=self.provenance()) as out:
            out.append({"mu": mu, "sigma": sigma}, {"id": meta["id"]})


class GaussianGate(GateStage):
    """Judge Gaussian vectors against the truth: the coverage of ``mu +- sigma`` and ``mu +- 2 sigma``
    in **every** output must lie in ``[min_coverage_1sigma, max_coverage_1sigma]`` and
    ``[min_coverage_2sigma, max_coverage_2sigma]``; the mean Gaussian log-likelihood, the z-score mean
    and spread are reported. Writes ``report.json`` (with the coverage of each output), the coverage
    per output, the z-score histogram and ``index.html``."""

    name = "GaussianGate"
    parallel = False
    inputs = [("predictions", GaussianVectorFile), ("truth", ArraySetFile)]
    outputs = [("report", ReportDir)]
    config_options = CalipersStage.config_options | GATE_OPTIONS | TRUTH_OPTIONS | {
        "min_coverage_1sigma": Param(float, 0.64, msg="Smallest allowed coverage of mu +- sigma in any output"),
        "max_coverage_1sigma": Param(float, 0.72, msg="Largest allowed coverage of mu +- sigma in any output"),
        "min_coverage_2sigma": Param(float, 0.93, msg="Smallest allowed coverage of mu +- 2 sigma in any output"),
        "max_coverage_2sigma": Param(float, 0.97, msg="Largest allowed coverage of mu +- 2 sigma in any output"),
    }

    def validate(self):
        super().validate()
        c = self.config
        for k in (1, 2):
            lo, hi = c[f"min_coverage_{k}sigma"], c[f"max_coverage_{k}sigma"]
            if not 0 <= lo <= hi <= 1:
                raise ConfigError(f"stage {self.instance_name}: need 0 <= min_coverage_{k}sigma <= "
                                  f"max_coverage_{k}sigma <= 1, got {lo}, {hi}")

    def process(self):
        from calipers.validate import gaussian_plots
        from calipers.validate.gate import Check
        from calipers.validate.gaussian import coverage_per_output, gaussian_log_likelihood, z_score_summary

        c = self.config
        mu, sigma, y, _, info = read_with_truth(self)
        x = info["fixed"].get("wavelength", np.arange(mu.shape[1]))
        cover = {k: coverage_per_output(y, mu, sigma, k) for k in (1, 2)}
        checks = []
        for k in (1, 2):
            worst_lo, worst_hi = int(np.argmin(cover[k])), int(np.argmax(cover[k]))
            checks.append(Check(f"coverage_{k}sigma_min", float(cover[k][worst_lo]), ">=", c[f"min_coverage_{k}sigma"],
                                why=f"the least-covered output ({worst_lo})"))
            checks.append(Check(f"coverage_{k}sigma_max", float(cover[k][worst_hi]), "<=", c[f"max_coverage_{k}sigma"],
                                why=f"the most-covered output ({worst_hi})"))
        summary = z_score_summary(y, mu, sigma) | {
            "n": int(mu.shape[0]), "n_outputs": int(mu.shape[1]),
            "mean_log_likelihood": float(np.mean(gaussian_log_likelihood(y, mu, sigma))),
            "outputs_outside_1sigma_band": int(np.sum((cover[1] < c["min_coverage_1sigma"])
                                                      | (cover[1] > c["max_coverage_1sigma"]))),
            "outputs_outside_2sigma_band": int(np.sum((cover[2] < c["min_coverage_2sigma"])
                                                      | (cover[2] > c["max_coverage_2sigma"])))}
        figures = {"coverage_per_output": gaussian_plots.coverage_per_output_figure(
                       x, {"predictions": (cover[1], cover[2])},
                       xlabel="wavelength (um)" if "wavelength" in info["fixed"] else "output"),
                   "z_scores": gaussian_plots.z_histograms({"predictions": (y - mu) / sigma})}
        self.conclude(f"Gaussian-vector gate: {os.path.basename(self.input_path('predictions'))}", summary, checks,
                      figures, extra={"coverage_1sigma_per_output": cover[1].tolist(),
                                      "coverage_2sigma_per_output": cover[2].tolist()})
