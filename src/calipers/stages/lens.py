"""Strong-lens finding stages: simulate or read cutouts, train and score a CNN ensemble, calibrate
its probability, measure its selection function, and gate it (issue 18).

The science lives in :mod:`calipers.lens` (simulator, CNN), :mod:`calipers.calibrate.classification`
(temperature, prior shift) and :mod:`calipers.validate` (metrics, selection function, plots); these
stages read, configure, parallelise and write.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from calipers.core.errors import ConfigError, FileFormatError
from calipers.core.file_types import (ClassPredictionsFile, CutoutIndex, ImageSetFile, JSONFile, ModelDir,
                                      ReportDir)
from calipers.core.gate_stage import GateStage
from calipers.core.options import GATE_OPTIONS
from calipers.core.report import html_table
from calipers.core.stage import DEVICE_OPTION, CalipersStage, Param, rank_block_range

log = logging.getLogger(__name__)



# ============================================================================ data

class LensSimulate(CalipersStage):
    """Simulate g, r, i cutouts of lenses and non-lenses in their natural mix
    (:mod:`calipers.lens.simulate`), in seeded blocks: image ``i`` is the same whatever ``n_images``,
    the chunking or the number of MPI ranks (each rank simulates a contiguous run of blocks and
    rank 0 joins the parts). Writes an image set: ``data``, ``ivar`` and the truth and observing
    conditions of every image in ``meta``."""

    name = "LensSimulate"
    parallel = True
    inputs = []
    outputs = [("images", ImageSetFile)]
    config_options = CalipersStage.config_options | {
        "n_images": Param(int, 1000, msg="Number of cutouts"),
        "start": Param(int, 0, msg="Index of the first cutout in the seeded sequence (disjoint sets: same seed, "
                                   "non-overlapping ranges, or different seeds)"),
        "lens_fraction": Param(float, 0.25, msg="Fraction of lenses (0.25 = 1:3; 0 = negatives only, 1 = lenses only)"),
        "negative_mix": Param(dict, {}, msg="Non-lens classes and their fractions (empty = the simulator's natural "
                                            "mix: elliptical .40, spiral .20, merger .15, ring .10, edge_on .10, "
                                            "artifact .05)"),
        "neighbour_fraction": Param(float, 0.30, msg="Fraction of all images with a neighbouring galaxy"),
        "fwhm_r_range": Param(list, [0.6, 1.4], msg="r-band PSF FWHM range (arcsec)"),
        "n_exposures_range": Param(list, [1, 10], msg="Exposure count range (inclusive)"),
        "theta_e_range": Param(list, [0.8, 3.0], msg="Einstein radius range (arcsec)"),
        "source_mag_r_range": Param(list, [22.0, 26.0], msg="Unlensed source r magnitude range"),
        "min_arc_snr": Param(float, 0.0, msg="Lenses are redrawn until their arc S/N reaches this (0 = no cut)"),
        "block_size": Param(int, 256, msg="Images per seeded block (changing it changes the images)"),
        "chunk_size": Param(int, 2048, msg="Images simulated and written at a time (a multiple of block_size)"),
    }

    def _sim_config(self):
        from calipers.lens.simulate import LensSimConfig

        c = self.config
        kw = dict(lens_fraction=c["lens_fraction"], neighbour_fraction=c["neighbour_fraction"],
                  fwhm_r_range=tuple(c["fwhm_r_range"]), n_exposures_range=tuple(int(v) for v in c["n_exposures_range"]),
                  theta_e_range=tuple(c["theta_e_range"]), source_mag_r_range=tuple(c["source_mag_r_range"]),
                  min_arc_snr=c["min_arc_snr"], block_size=c["block_size"])
        if c["negative_mix"]:
            kw["negative_mix"] = dict(c["negative_mix"])
        try:
            return LensSimConfig(**kw)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"stage {self.instance_name}: {err}") from err

    def validate(self):
        c = self.config
        if c["n_images"] < 1 or c["start"] < 0:
            raise ConfigError(f"stage {self.instance_name}: n_images must be >= 1 and start >= 0")
        if c["chunk_size"] < 1 or c["chunk_size"] % c["block_size"]:
            raise ConfigError(f"stage {self.instance_name}: chunk_size ({c['chunk_size']}) must be a positive "
                              f"multiple of block_size ({c['block_size']})")
        self._sim_config()

    def process(self):
        from tqdm.auto import tqdm

        from calipers.core.image_sets import ImageSetWriter, iterate_image_set
        from calipers.lens.simulate import simulate_cutouts

        c = self.config
        cfg = self._sim_config()
        n, first = c["n_images"], c["start"]
        target = self.output_path("images")
        prov = self.provenance()
        lo, hi = rank_block_range(n, c["chunk_size"], self.rank, self.size)
        path = target if self.size == 1 else f"{target}.rank{self.rank}"
        with ImageSetWriter(path, provenance=prov) as out:
            for s in tqdm(range(lo, hi, c["chunk_size"]), desc=f"{self.instance_name} chunks",
                          disable=self.rank != 0):
                out.append(simulate_cutouts(min(c["chunk_size"], hi - s), cfg, c["seed"], start=first + s))
        if self.size == 1:
            return
        self.comm.Barrier()
        if self.rank == 0:
            with ImageSetWriter(target, provenance=prov) as out:
                for r in range(self.size):
                    part = f"{target}.rank{r}"
                    r_lo, r_hi = rank_block_range(n, c["chunk_size"], r, self.size)
                    if r_hi > r_lo:
                        for _, chunk in iterate_image_set(part, c["chunk_size"]):
                            out.append(chunk)
                    os.remove(part)
        self.comm.Barrier()


class LensCutouts(CalipersStage):
    """Read FITS cutouts (one file per object, one HDU per band, as survey teams store them) listed in
    a CSV or HDF5 index with their labels and metadata, check them (missing bands, wrong sizes,
    NaN pixels: an error naming the file, band and row, and nothing written), and write an image set."""

    name = "LensCutouts"
    parallel = False
    inputs = [("cutout_index", CutoutIndex)]
    outputs = [("images", ImageSetFile)]
    config_options = CalipersStage.config_options | {
        "bands": Param(list, ["g", "r", "i"], msg="Bands to read, one HDU each (EXTNAME = band)"),
        "n_pix": Param(int, 0, msg="Required cutout size in pixels (0 = whatever the first file has)"),
        "ivar": Param(str, "hdu", msg="hdu (read IVAR_<band> HDUs) or estimate (sky variance from a clipped MAD)"),
        "base_dir": Param(str, "", msg="Directory the index's file names are relative to ('' = the index's own)"),
    }

    def validate(self):
        if self.config["ivar"] not in ("hdu", "estimate"):
            raise ConfigError(f"stage {self.instance_name}: ivar must be 'hdu' or 'estimate', got {self.config['ivar']!r}")

    def process(self):
        from calipers.core.image_sets import read_fits_cutouts, write_image_set

        c = self.config
        cut = read_fits_cutouts(self.input_path("cutout_index"), bands=tuple(c["bands"]), n_pix=c["n_pix"] or None,
                                base_dir=c["base_dir"] or None, ivar=c["ivar"])
        write_image_set(self.output_path("images"), cut, provenance=self.provenance())


# ============================================================================ model

class LensTrain(CalipersStage):
    """Train the lens-finder ensemble (:mod:`calipers.lens.model`) on an image set with labels.

    Members train one after another, or spread over MPI ranks (member k on rank k mod size): a
    member's seed is ``seed * 1000 + k``, so the model does not depend on the number of ranks.
    Writes a model directory (JSON + state dicts, loaded without executing code) and, with
    ``export_onnx``, member 0 as ``member_0.onnx`` checked against torch with onnxruntime."""

    name = "LensTrain"
    parallel = True
    inputs = [("images", ImageSetFile)]
    outputs = [("model", ModelDir)]
    config_options = CalipersStage.config_options | DEVICE_OPTION | {
        "n_members": Param(int, 5, msg="Ensemble members (different seeds)"),
        "max_epochs": Param(int, 15, msg="Largest number of epochs per member"),
        "patience": Param(int, 4, msg="Epochs without a better validation AUROC before a member stops"),
        "batch_size": Param(int, 128, msg="Images per optimisation step"),
        "learning_rate": Param(float, 2e-3, msg="Peak AdamW learning rate (one-cycle schedule)"),
        "weight_decay": Param(float, 1e-4, msg="AdamW weight decay"),
        "validation_fraction": Param(float, 0.1, msg="Part of the images held out for early stopping"),
        "class_weighting": Param(bool, True, msg="Weight lenses by n_neg / n_pos (the logit is shifted back)"),
        "match_exposures": Param(bool, True, msg="Re-weight negatives to the lenses' exposure-count distribution"),
        "augment": Param(bool, True, msg="Random rotation by 90 degrees / flip per image"),
        "specialise": Param(str, "", msg="'' (all generalists), psf or depth: members 1.. up-weight one quantile "
                                         "stratum of PSF FWHM or exposure count each"),
        "widths": Param(list, [16, 16, 32, 64, 64], msg="Channels of the stem and residual blocks"),
        "head_hidden": Param(int, 64, msg="Hidden units of the head"),
        "dropout": Param(float, 0.3, msg="Dropout in the head (also the Monte-Carlo dropout at scoring)"),
        "meta_columns": Param(list, [], msg="Metadata fed to the head (e.g. [psf_fwhm_r, depth_r, n_exposures]); "
                                            "[] = images only"),
        "max_images": Param(int, 0, msg="Use at most this many images (the first ones; 0 = all)"),
        "export_onnx": Param(bool, True, msg="Also export member 0 to ONNX (member_0.onnx in the model directory)"),
    }

    def _train_config(self):
        from calipers.lens.model import LensTrainConfig

        c = self.config
        try:
            return LensTrainConfig(n_members=c["n_members"], max_epochs=c["max_epochs"], patience=c["patience"],
                                    batch_size=c["batch_size"], learning_rate=c["learning_rate"],
                                    weight_decay=c["weight_decay"], validation_fraction=c["validation_fraction"],
                                    class_weighting=c["class_weighting"], match_exposures=c["match_exposures"],
                                    augment=c["augment"], specialise=c["specialise"] or None)
        except ValueError as err:
            raise ConfigError(f"stage {self.instance_name}: {err}") from err

    def validate(self):
        self._train_config()

    def process(self):
        from calipers.core.image_sets import image_set_info, read_image_set
        from calipers.core.lens_models import export_member_onnx, write_lens_model
        from calipers.lens.model import LensCNNConfig, LensEnsemble, train_ensemble

        c = self.config
        path = self.input_path("images")
        info = image_set_info(path)
        n = info["n"] if not c["max_images"] else min(c["max_images"], info["n"])
        if "label" not in info["meta_columns"]:
            raise FileFormatError(f"{path}: the image set has no 'label' column in meta; training needs labels")
        missing = [m for m in c["meta_columns"] if m not in info["meta_columns"]]
        if missing:
            raise FileFormatError(f"{path}: meta column(s) {missing} requested by meta_columns are missing; "
                                  f"have {info['meta_columns']}")
        train = self._train_config()
        _, bands, n_pix, _ = info["shape"]
        try:
            cnn = LensCNNConfig(n_bands=bands, n_pix=n_pix, widths=tuple(c["widths"]), head_hidden=c["head_hidden"],
                                dropout=c["dropout"], meta_columns=tuple(c["meta_columns"]))
        except ValueError as err:
            raise ConfigError(f"stage {self.instance_name}: {err}") from err
        cut = read_image_set(path, rows=slice(0, n))
        labels = np.asarray(cut.meta["label"]).astype(int)
        mine = [k for k in range(train.n_members) if k % self.size == self.rank]
        log.info("training %d of %d member(s) on %d images (%d lenses) on %s", len(mine), train.n_members, n,
                 labels.sum(), self.torch_device())
        part = train_ensemble(cut.data, cut.ivar, labels, cut.meta, cnn, train, seed=c["seed"],
                              device=self.torch_device(), members=mine, progress=self.rank == 0)
        parts = [part] if self.size == 1 else self.comm.gather(part, root=0)
        if self.rank == 0:
            by_member = {}
            for p, ks in zip(parts, [[k for k in range(train.n_members) if k % self.size == r]
                                     for r in range(self.size)]):
                for k, s, seed, h in zip(ks, p.states, p.seeds, p.histories):
                    by_member[k] = (s, seed, h)
            ens = LensEnsemble(cnn, train, [by_member[k][0] for k in range(train.n_members)],
                               [by_member[k][1] for k in range(train.n_members)],
                               [by_member[k][2] for k in range(train.n_members)])
            out = self.output_path("model")
            write_lens_model(out, ens, extra={"training_images": path, "n_training_images": int(n),
                                              "bands": info["bands"], "pixel_scale": info["pixel_scale"],
                                              "provenance": self.provenance()})
            if c["export_onnx"]:
                onnx = export_member_onnx(ens, 0, os.path.join(out, "member_0.onnx"))
                log.info("ONNX export of member 0: %s", onnx)
        if self.size > 1:
            self.comm.Barrier()


class LensScore(CalipersStage):
    """Score an image set with the ensemble: every member's logit averaged over the 8 dihedral
    transforms of each image (Monte-Carlo dropout mean and variance on the head), chunk by chunk
    and spread over MPI ranks. Writes class predictions (``member_logits``, ``member_logit_var``, the
    plain mean ``logit`` and ``prob``, ``logit_single_view`` of member 0 on the untransformed image:
    the no-ensemble, no-averaging baseline) with the images' metadata."""

    name = "LensScore"
    parallel = True
    inputs = [("model", ModelDir), ("images", ImageSetFile)]
    outputs = [("predictions", ClassPredictionsFile)]
    config_options = CalipersStage.config_options | DEVICE_OPTION | {
        "mc_samples": Param(int, 16, msg="Monte-Carlo dropout passes through the head per member"),
        "batch_size": Param(int, 128, msg="Images per forward pass"),
        "chunk_size": Param(int, 2048, msg="Images read at a time (a multiple of batch_size)"),
    }

    def validate(self):
        c = self.config
        if c["mc_samples"] < 1 or c["batch_size"] < 1 or c["chunk_size"] % c["batch_size"]:
            raise ConfigError(f"stage {self.instance_name}: need mc_samples >= 1 and chunk_size a multiple of "
                              f"batch_size, got {c['mc_samples']}, {c['chunk_size']}, {c['batch_size']}")

    def process(self):
        from calipers.core.catalog import chunk_ranges
        from calipers.core.class_predictions import ClassPredictions, sigmoid, write_class_predictions
        from calipers.core.image_sets import image_set_info, read_image_set
        from calipers.core.lens_models import read_lens_model
        from calipers.lens.model import ImageShapeError, score_members

        c = self.config
        ens, _ = read_lens_model(self.input_path("model"))
        path = self.input_path("images")
        info = image_set_info(path)
        _, bands, n_pix, _ = info["shape"]
        if (bands, n_pix) != (ens.cnn.n_bands, ens.cnn.n_pix):
            raise ImageShapeError(f"{path}: cutouts have {bands} bands of {n_pix}x{n_pix} pixels; the model "
                                  f"{self.input_path('model')} was trained on {ens.cnn.n_bands} bands of "
                                  f"{ens.cnn.n_pix}x{ens.cnn.n_pix}")
        n = info["n"]
        device = self.torch_device()
        parts = {}
        from tqdm.auto import tqdm

        for s, e in tqdm(chunk_ranges(n, c["chunk_size"], self.rank, self.size), desc=f"{self.instance_name} chunks",
                         disable=self.rank != 0):
            cut = read_image_set(path, rows=slice(s, e))
            sc = score_members(ens, cut.data, cut.ivar, cut.meta, mc_samples=c["mc_samples"], seed=c["seed"],
                               device=device, batch_size=c["batch_size"], row_offset=s)
            parts[s] = (sc.deterministic, sc.variance, sc.single_view[0], cut.meta)
        if self.size > 1:
            gathered = self.comm.gather(parts, root=0)
            if self.rank != 0:
                return
            parts = {k: v for g in gathered for k, v in g.items()}
        starts = sorted(parts)
        member = np.concatenate([parts[s][0] for s in starts], axis=1)
        var = np.concatenate([parts[s][1] for s in starts], axis=1)
        single = np.concatenate([parts[s][2] for s in starts])
        meta = {k: np.concatenate([parts[s][3][k] for s in starts]) for k in parts[starts[0]][3]}
        logit = member.mean(axis=0)
        pred = ClassPredictions(logit, sigmoid(logit), member, var, {"logit_single_view": single}, meta,
                                {"calibration": {"fusion": "mean", "calibrated": False},
                                 "model": self.input_path("model"), "images": path})
        write_class_predictions(self.output_path("predictions"), pred, provenance=self.provenance())


# ============================================================================ calibration

def _fused(pred, method: str, stacking=None) -> np.ndarray:
    from calipers.lens.model import fuse_members

    if method == "stacked":
        return stacking.transform(pred.member_logits)
    return fuse_members(pred.member_logits, pred.member_logit_var, method)


class ClassifierCalibrate(CalipersStage):
    """Fit the calibration of a classifier's logits on a labelled calibration set: the member fusion
    (plain mean, or inverse Monte-Carlo-variance weighting kept only if its AUROC on this set is
    higher), temperature scaling, and the prior shift to the deployment prevalence, optionally
    followed by an affine map fitted at the deployment prevalence (``deployment_fit: affine``, see
    :class:`calipers.calibrate.classification.DeploymentAffine`). Writes the calibrator (JSON) and a
    report with the reliability diagrams before and after."""

    name = "ClassifierCalibrate"
    parallel = False
    inputs = [("calibration_predictions", ClassPredictionsFile)]
    outputs = [("calibrator", JSONFile), ("calibration_report", ReportDir)]
    config_options = CalipersStage.config_options | {
        "deployment_prevalence": Param(float, 1e-3, msg="Prevalence of positives where the classifier is deployed "
                                                        "(strong lenses in a survey: ~1e-3)"),
        "fusion": Param(str, "auto", msg="Member fusion: mean, inverse_variance, stacked (weights by logistic "
                                         "regression on the calibration set), or auto (the one with the highest "
                                         "calibration AUROC, the stacked one judged on cross-fitted logits; the "
                                         "mean unless another beats it)"),
        "n_bins": Param(int, 15, msg="Equal-mass bins of the ECE / reliability diagram"),
        "deployment_fit": Param(str, "prior_shift", msg="prior_shift (Bayes' rule only) or affine (then a slope "
                                                        "and offset fitted at the deployment prevalence)"),
        "temperature_bias": Param(bool, False, msg="Fit an offset with the temperature (Platt scaling): needed when "
                                                   "the training mix of negatives differs from the calibration set's"),
    }

    def validate(self):
        c = self.config
        if not 0 < c["deployment_prevalence"] < 1:
            raise ConfigError(f"stage {self.instance_name}: deployment_prevalence must be in (0, 1)")
        if c["fusion"] not in ("auto", "mean", "inverse_variance", "stacked"):
            raise ConfigError(f"stage {self.instance_name}: fusion must be auto, mean, inverse_variance or stacked")
        if c["deployment_fit"] not in ("prior_shift", "affine"):
            raise ConfigError(f"stage {self.instance_name}: deployment_fit must be prior_shift or affine, "
                              f"got {c['deployment_fit']!r}")

    def _extra_negatives(self, fusion: str, stacking=None):
        """Raw fused logits of further negatives for the deployment fit (none here)."""
        return None

    def process(self):
        from calipers.calibrate.classification import ClassifierCalibrator
        from calipers.core.calibrators import write_classifier_calibrator
        from calipers.core.class_predictions import read_class_predictions
        from calipers.core.report import write_report
        from calipers.validate import classification as cls
        from calipers.validate import classification_plots as cplots

        c = self.config
        path = self.input_path("calibration_predictions")
        pred = read_class_predictions(path)
        labels = pred.labels(path)
        if labels.min() == labels.max():
            raise FileFormatError(f"{path}: the calibration set holds one class only")
        from calipers.calibrate.classification import StackedFusion

        candidates = {"mean": _fused(pred, "mean")}
        judged = {}  # what a candidate's AUROC is measured on (stacked: its cross-fitted logits)
        stacking = None
        if pred.member_logit_var is not None and pred.member_logits.shape[0] > 1:
            candidates["inverse_variance"] = _fused(pred, "inverse_variance")
        if pred.member_logits.shape[0] > 1 and c["fusion"] in ("auto", "stacked"):
            stacking = StackedFusion().fit(pred.member_logits, labels)
            candidates["stacked"] = stacking.transform(pred.member_logits)
            judged["stacked"] = StackedFusion().cross_fitted(pred.member_logits, labels, seed=c["seed"])
        aurocs = {k: float(cls.auroc(judged.get(k, v), labels)) for k, v in candidates.items()}
        if c["fusion"] == "auto":
            fusion = max(aurocs, key=lambda k: (aurocs[k], k == "mean"))  # ties keep the mean
        else:
            fusion = c["fusion"]
            if fusion not in candidates:
                raise FileFormatError(f"{path}: fusion {fusion!r} needs member_logit_var and several members")
        if fusion != "stacked":
            stacking = None
        raw = candidates[fusion]
        extra = self._extra_negatives(fusion, stacking)
        cal = ClassifierCalibrator().fit(raw, labels, deployment_prevalence=c["deployment_prevalence"],
                                         deployment_fit=c["deployment_fit"], extra_negative_logits=extra,
                                         fit_bias=c["temperature_bias"])
        after = cal.transform(raw, prevalence="calibration")
        before_err = cls.calibration_errors(cls.sigmoid(raw), labels, n_bins=c["n_bins"])
        after_err = cls.calibration_errors(cls.sigmoid(after), labels, n_bins=c["n_bins"])
        summary = {"fusion": fusion, "auroc_mean_fusion": aurocs["mean"],
                   "auroc_inverse_variance_fusion": aurocs.get("inverse_variance", float("nan")),
                   "auroc_stacked_fusion_cross_fitted": aurocs.get("stacked", float("nan")),
                   "stacking_weights": None if stacking is None else stacking.weights,
                   "temperature": float(cal.temperature.temperature), "temperature_bias": float(cal.temperature.bias),
                   "calibration_prevalence": float(labels.mean()), "deployment_prevalence": c["deployment_prevalence"],
                   "ece_before": before_err["ece"], "ece_after": after_err["ece"],
                   "nll_before": float(cls.binary_nll(cls.sigmoid(raw), labels)),
                   "nll_after": float(cls.binary_nll(cls.sigmoid(after), labels)), "n": int(len(labels)),
                   "deployment_fit": c["deployment_fit"], "n_extra_negatives": 0 if extra is None else int(extra.size)}
        if cal.affine is not None:
            summary |= {"deployment_slope": cal.affine.slope, "deployment_offset": cal.affine.offset,
                        "deployment_nll_prior_shift": cal.affine.nll_before,
                        "deployment_nll_affine": cal.affine.nll_after}
        write_classifier_calibrator(self.output_path("calibrator"), fusion, cal, summary, self.provenance(),
                                    stacking=stacking)
        after_label = "after temperature and bias" if c["temperature_bias"] else "after temperature"
        fig = cplots.reliability_diagram([before_err, after_err], ["before (fused logit)", after_label])
        write_report(self.output_path("calibration_report"), "Classifier calibration", summary, [],
                     {"reliability": fig}, provenance=self.provenance())


class ClassifierCalibrateWithNegatives(ClassifierCalibrate):
    """:class:`ClassifierCalibrate` with a second, negatives-only input pooled into the deployment
    fit (``deployment_fit: affine``, the default here). At a deployment prevalence of 1e-3 the fit is
    ruled by the negatives' top tail; a 1:3 calibration set holds a few negatives there, a large
    natural-mix negative set (disjoint from the sets the gate and the selection function judge)
    holds enough. Temperature and fusion are still fitted on the calibration set alone."""

    name = "ClassifierCalibrateWithNegatives"
    inputs = [("calibration_predictions", ClassPredictionsFile), ("negative_predictions", ClassPredictionsFile)]
    config_options = ClassifierCalibrate.config_options | {
        "deployment_fit": Param(str, "affine", msg="affine (a slope and offset fitted at the deployment prevalence "
                                                   "on both inputs); prior_shift ignores the negatives"),
    }

    def validate(self):
        super().validate()
        if self.config["deployment_fit"] != "affine":
            raise ConfigError(f"stage {self.instance_name}: the negatives are used only by deployment_fit: affine")

    def _extra_negatives(self, fusion: str, stacking=None):
        from calipers.core.class_predictions import read_class_predictions

        path = self.input_path("negative_predictions")
        pred = read_class_predictions(path)
        labels = pred.labels(path)
        rows = np.flatnonzero(labels != 0)
        if rows.size:
            raise FileFormatError(f"{path}: column label must be 0 for a negatives-only set; {rows.size} row(s) are "
                                  f"not, first at row {rows[0]}")
        if fusion == "inverse_variance" and pred.member_logit_var is None:
            raise FileFormatError(f"{path}: the fusion is inverse_variance but the file has no member_logit_var")
        return _fused(pred, fusion, stacking)


class ClassifierApplyCalibration(CalipersStage):
    """Apply a fitted classifier calibration to predictions: ``logit``/``prob`` become the calibrated
    values at the calibration set's prevalence, ``logit_deploy``/``prob_deploy`` the values at the
    deployment prevalence (the purity a search should expect), ``logit_fused`` the fused logit before
    the temperature, ``logit_uncalibrated`` the ensemble before anything fitted on the calibration set
    (the fused logit, or the members' mean when the fusion is stacked: its weights are fitted there)."""

    name = "ClassifierApplyCalibration"
    parallel = False
    inputs = [("calibrator", JSONFile), ("predictions", ClassPredictionsFile)]
    outputs = [("calibrated_predictions", ClassPredictionsFile)]

    def process(self):
        from calipers.core.calibrators import read_classifier_calibrator, read_stacking
        from calipers.core.class_predictions import read_class_predictions, sigmoid, write_class_predictions

        fusion, cal, spec = read_classifier_calibrator(self.input_path("calibrator"))
        stacking = read_stacking(self.input_path("calibrator"), spec)
        pred = read_class_predictions(self.input_path("predictions"))
        if fusion == "inverse_variance" and pred.member_logit_var is None:
            raise FileFormatError(f"{self.input_path('predictions')}: the calibrator fuses members by inverse "
                                  f"variance but the file has no member_logit_var")
        if stacking is not None and pred.member_logits.shape[0] != len(stacking.weights):
            raise FileFormatError(f"{self.input_path('predictions')}: {pred.member_logits.shape[0]} members, the "
                                  f"calibrator's stacked fusion weighs {len(stacking.weights)}")
        raw = _fused(pred, fusion, stacking)
        logit = cal.transform(raw, prevalence="calibration")
        deploy = cal.transform(raw, prevalence="deployment")
        # "uncalibrated" is the ensemble before anything fitted on the calibration set: the plain mean of
        # the members (a stacked fusion's weights are fitted there, so they are part of the calibration)
        uncalibrated = raw if fusion != "stacked" else _fused(pred, "mean")
        pred.columns |= {"logit_uncalibrated": uncalibrated, "logit_fused": raw, "logit_deploy": deploy,
                         "prob_deploy": sigmoid(deploy)}
        pred.logit, pred.prob = logit, sigmoid(logit)
        pred.attrs["calibration"] = {"fusion": fusion, "calibrated": True, "calibrator": self.input_path("calibrator"),
                                     "deployment_prevalence": spec["fit"]["deployment_prevalence"]}
        write_class_predictions(self.output_path("calibrated_predictions"), pred, provenance=self.provenance())


# ============================================================================ selection function

DEFAULT_STRATA = {
    "psf_fwhm_r": [0.6, 0.8, 1.0, 1.2, 1.4],
    "n_exposures": [0.5, 2.5, 4.5, 6.5, 8.5, 10.5],
    "theta_e": [0.8, 1.2, 1.6, 2.0, 2.5, 3.0],
    "source_mag_r": [22.0, 23.0, 24.0, 25.0, 26.0],
    "arc_snr": [15.0, 20.0, 30.0, 50.0, 100.0, 1e9],
}


class LensSelectionFunction(CalipersStage):
    """The selection function of the calibrated finder: the threshold is fixed on the natural-mix
    negatives at ``fpr_target``; completeness of the lenses per stratum of PSF FWHM, exposure count,
    Einstein radius, source magnitude and arc S/N (and 2-D PSF FWHM x theta_E), each with a
    Clopper-Pearson interval, strata with fewer than ``min_count`` lenses flagged 'insufficient
    data'; the false-positive rate per contaminant class with its interval."""

    name = "LensSelectionFunction"
    parallel = False
    inputs = [("lens_predictions", ClassPredictionsFile), ("negative_predictions", ClassPredictionsFile)]
    outputs = [("selection_function", ReportDir)]
    config_options = CalipersStage.config_options | {
        "fpr_target": Param(float, 1e-3, msg="False-positive rate on the negatives that fixes the threshold"),
        "strata": Param(dict, DEFAULT_STRATA, msg="Stratum column -> bin edges"),
        "pairs": Param(list, ["psf_fwhm_r:theta_e"], msg="2-D strata, each 'column_x:column_y' (columns of strata)"),
        "min_count": Param(int, 50, msg="Fewest lenses for a stratum's completeness to be reported"),
        "confidence": Param(float, 0.95, msg="Confidence level of the intervals"),
    }

    def _pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for p in self.config["pairs"]:
            parts = str(p).split(":")
            if len(parts) != 2 or not all(parts):
                raise ConfigError(f"stage {self.instance_name}: pairs entries are 'column_x:column_y', got {p!r}")
            pairs.append((parts[0], parts[1]))
        return pairs

    def validate(self):
        self._pairs()
        strata = self.config["strata"]
        for name, edges in strata.items():
            e = np.asarray(edges, dtype=float)
            if e.ndim != 1 or len(e) < 2 or np.any(np.diff(e) <= 0):
                raise ConfigError(f"stage {self.instance_name}: strata[{name!r}] must be increasing bin edges, got {edges}")
        for a, b in self._pairs():
            if a not in strata or b not in strata:
                raise ConfigError(f"stage {self.instance_name}: pair {a}:{b} needs both columns in strata")

    def process(self):
        from calipers.core.calibrators import write_json_atomic
        from calipers.core.class_predictions import read_class_predictions
        from calipers.core.report import write_report
        from calipers.lens.simulate import CLASS_NAMES
        from calipers.validate import classification_plots as cplots
        from calipers.validate.selection_function import selection_function

        c = self.config
        pairs = self._pairs()
        lens_path, neg_path = self.input_path("lens_predictions"), self.input_path("negative_predictions")
        strata = {k: list(v) for k, v in c["strata"].items()}
        lenses = read_class_predictions(lens_path)
        missing = [k for k in strata if k not in lenses.meta]
        for a, b in pairs:
            missing += [k for k in (a, b) if k not in lenses.meta and k not in missing]
        if missing:
            raise FileFormatError(f"{lens_path}: meta column(s) {missing} needed for the strata are missing; have "
                                  f"{sorted(lenses.meta)}")
        negs = read_class_predictions(neg_path, meta_columns=["object_class", "label"])
        if np.any(lenses.labels(lens_path) != 1):
            raise FileFormatError(f"{lens_path}: the lens sample holds non-lenses (label 0 at row "
                                  f"{int(np.flatnonzero(lenses.labels(lens_path) != 1)[0])})")
        if np.any(negs.labels(neg_path) != 0):
            raise FileFormatError(f"{neg_path}: the negatives hold lenses (label 1 at row "
                                  f"{int(np.flatnonzero(negs.labels(neg_path) != 0)[0])})")
        sf = selection_function(lenses.logit, {k: lenses.meta[k] for k in lenses.meta}, negs.logit,
                                negs.meta["object_class"], CLASS_NAMES, fpr_target=c["fpr_target"], strata=strata,
                                pairs=pairs, min_count=c["min_count"], cl=c["confidence"])
        sf.fpr_classes = [r for r in sf.fpr_classes if r["class"] != "lens"]  # the negatives' classes only
        payload = sf.to_dict()
        out = self.output_path("selection_function")
        figures = {"completeness": cplots.completeness_plot(sf.strata),
                   "fpr_by_class": cplots.fpr_by_class_plot(sf.fpr_classes)}
        for a, b in pairs:
            figures[f"heatmap_{a}__{b}"] = cplots.selection_heatmap(sf.two_d[f"{a}__{b}"])
        summary = {"threshold_logit": float(sf.threshold), "fpr_target": c["fpr_target"],
                   "n_lenses": int(len(lenses)), "n_negatives": int(len(negs))}
        write_report(out, f"Lens selection function at FPR {c['fpr_target']:g}", summary, [], figures,
                     provenance=self.provenance(), extra={"selection_function": payload})
        write_json_atomic(os.path.join(out, "selection_function.json"), payload)


# ============================================================================ gate and report

class ClassifierGate(GateStage):
    """Judge a calibrated classifier before anything downstream runs: AUROC (lower bootstrap bound),
    TPR at the target FPR, ECE and NLL after calibration, purity calibration at the deployment
    prevalence, and - given a selection function - the interval half-widths of its populated strata
    and the false-positive rate of each contaminant class."""

    name = "ClassifierGate"
    parallel = False
    inputs = [("predictions", ClassPredictionsFile), ("negative_predictions", ClassPredictionsFile),
              ("selection_function", ReportDir)]
    outputs = [("gate_report", ReportDir)]
    report_tag = "gate_report"
    config_options = CalipersStage.config_options | GATE_OPTIONS | {
        "min_auroc_lower": Param(float, 0.97, msg="Lowest allowed lower bootstrap bound of the AUROC"),
        "tpr_fpr": Param(float, 1e-3, msg="FPR at which the TPR is judged"),
        "min_tpr": Param(float, 0.5, msg="Lowest allowed TPR at tpr_fpr"),
        "max_ece": Param(float, 0.02, msg="Largest allowed ECE (15 equal-mass bins) of the calibrated test set"),
        "max_nll_increase": Param(float, 0.0, msg="Largest allowed increase of the test-set NLL by the calibration"),
        "min_purity_inside": Param(float, 0.8, msg="Least fraction of top-score bins whose predicted purity lies in "
                                                   "the observed purity's interval"),
        "purity_bins": Param(int, 10, msg="Top-score bins of the purity calibration"),
        "max_half_width": Param(float, 0.07, msg="Largest allowed Clopper-Pearson half-width of a stratum with at "
                                                 "least half_width_min_n lenses"),
        "half_width_min_n": Param(int, 200, msg="Strata with at least this many lenses are held to max_half_width"),
        "max_fpr_upper": Param(dict, {"elliptical": 3e-3, "spiral": 3e-3, "edge_on": 3e-3, "artifact": 3e-3,
                                      "ring": 1e-2, "merger": 1e-2},
                               msg="Largest allowed upper 95% bound of the FPR per contaminant class"),
        "n_boot": Param(int, 1000, msg="Bootstrap resamples of the AUROC interval"),
    }

    def process(self):
        from calipers.core.class_predictions import read_class_predictions
        from calipers.core.provenance import read_json_object
        from calipers.validate import classification_plots as cplots
        from calipers.validate.classifier_evaluation import evaluate_classifier
        from calipers.validate.gate import Check

        c = self.config
        path, neg_path = self.input_path("predictions"), self.input_path("negative_predictions")
        test = read_class_predictions(path)
        negs = read_class_predictions(neg_path)
        labels = test.labels(path)
        prevalence = test.attrs.get("calibration", {}).get("deployment_prevalence")
        if "logit_deploy" not in test.columns or "logit_deploy" not in negs.columns:
            raise FileFormatError(f"{path} / {neg_path}: need calibrated predictions (ClassifierApplyCalibration) "
                                  f"with logit_deploy")
        ev = evaluate_classifier(test.logit, labels, negs.logit, test_logit_uncalibrated=test.columns.get(
            "logit_uncalibrated"), test_logit_deploy=test.columns["logit_deploy"],
            negative_logit_deploy=negs.columns["logit_deploy"], prevalence=prevalence,
            fprs=sorted({1e-2, 1e-3, 1e-4, c["tpr_fpr"]}, reverse=True), purity_bins=c["purity_bins"],
            n_boot=c["n_boot"], seed=c["seed"])
        row = ev.tpr_row(c["tpr_fpr"])
        checks = [Check("auroc_lower", ev.auroc_lo, ">=", c["min_auroc_lower"],
                        why=f"AUROC {ev.auroc:.4f} [{ev.auroc_lo:.4f}, {ev.auroc_hi:.4f}] on {ev.n_test} test images"),
                  Check(f"tpr_at_fpr_{c['tpr_fpr']:g}", float(np.nan_to_num(row["tpr"], nan=-1.0)), ">=", c["min_tpr"],
                        why=f"TPR {row['tpr']} [{row['tpr_lo']}, {row['tpr_hi']}] at FPR {row['fpr']} on "
                            f"{row['n_neg']} negatives"),
                  Check("ece", ev.calibration["ece"], "<=", c["max_ece"], why="15 equal-mass bins, calibrated test set")]
        if ev.calibration_before:
            checks.append(Check("nll_after_minus_before", ev.calibration["nll"] - ev.calibration_before["nll"], "<=",
                                c["max_nll_increase"], why=f"test-set NLL {ev.calibration_before['nll']:.5f} before "
                                                           f"calibration -> {ev.calibration['nll']:.5f} after"))
        if ev.purity is not None:
            checks.append(Check("purity_bins_inside", float(ev.purity["fraction_inside"]), ">=",
                                c["min_purity_inside"], why=ev.purity.get("error") or
                                f"predicted purity at prevalence {prevalence:g} inside the observed 95% interval"))
        sf = read_json_object(os.path.join(self.input_path("selection_function"), "selection_function.json"),
                              FileFormatError)
        widths = [r["half_width"] for rows in sf["strata"].values() for r in rows
                  if r["n"] >= c["half_width_min_n"] and r.get("half_width") is not None]
        if widths:
            checks.append(Check("max_cp_half_width", float(max(widths)), "<=", c["max_half_width"],
                                why=f"strata with >= {c['half_width_min_n']} lenses"))
        rows = {r["class"]: r for r in sf["fpr_classes"]}
        for name, limit in c["max_fpr_upper"].items():
            r = rows.get(name)
            if r is None or not r["n"]:  # no negatives of a class the gate is asked about: a blind spot
                checks.append(Check(f"fpr_upper_{name}", 1.0, "<=", float(limit),
                                    why=f"no {name} among the negatives: its FPR is unmeasured"))
                continue
            checks.append(Check(f"fpr_upper_{name}", float(r["hi"]), "<=", float(limit),
                                why=f"{r['k']} of {r['n']} {name} above the threshold"))
        figures = {"reliability": cplots.reliability_diagram(
            [ev.calibration_before["bins"], ev.calibration["bins"]] if ev.calibration_before else [ev.calibration["bins"]],
            ["before", "after"] if ev.calibration_before else ["calibrated"])}
        if ev.purity is not None and ev.purity["bins"]:
            figures["purity"] = cplots.purity_plot(ev.purity)
        summary = {"auroc": ev.auroc, "auroc_lo": ev.auroc_lo, "auroc_hi": ev.auroc_hi,
                   "ece": ev.calibration["ece"], "nll": ev.calibration["nll"], "brier": ev.calibration["brier"]}
        self.conclude("Lens finder gate", summary, checks, figures, extra={"evaluation": _jsonable(ev.to_dict())})


def _jsonable(obj):
    from calipers.core.calibrators import json_default

    return json.loads(json.dumps(obj, default=json_default, allow_nan=True))


class LensReport(CalipersStage):
    """One HTML page on the lens finder: ROC of the calibrated ensemble against the single-CNN
    baseline (member 0, one view, uncalibrated), reliability and purity plots, the selection
    function (completeness per stratum with intervals, the 2-D heat map, the FPR per contaminant
    class) and the failure gallery: the highest-scoring false positives and the lowest-scoring
    lenses, with their class, conditions and scores."""

    name = "LensReport"
    parallel = False
    inputs = [("predictions", ClassPredictionsFile), ("negative_predictions", ClassPredictionsFile),
              ("lens_predictions", ClassPredictionsFile), ("negative_images", ImageSetFile),
              ("lens_images", ImageSetFile), ("selection_function", ReportDir), ("calibration_report", ReportDir),
              ("gate_report", ReportDir), ("model", ModelDir)]
    outputs = [("lens_report", ReportDir)]
    config_options = CalipersStage.config_options | {
        "n_gallery": Param(int, 16, msg="Cutouts in each failure gallery"),
    }

    def process(self):
        from calipers.core.class_predictions import read_class_predictions
        from calipers.core.image_sets import read_image_set
        from calipers.core.provenance import read_json_object
        from calipers.core.report import write_report
        from calipers.lens.model import ensemble_diversity
        from calipers.lens.simulate import CLASS_NAMES
        from calipers.validate import classification as cls
        from calipers.validate import classification_plots as cplots

        c = self.config
        test = read_class_predictions(self.input_path("predictions"))
        negs = read_class_predictions(self.input_path("negative_predictions"))
        lenses = read_class_predictions(self.input_path("lens_predictions"))
        labels = test.labels(self.input_path("predictions"))
        gate = read_json_object(os.path.join(self.input_path("gate_report"), "report.json"), FileFormatError)
        sf = read_json_object(os.path.join(self.input_path("selection_function"), "selection_function.json"),
                              FileFormatError)
        calib = read_json_object(os.path.join(self.input_path("calibration_report"), "report.json"), FileFormatError)
        model_meta = read_json_object(os.path.join(self.input_path("model"), "metadata.json"), FileFormatError)
        threshold = float(sf["threshold"])

        # ROC: the calibrated ensemble and the baseline, lenses of the test set against all negatives
        pos = labels == 1
        curves = []
        for name, t_scores, n_scores in [
                ("calibrated ensemble, 8-fold dihedral", test.logit, negs.logit),
                ("single CNN (member 0, one view)", test.columns["logit_single_view"], negs.columns["logit_single_view"])]:
            s = np.concatenate([t_scores[pos], n_scores])
            y = np.concatenate([np.ones(pos.sum(), int), np.zeros(len(n_scores), int)])
            fpr, tpr, _ = cls.roc_curve(s, y)
            curves.append((f"{name}: AUROC(test) {cls.auroc(t_scores, labels):.4f}", fpr, tpr))
        figures = {"roc": cplots.roc_plot(curves)}
        ev = gate.get("evaluation", {})
        if ev.get("calibration_before"):
            figures["reliability"] = cplots.reliability_diagram([ev["calibration_before"]["bins"],
                                                                 ev["calibration"]["bins"]], ["before", "after"])
        if ev.get("purity") and ev["purity"].get("bins"):
            figures["purity"] = cplots.purity_plot(ev["purity"])
        from calipers.validate.selection_function import SelectionFunction

        sfo = SelectionFunction.from_dict(sf)
        figures["completeness"] = cplots.completeness_plot(sfo.strata)
        for key, table in sfo.two_d.items():
            figures[f"heatmap_{key}"] = cplots.selection_heatmap(table)
        figures["fpr_by_class"] = cplots.fpr_by_class_plot(sfo.fpr_classes)

        # failure galleries
        k = min(c["n_gallery"], len(negs), len(lenses))
        top_fp = np.argsort(-negs.logit, kind="stable")[:k]
        low_lens = np.argsort(lenses.logit, kind="stable")[:k]

        def rows_of(path, idx):  # a few rows of a possibly huge file, one at a time
            return np.concatenate([read_image_set(path, rows=slice(int(i), int(i) + 1)).data for i in idx]), None

        neg_imgs, _ = rows_of(self.input_path("negative_images"), np.sort(top_fp))
        neg_titles = [f"{CLASS_NAMES[int(negs.meta['object_class'][i])]} p={negs.prob[i]:.3f}" for i in np.sort(top_fp)]
        stretch = {"n_cols": 4, "q": 50.0, "percentile": 99.9}  # a soft stretch: faint arcs next to bright cores
        figures["gallery_false_positives"] = cplots.cutout_gallery(neg_imgs, neg_titles, **stretch)
        lens_imgs, _ = rows_of(self.input_path("lens_images"), np.sort(low_lens))
        lens_titles = [f"tE={lenses.meta['theta_e'][i]:.2f} S/N={lenses.meta['arc_snr'][i]:.0f} "
                       f"p={lenses.prob[i]:.2g}" for i in np.sort(low_lens)]
        figures["gallery_missed_lenses"] = cplots.cutout_gallery(lens_imgs, lens_titles, **stretch)

        diversity = ensemble_diversity(test.member_logits, threshold=threshold)
        sections = [html_table(gate.get("checks", []), ["name", "value", "op", "threshold", "passed", "why"],
                                "Gate checks (ClassifierGate)")]
        for name, rows in sf["strata"].items():
            sections.append(html_table(rows, list(rows[0]) if rows else [],
                                        f"Completeness by {name} at FPR {sf.get('fpr_target')}"))
        sections.append(html_table(sf["fpr_classes"], list(sf["fpr_classes"][0].keys()) if sf["fpr_classes"] else [],
                                    "False-positive rate per contaminant class"))
        hist = model_meta.get("histories", [])
        sections.append(html_table([{"member": i, "seed": h["seed"], "epochs": h["epochs"], "best_epoch": h["best_epoch"],
                                      "best_val_auroc": h["best_val_auroc"], "seconds": h["seconds"],
                                      "specialisation": h.get("specialisation")} for i, h in enumerate(hist)],
                                    ["member", "seed", "epochs", "best_epoch", "best_val_auroc", "seconds",
                                     "specialisation"], "Ensemble members"))
        summary = {"auroc": ev.get("auroc"), "auroc_lo": ev.get("auroc_lo"), "threshold_logit": threshold,
                   "fusion": calib.get("metrics", {}).get("fusion"),
                   "temperature": calib.get("metrics", {}).get("temperature"),
                   "gate_passed": gate.get("passed"), **{f"diversity_{k}": v for k, v in diversity.items()}}
        summary = {k: v for k, v in summary.items() if v is not None}
        write_report(self.output_path("lens_report"), "Strong-lens finder: calibration and selection function",
                     summary, [], figures, provenance=self.provenance(),
                     extra_html="\n".join(f"<h2>Tables</h2>{s}" if i == 0 else s for i, s in enumerate(sections)),
                     extra={"selection_function": sf, "diversity": diversity})
