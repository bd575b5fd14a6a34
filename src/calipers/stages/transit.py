"""Exoplanet transmission-spectrum stages (issue 20): simulate Ariel-like light curves, extract
per-bin depths, train the mu/sigma network, predict, audit the physics and report.

The science lives in :mod:`calipers.transit`; the files in :mod:`calipers.core.transit_files`.
Calibration and the gate are the shared Gaussian-vector stages (:mod:`calipers.stages.gaussian`).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from calipers.core.errors import ConfigError, FileFormatError, ModelMismatchError
from calipers.core.file_types import GaussianVectorFile, ModelDir, ReportDir, TransitDepthFile, TransitLightCurveFile
from calipers.core.stage import DEVICE_OPTION, CalipersStage, Param

log = logging.getLogger(__name__)

__all__ = ["DepthExtract", "TransitAudit", "TransitPredict", "TransitReport", "TransitSimulate", "TransitTrain"]


def _sim_config(values: dict, where: str):
    from calipers.transit.simulate import TransitSimConfig

    try:
        return TransitSimConfig.from_dict(dict(values))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


class TransitSimulate(CalipersStage):
    """Simulate planets and their Ariel-like light curves (:mod:`calipers.transit.simulate`), in
    seeded blocks (planet ``i`` is the same whatever ``n_planets`` or ``chunk_size``). Writes a
    light-curve set with the true depths, the drawn parameters and the ephemeris in ``meta``, and
    the simulator's configuration as the attribute ``simulator``."""

    name = "TransitSimulate"
    parallel = False
    inputs = []
    outputs = [("light_curves", TransitLightCurveFile)]
    config_options = CalipersStage.config_options | {
        "n_planets": Param(int, 1000, msg="Planets to simulate"),
        "start": Param(int, 0, msg="Index of the first planet of the seeded sequence"),
        "chunk_size": Param(int, 512, msg="Planets simulated and written at a time"),
        "simulator": Param(dict, {}, msg="TransitSimConfig options (n_bins, n_times, s0_range, ...); {} = defaults"),
    }

    def validate(self):
        c = self.config
        if c["n_planets"] < 1 or c["start"] < 0 or c["chunk_size"] < 1:
            raise ConfigError(f"stage {self.instance_name}: need n_planets >= 1, start >= 0, chunk_size >= 1")
        _sim_config(c["simulator"], f"stage {self.instance_name}: option 'simulator'")

    def process(self):
        from tqdm.auto import tqdm

        from calipers.core.array_sets import ArraySetWriter
        from calipers.core.transit_files import LIGHT_CURVES
        from calipers.transit.simulate import airs_ch0_bins, simulate_transits

        c = self.config
        cfg = _sim_config(c["simulator"], f"stage {self.instance_name}")
        k, t = cfg.n_bins, cfg.n_times
        wavelength, edges = airs_ch0_bins(cfg)
        arrays = {"flux": ((k, t), np.float32), "white": ((t,), np.float32), "time": ((t,), np.float64),
                  "ld": ((k, 2), np.float64), "ld_white": ((2,), np.float64), "depth": ((k,), np.float64)}
        attrs = {"simulator": cfg.to_dict(), "simulation": {"seed": c["seed"], "start": c["start"],
                                                            "n_planets": c["n_planets"]}}
        with ArraySetWriter(self.output_path("light_curves"), LIGHT_CURVES, arrays,
                            fixed={"wavelength": wavelength, "bin_edges": edges}, attrs=attrs,
                            provenance=self.provenance()) as out:
            for s in tqdm(range(0, c["n_planets"], c["chunk_size"]), desc=f"{self.instance_name} chunks"):
                n = min(c["chunk_size"], c["n_planets"] - s)
                sim = simulate_transits(cfg, n, c["seed"], start=c["start"] + s)
                meta = {"planet_id": np.arange(c["start"] + s, c["start"] + s + n, dtype=np.int64),
                        "white_depth": sim.white_depth} | {key: np.asarray(v, dtype=np.float64)
                                                           for key, v in sim.planets.items() if np.ndim(v) == 1}
                out.append({"flux": sim.flux, "white": sim.white, "time": sim.time, "ld": sim.ld,
                            "ld_white": sim.ld_white, "depth": sim.depth}, meta)


class DepthExtract(CalipersStage):
    """Least-squares transit depth per bin (:func:`calipers.transit.extract.extract_depths`): a
    quadratic baseline, the bin's transit shape and the white-light residual as a jitter regressor.
    A NaN or inf anywhere in a planet's light curves is an error naming the file, the planet row, the
    bin and the time index, and nothing is written."""

    name = "DepthExtract"
    parallel = False
    inputs = [("light_curves", TransitLightCurveFile)]
    outputs = [("depths", TransitDepthFile)]
    config_options = CalipersStage.config_options | {
        "chunk_size": Param(int, 256, msg="Planets read and fitted at a time"),
    }

    def validate(self):
        if self.config["chunk_size"] < 1:
            raise ConfigError(f"stage {self.instance_name}: chunk_size must be >= 1")

    def process(self):
        from tqdm.auto import tqdm

        from calipers.core.array_sets import ArraySetWriter, array_set_info, read_array_set
        from calipers.core.transit_files import DEPTHS, EPHEMERIS, LIGHT_CURVES, check_finite
        from calipers.transit.extract import extract_depths

        c = self.config
        path = self.input_path("light_curves")
        info = array_set_info(path, LIGHT_CURVES)
        missing = [k for k in ("flux", "white", "time", "ld", "ld_white") if k not in info["arrays"]]
        missing += [k for k in ("planet_id", *EPHEMERIS) if k not in info["meta_columns"]]
        if missing:
            raise FileFormatError(f"{path}: a light-curve set needs {missing} (it has arrays {sorted(info['arrays'])}, "
                                  f"meta {info['meta_columns']})")
        k = info["arrays"]["flux"][0]
        with_truth = "depth" in info["arrays"]
        arrays = {name: ((k,), np.float64) for name in ("d_hat", "sigma_hat", "rms", "beta")}
        if with_truth:
            arrays["depth"] = ((k,), np.float64)
        with ArraySetWriter(self.output_path("depths"), DEPTHS, arrays, fixed=info["fixed"],
                            attrs={"light_curves": path, "simulator": info["attrs"].get("simulator")},
                            provenance=self.provenance()) as out:
            for s in tqdm(range(0, info["n"], c["chunk_size"]), desc=f"{self.instance_name} chunks"):
                rows = slice(s, min(s + c["chunk_size"], info["n"]))
                lc, meta = read_array_set(path, None, rows, meta=["planet_id", *EPHEMERIS], kind=LIGHT_CURVES)
                for name in ("flux", "white", "time"):
                    check_finite(path, name, lc[name], s, ("planet row", "bin", "time index") if lc[name].ndim == 3
                                 else ("planet row", "time index"))
                fit = extract_depths(lc["time"], lc["flux"], lc["white"], lc["ld"], lc["ld_white"], meta["period"],
                                     meta["a_rs"], meta["inclination"])
                rows_out = {name: fit[name] for name in ("d_hat", "sigma_hat", "rms", "beta")}
                if with_truth:
                    rows_out["depth"] = lc["depth"]
                out.append(rows_out, {"planet_id": meta["planet_id"], "white_depth": fit["white_depth"],
                                      "white_sigma": fit["white_sigma"], "white_rms": fit["white_rms"]})


def read_depth_features(path: str, rows: slice | None = None, need_truth: bool = False):
    """``(x_bins, x_global, base, truth or None, meta, info)`` of a depth file, checked: finite
    values, ``sigma_hat > 0`` (errors name the file, the planet row and the bin)."""
    from calipers.core.array_sets import array_set_info, read_array_set
    from calipers.core.transit_files import DEPTHS, check_finite
    from calipers.transit.model import transit_features

    info = array_set_info(path, DEPTHS)
    if need_truth and "depth" not in info["arrays"]:
        raise FileFormatError(f"{path}: has no true 'depth' array; training and calibration need it")
    names = ["d_hat", "sigma_hat", "rms", "beta"] + (["depth"] if "depth" in info["arrays"] else [])
    arrays, meta = read_array_set(path, names, rows, meta=None, kind=DEPTHS)
    first = 0 if rows is None or rows.start is None else rows.start
    for name in names:
        check_finite(path, name, arrays[name], first, ("planet row", "bin"), positive=name == "sigma_hat")
    for name in ("white_depth", "white_sigma"):
        check_finite(path, name, meta[name], first, ("planet row",), positive=name == "white_sigma")
    fit = {k: arrays[k] for k in ("d_hat", "sigma_hat", "rms", "beta")} | {k: meta[k] for k in
                                                                         ("white_depth", "white_sigma")}
    x_bins, x_global, base = transit_features(fit)
    return x_bins, x_global, base, arrays.get("depth"), meta, info


class TransitTrain(CalipersStage):
    """Train the mu/sigma network (:mod:`calipers.transit.model`) on a depth file with the true
    depths, stopping early on the Gaussian NLL of a held-out depth file (other planets);
    ``n_members`` such networks (seeds ``seed * 1000 + k``) make a deep ensemble. Writes a model
    directory (JSON + state dicts, checksummed; loads with ``weights_only``) with a model card: each
    member's history (training loss, held-out NLL and physics terms per epoch), the configuration."""

    name = "TransitTrain"
    parallel = False
    inputs = [("depths", TransitDepthFile), ("held_out_depths", TransitDepthFile)]
    outputs = [("model", ModelDir)]
    config_options = CalipersStage.config_options | DEVICE_OPTION | {
        "channels": Param(int, 32, msg="Channels of the convolutions along wavelength"),
        "kernel_size": Param(int, 5, msg="Convolution kernel (odd)"),
        "dilations": Param(list, [1, 2, 4, 8], msg="Dilation of each residual block"),
        "hidden": Param(int, 32, msg="Units of the per-planet branch"),
        "max_epochs": Param(int, 60, msg="Epoch cap"),
        "patience": Param(int, 8, msg="Epochs without a better held-out NLL before stopping"),
        "batch_size": Param(int, 64, msg="Planets per step"),
        "learning_rate": Param(float, 2e-3, msg="AdamW learning rate (cosine schedule)"),
        "weight_decay": Param(float, 1e-4, msg="AdamW weight decay"),
        "loss_weights": Param(dict, {"smoothness": 0.1, "positivity": 1.0, "band_coherence": 0.1, "seam": 1.0},
                              msg="Weight of each physics loss (smoothness, positivity, band_coherence, seam)"),
        "seams": Param(list, [], msg="Bin indices where the detector layout has a seam (none in AIRS-CH0)"),
        "n_members": Param(int, 1, msg="Deep-ensemble members (seeds seed * 1000 + k); the prediction is the moments "
                                       "of their Gaussians' mixture"),
    }

    def _net_and_train(self, n_bins: int):
        from calipers.transit.model import TransitNetConfig, TransitTrainConfig

        c = self.config
        try:
            net = TransitNetConfig(n_bins=n_bins, channels=c["channels"], kernel_size=c["kernel_size"],
                                   dilations=tuple(c["dilations"]), hidden=c["hidden"])
            train = TransitTrainConfig(max_epochs=c["max_epochs"], patience=c["patience"],
                                       batch_size=c["batch_size"], learning_rate=c["learning_rate"],
                                       weight_decay=c["weight_decay"], loss_weights=dict(c["loss_weights"]))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"stage {self.instance_name}: {err}") from err
        return net, train

    def validate(self):
        if self.config["n_members"] < 1:
            raise ConfigError(f"stage {self.instance_name}: n_members must be >= 1, got {self.config['n_members']}")
        self._net_and_train(283)

    def process(self):
        import time

        from calipers.core.models import write_model_dir
        from calipers.transit.model import train_transit_model

        c = self.config
        train_path, held_path = self.input_path("depths"), self.input_path("held_out_depths")
        xb, xg, base, truth, _, info = read_depth_features(train_path, need_truth=True)
        hb, hg, hbase, htruth, _, hinfo = read_depth_features(held_path, need_truth=True)
        if hb.shape[2] != xb.shape[2]:
            raise ModelMismatchError(f"{held_path} has {hb.shape[2]} bins but {train_path} has {xb.shape[2]}")
        wavelength = info["fixed"].get("wavelength")
        if wavelength is None:
            raise FileFormatError(f"{train_path}: no fixed 'wavelength' array (the bins' centres)")
        net, train = self._net_and_train(xb.shape[2])
        t0 = time.perf_counter()
        states, histories = [], []
        for k in range(c["n_members"]):
            seed = c["seed"] * 1000 + k if c["n_members"] > 1 else c["seed"]
            state, hist = train_transit_model((xb, xg, base, truth), (hb, hg, hbase, htruth), net, train, wavelength,
                                              seed=seed, seams=[int(s) for s in c["seams"]],
                                              device=self.torch_device(), progress=True)
            states.append(state)
            histories.append(hist | {"seed": seed})
        card = {"kind": "transit_mu_sigma", "training_set": train_path, "held_out_set": held_path,
                "n_training_planets": int(xb.shape[0]), "n_held_out_planets": int(hb.shape[0]),
                "n_members": len(states), "training_seconds": time.perf_counter() - t0, "members": histories,
                "device": self.torch_device(), "config": self.config_dict(), "provenance": self.provenance()}
        write_model_dir(self.output_path("model"), {"net": net.to_dict(), "train": train.to_dict(),
                                                    "seams": [int(s) for s in c["seams"]],
                                                    "wavelength": [float(w) for w in wavelength],
                                                    "model_card": card}, {"members": states})


def read_transit_model(directory: str):
    """``(member states, net config, metadata)`` of a :class:`TransitTrain` model directory."""
    from calipers.core.models import read_model_dir
    from calipers.transit.model import TransitNet, TransitNetConfig

    meta, states = read_model_dir(directory, "transit model")
    try:
        net = TransitNetConfig.from_dict(meta["net"])
        members = list(states["members"])
        if not members:
            raise ValueError("no members")
        for state in members:
            TransitNet(net).load_state_dict(state)  # strict: every key and shape must match the config
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise FileFormatError(f"{directory}: not a transit model ({err})") from err
    return members, net, meta


class TransitPredict(CalipersStage):
    """Apply a :class:`TransitTrain` model to a depth file: a Gaussian-vector file (``mu``,
    ``sigma`` per planet and bin, the members' mixture moments; meta ``id`` = planet_id, the
    wavelengths). A depth file with
    another number of bins, or a non-finite or non-positive ``sigma_hat``, is refused with the file,
    the planet row and the bin named, before anything is written."""

    name = "TransitPredict"
    parallel = False
    inputs = [("model", ModelDir), ("depths", TransitDepthFile)]
    outputs = [("predictions", GaussianVectorFile)]
    config_options = CalipersStage.config_options | DEVICE_OPTION | {
        "chunk_size": Param(int, 4096, msg="Planets predicted at a time"),
    }

    def process(self):
        from calipers.core.array_sets import ArraySetWriter, array_set_info
        from calipers.core.transit_files import DEPTHS, GAUSSIAN_VECTORS
        from calipers.transit.model import predict_ensemble

        c = self.config
        states, net, meta = read_transit_model(self.input_path("model"))
        path = self.input_path("depths")
        info = array_set_info(path, DEPTHS)
        k = info["arrays"]["d_hat"][0]
        if k != net.n_bins:
            raise ModelMismatchError(f"{path} has {k} bins per planet; the model {self.input_path('model')} was "
                                     f"trained on {net.n_bins}. Apply a model trained on this bin layout")
        n = info["n"]
        # read and check everything first: a bad row anywhere writes nothing
        chunks = [read_depth_features(path, slice(s, min(s + c["chunk_size"], n)))
                  for s in range(0, n, c["chunk_size"])]
        with ArraySetWriter(self.output_path("predictions"), GAUSSIAN_VECTORS,
                            {"mu": ((k,), np.float64), "sigma": ((k,), np.float64)}, fixed=info["fixed"],
                            attrs={"outputs": "transit depth per wavelength bin", "depths": path},
                            provenance=self.provenance()) as out:
            for xb, xg, base, _, m, _ in chunks:
                mu, sigma = predict_ensemble(states, net, xb, xg, base, device=self.torch_device())
                out.append({"mu": mu, "sigma": sigma}, {"id": m["planet_id"]})


class TransitAudit(CalipersStage):
    """Audit predicted spectra against the physical constraints (:mod:`calipers.transit.audit`):
    per planet, the smoothness score and its worst bins, negative depths, each band's incoherence,
    the seams' jumps and each physics term's share of the planet's loss. Writes ``audit.json``
    (per planet) and a report with the summary."""

    name = "TransitAudit"
    parallel = False
    inputs = [("predictions", GaussianVectorFile)]
    outputs = [("audit", ReportDir)]
    config_options = CalipersStage.config_options | {
        "seams": Param(list, [], msg="Bin indices of seams (as TransitTrain's)"),
        "smoothness_threshold": Param(float, 2.0, msg="A planet violates smoothness when its mean squared second "
                                                      "difference over sigma exceeds this"),
        "loss_weights": Param(dict, {"smoothness": 0.1, "positivity": 1.0, "band_coherence": 0.1, "seam": 1.0},
                              msg="Weights for each term's share of the loss (as TransitTrain's)"),
    }

    def process(self):
        from calipers.core.atomic import remove_path
        from calipers.core.report import write_report
        from calipers.core.transit_files import read_gaussian_vectors
        from calipers.transit.audit import audit_spectra, audit_summary

        c = self.config
        path = self.input_path("predictions")
        mu, sigma, meta, info = read_gaussian_vectors(path)
        wavelength = info["fixed"].get("wavelength")
        if wavelength is None:
            raise FileFormatError(f"{path}: no fixed 'wavelength' array; the audit needs the bins' wavelengths")
        records = audit_spectra(mu, sigma, wavelength, seams=[int(s) for s in c["seams"]],
                                smoothness_threshold=c["smoothness_threshold"], loss_weights=dict(c["loss_weights"]))
        for rec, pid in zip(records, meta["id"]):
            rec["planet_id"] = int(pid)
        summary = audit_summary(records)
        out = self.output_path("audit")
        try:
            write_report(out, f"Physics audit of {os.path.basename(path)}", summary, [], {},
                         provenance=self.provenance(), extra={"n_planets": len(records)})
            with open(os.path.join(out, "audit.json"), "w") as fh:
                json.dump(records, fh, indent=1)
        except BaseException:
            remove_path(out)
            raise


class TransitReport(CalipersStage):
    """One HTML page for the transit pipeline: example spectra with mu +- sigma over the truth,
    coverage per bin before and after calibration, z-score histograms, the Ariel score of each
    stage, the auditor's summary; and the challenge's submission layout (``planet_id, mu_0 ..
    mu_{K-1}, sigma_0 .. sigma_{K-1}``) as ``submission.csv``."""

    name = "TransitReport"
    parallel = False
    inputs = [("raw_predictions", GaussianVectorFile), ("predictions", GaussianVectorFile), ("truth", TransitDepthFile),
              ("training_depths", TransitDepthFile), ("audit", ReportDir), ("gate", ReportDir)]
    outputs = [("transit_report", ReportDir)]
    config_options = CalipersStage.config_options | {
        "n_examples": Param(int, 4, msg="Example spectra shown"),
    }

    def process(self):
        from calipers.core.array_sets import read_array_set
        from calipers.core.report import html_table, write_report
        from calipers.core.transit_files import DEPTHS, read_gaussian_vectors
        from calipers.transit.score import NaivePredictor, ariel_score
        from calipers.validate import gaussian_plots
        from calipers.validate.gaussian import coverage_per_output, z_score_summary

        c = self.config
        raw_mu, raw_sigma, raw_meta, _ = read_gaussian_vectors(self.input_path("raw_predictions"))
        mu, sigma, meta, info = read_gaussian_vectors(self.input_path("predictions"))
        truth_path = self.input_path("truth")
        arrays, tmeta = read_array_set(truth_path, ["depth", "d_hat", "sigma_hat"], meta=["planet_id"], kind=DEPTHS)
        if not (np.array_equal(tmeta["planet_id"], meta["id"]) and np.array_equal(raw_meta["id"], meta["id"])):
            raise FileFormatError(f"{truth_path}: its planets are not those of the predictions, in the same order")
        y = arrays["depth"]
        train, _ = read_array_set(self.input_path("training_depths"), ["depth"], kind=DEPTHS)
        naive = NaivePredictor.fit(train["depth"])
        wavelength = info["fixed"]["wavelength"]
        rows = {"least squares (formal sigma)": (arrays["d_hat"], arrays["sigma_hat"]),
                "network": (raw_mu, raw_sigma), "network, calibrated": (mu, sigma)}
        table = [{"predictor": name, "ariel_score": ariel_score(y, m, s, naive),
                  "rmse_ppm": float(np.sqrt(np.mean((m - y) ** 2)) * 1e6)} | z_score_summary(y, m, s)
                 for name, (m, s) in rows.items()]
        with open(os.path.join(self.input_path("gate"), "report.json")) as fh:
            gate = json.load(fh)
        with open(os.path.join(self.input_path("audit"), "report.json")) as fh:
            audit = json.load(fh)
        figures = {
            "example_spectra": gaussian_plots.example_spectra(wavelength, y, mu, sigma, c["n_examples"],
                                                              self.rng(1)),
            "coverage_per_bin": gaussian_plots.coverage_per_output_figure(
                wavelength, {"network": (coverage_per_output(y, raw_mu, raw_sigma, 1), coverage_per_output(
                    y, raw_mu, raw_sigma, 2)), "calibrated": (coverage_per_output(y, mu, sigma, 1),
                                                             coverage_per_output(y, mu, sigma, 2))},
                xlabel="wavelength (um)"),
            "z_scores": gaussian_plots.z_histograms({"network": (y - raw_mu) / raw_sigma,
                                                     "calibrated": (y - mu) / sigma}),
        }
        html = html_table(table, ["predictor", "ariel_score", "rmse_ppm", "z_std", "coverage_1sigma",
                                  "coverage_1sigma_min", "coverage_1sigma_max", "coverage_2sigma_min",
                                  "coverage_2sigma_max"], "Score and calibration of each predictor")
        out = self.output_path("transit_report")
        write_report(out, "Transmission spectra: mu and sigma per bin", {
            "gate_passed": gate.get("passed"), "audit": audit.get("metrics", {})}, [], figures,
            provenance=self.provenance(), extra_html=html, extra={"predictors": table})
        header = ["planet_id"] + [f"mu_{i}" for i in range(mu.shape[1])] + [f"sigma_{i}" for i in range(mu.shape[1])]
        data = np.column_stack([meta["id"], mu, sigma])
        np.savetxt(os.path.join(out, "submission.csv"), data, delimiter=",", header=",".join(header), comments="",
                   fmt=["%d"] + ["%.8e"] * (2 * mu.shape[1]))
