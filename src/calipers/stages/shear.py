"""Weak-lensing shear stages (issue 21): simulate stamps, train the equivariant estimator, estimate
per-galaxy ellipticities with their metacal responses, calibrate the shear, measure m and c, judge.

The science lives in :mod:`calipers.shear`; the files in :mod:`calipers.core.shear_files`.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from calipers.core.errors import ConfigError, FileFormatError, ModelMismatchError
from calipers.core.file_types import ArraySetFile, ModelDir, ReportDir
from calipers.core.options import GATE_OPTIONS
from calipers.core.gate_stage import GateStage
from calipers.core.stage import DEVICE_OPTION, CalipersStage, Param

log = logging.getLogger(__name__)

__all__ = ["ShearBias", "ShearCalibrate", "ShearEstimate", "ShearGate", "ShearReport", "ShearSimulate", "ShearTrain"]

SHEARS_DEFAULT = [[0.02, 0.02], [-0.02, -0.02], [0.02, -0.02], [-0.02, 0.02]]


def _sim_config(values: dict, where: str):
    from calipers.shear.simulate import ShearSimConfig

    try:
        return ShearSimConfig.from_dict(dict(values))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


class ShearSimulate(CalipersStage):
    """Simulate galaxy stamps with GalSim (:mod:`calipers.shear.simulate`) in seeded blocks: a
    training stream (shears uniform in ``[-g_max, g_max]^2``) or, with ``ring_shears``, a ring test
    (units of 4 stamps: the galaxy and its 90-degree-rotated twin, each under +g and -g with one
    noise field)."""

    name = "ShearSimulate"
    parallel = False
    inputs = []
    outputs = [("stamps", ArraySetFile)]
    config_options = CalipersStage.config_options | {
        "n_galaxies": Param(int, 1000, msg="Galaxies (training stream) or ring units (ring test) to simulate"),
        "start": Param(int, 0, msg="Index of the first galaxy or unit of the seeded sequence"),
        "chunk_size": Param(int, 1024, msg="Galaxies or units simulated and written at a time"),
        "ring_shears": Param(list, [], msg="[] for a training stream; else the constant shears [[g1, g2], ...] "
                                           "of a ring test, cycled over the units"),
        "noise_pairs": Param(bool, True, msg="Ring test: draw each stamp under +g and -g with one noise field"),
        "simulator": Param(dict, {}, msg="ShearSimConfig options (stamp_size, psf_fwhm, snr_range, ...)"),
    }

    def validate(self):
        c = self.config
        if c["n_galaxies"] < 1 or c["start"] < 0 or c["chunk_size"] < 1:
            raise ConfigError(f"stage {self.instance_name}: need n_galaxies >= 1, start >= 0, chunk_size >= 1")
        _sim_config(c["simulator"], f"stage {self.instance_name}: option 'simulator'")

    def process(self):
        from tqdm.auto import tqdm

        from calipers.core.array_sets import ArraySetWriter
        from calipers.core.shear_files import STAMPS
        from calipers.shear.simulate import psf_stack, simulate_ring, simulate_shear

        c = self.config
        cfg = _sim_config(c["simulator"], f"stage {self.instance_name}")
        n = cfg.stamp_size
        ring = bool(c["ring_shears"])
        attrs = {"simulator": cfg.to_dict(), "pixel_scale": cfg.pixel_scale,
                 "simulation": {"seed": c["seed"], "start": c["start"], "n": c["n_galaxies"],
                                "ring_shears": c["ring_shears"], "noise_pairs": c["noise_pairs"] if ring else None}}
        with ArraySetWriter(self.output_path("stamps"), STAMPS, {"image": ((n, n), np.float32)},
                            fixed={"psf_images": psf_stack(cfg)}, attrs=attrs, provenance=self.provenance()) as out:
            for s in tqdm(range(0, c["n_galaxies"], c["chunk_size"]), desc=f"{self.instance_name} chunks"):
                m = min(c["chunk_size"], c["n_galaxies"] - s)
                if ring:
                    try:
                        sim = simulate_ring(cfg, m, c["ring_shears"], c["seed"], noise_pairs=c["noise_pairs"],
                                            start=c["start"] + s)
                    except ValueError as err:
                        raise ConfigError(f"stage {self.instance_name}: {err}") from err
                    keys = sim.params["pair_id"] * 2 + sim.params["ring"]
                else:
                    sim = simulate_shear(cfg, m, c["seed"], start=c["start"] + s)
                    keys = sim.params["galaxy_id"]
                meta = {k: np.asarray(v) for k, v in sim.params.items()} | {
                    "psf_index": sim.psf_index, "noise_key": np.asarray(keys, dtype=np.int64)}
                out.append({"image": sim.images}, meta)


def _operators(psf_images: np.ndarray, pixel_scale: float, step: float) -> dict:
    from calipers.shear.metacal import MetacalOperators

    return {i: MetacalOperators.build(p, pixel_scale, step, progress=True) for i, p in enumerate(psf_images)}


def _check_psfs(path: str, info: dict, model_meta: dict, model_dir: str) -> None:
    psf = np.asarray(info["fixed"]["psf_images"])
    known = np.asarray(model_meta["psf_images"])
    if psf.shape[1:] != known.shape[1:]:
        raise ModelMismatchError(f"{path}: stamps are {psf.shape[1]}x{psf.shape[2]}; the model {model_dir} was "
                                 f"trained on {known.shape[1]}x{known.shape[2]}")
    if abs(float(info["attrs"]["pixel_scale"]) - float(model_meta["pixel_scale"])) > 1e-12:
        raise ModelMismatchError(f"{path}: pixel scale {info['attrs']['pixel_scale']} but the model {model_dir} "
                                 f"was trained at {model_meta['pixel_scale']}")


class ShearTrain(CalipersStage):
    """Train the shear estimator (:mod:`calipers.shear.model`) on the metacal ``noshear`` images of a
    training stamp set (the estimator is defined on them), stopping early on a held-out set. After
    training, the equivariance error is measured on the metacal ``noshear`` images of noise-free
    GalSim renders rotated by random angles (the training set's simulator). Writes a model directory (JSON + state dict, checksummed,
    ``weights_only`` loading) with the PSF images and the model card."""

    name = "ShearTrain"
    parallel = False
    inputs = [("stamps", ArraySetFile), ("held_out_stamps", ArraySetFile)]
    outputs = [("model", ModelDir)]
    config_options = CalipersStage.config_options | DEVICE_OPTION | {
        "kind": Param(str, "equivariant", msg="equivariant (e2cnn, C_N) or plain (CNN with rotation augmentation)"),
        "rotation_order": Param(int, 8, msg="N of the rotation group C_N (a multiple of 4)"),
        "channels": Param(list, [4, 8, 8], msg="Fields (x N channels) per stage"),
        "kernel_size": Param(int, 5, msg="Convolution kernel (odd)"),
        "plain_channels": Param(list, [], msg="The plain CNN's widths per stage (empty: channels x N; "
                                "[6, 12, 12] matches the equivariant network's parameter count)"),
        "max_epochs": Param(int, 8, msg="Epochs (one-cycle schedule)"),
        "patience": Param(int, 3, msg="Epochs without a better held-out NLL before stopping"),
        "batch_size": Param(int, 128, msg="Stamps per step"),
        "learning_rate": Param(float, 2e-3, msg="Peak AdamW learning rate"),
        "weight_decay": Param(float, 1e-4, msg="AdamW weight decay"),
        "norm_penalty": Param(float, 10.0, msg="Weight of the penalty on |eps_raw| > 1"),
        "metacal_step": Param(float, 0.01, msg="Metacal shear step"),
        "n_rotation_check": Param(int, 100, msg="Galaxies in the arbitrary-rotation equivariance check (0: none)"),
    }

    def _net_and_train(self, stamp_size: int):
        from calipers.shear.model import ShearNetConfig, ShearTrainConfig

        c = self.config
        try:
            net = ShearNetConfig(kind=c["kind"], stamp_size=stamp_size, rotation_order=c["rotation_order"],
                                 channels=tuple(c["channels"]), kernel_size=c["kernel_size"],
                                 plain_channels=tuple(c["plain_channels"]))
            train = ShearTrainConfig(max_epochs=c["max_epochs"], patience=c["patience"], batch_size=c["batch_size"],
                                     learning_rate=c["learning_rate"], weight_decay=c["weight_decay"],
                                     norm_penalty=c["norm_penalty"])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"stage {self.instance_name}: {err}") from err
        return net, train

    def validate(self):
        self._net_and_train(33)

    def _training_arrays(self, tag: str, ops: dict):
        from calipers.core.shear_files import read_stamps
        from calipers.shear.estimate import metacal_inputs

        path = self.input_path(tag)
        images, meta, info = read_stamps(path)
        if "eps1" not in meta or "eps2" not in meta:
            raise FileFormatError(f"{path}: training needs the true ellipticities (meta 'eps1', 'eps2')")
        x = metacal_inputs(images, meta["noise_sigma"], meta["noise_key"], ops, meta["psf_index"], "noshear",
                           seed=self.config["seed"])
        return x, np.stack([meta["eps1"], meta["eps2"]], 1), info

    def process(self):
        import time

        from calipers.core.models import write_model_dir
        from calipers.core.shear_files import stamps_info
        from calipers.shear.model import equivariance_check, load_network, train_shear_model

        c = self.config
        info = stamps_info(self.input_path("stamps"))
        held = stamps_info(self.input_path("held_out_stamps"))
        psf = np.asarray(info["fixed"]["psf_images"], dtype=np.float64)
        if not np.allclose(np.asarray(held["fixed"]["psf_images"]), psf):
            raise FileFormatError(f"{self.input_path('held_out_stamps')}: its PSF images differ from the training set's")
        scale = float(info["attrs"]["pixel_scale"])
        net, train = self._net_and_train(psf.shape[1])
        t0 = time.perf_counter()
        ops = _operators(psf, scale, c["metacal_step"])
        x, y, _ = self._training_arrays("stamps", ops)
        xv, yv, _ = self._training_arrays("held_out_stamps", ops)
        state, hist = train_shear_model(x, y, xv, yv, net, train, seed=c["seed"], device=self.torch_device(),
                                        progress=True)
        equivariance = None
        if c["n_rotation_check"] > 0 and info["attrs"].get("simulator"):
            from calipers.shear.simulate import ShearSimConfig

            equivariance = equivariance_check(load_network(state, net), ShearSimConfig.from_dict(
                info["attrs"]["simulator"]), c["n_rotation_check"], np.random.default_rng([int(c["seed"]), 77]),
                operators=ops)
        card = {"kind": f"shear_{c['kind']}", "training_set": self.input_path("stamps"),
                "held_out_set": self.input_path("held_out_stamps"), "n_training_stamps": int(len(x)),
                "n_held_out_stamps": int(len(xv)), "training_seconds": time.perf_counter() - t0, "history": hist,
                "equivariance": equivariance, "device": self.torch_device(), "config": self.config_dict(),
                "provenance": self.provenance()}
        write_model_dir(self.output_path("model"), {"net": net.to_dict(), "train": train.to_dict(),
                                                    "psf_images": psf.tolist(), "pixel_scale": scale,
                                                    "metacal_step": c["metacal_step"], "model_card": card},
                        {"members": [state]})


def read_shear_model(directory: str):
    from calipers.core.models import read_model_dir
    from calipers.shear.model import ShearNetConfig, load_network

    meta, states = read_model_dir(directory, "shear model")
    try:
        net = ShearNetConfig.from_dict(meta["net"])
        model = load_network(states["members"][0], net)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise FileFormatError(f"{directory}: not a shear model ({err})") from err
    return model, net, meta


class ShearEstimate(CalipersStage):
    """Apply a :class:`ShearTrain` model to stamps: per galaxy the ellipticity's Gaussian (``mu``,
    ``sigma``, ``covariance``) on the metacal ``noshear`` image and the 2x2 metacal ``response``.
    Stamps of another size, NaN pixels or a missing PSF are refused, naming the file (and row and
    pixel), before anything is written."""

    name = "ShearEstimate"
    parallel = False
    inputs = [("model", ModelDir), ("stamps", ArraySetFile)]
    outputs = [("estimates", ArraySetFile)]
    config_options = CalipersStage.config_options | DEVICE_OPTION | {
        "chunk_size": Param(int, 8192, msg="Stamps estimated at a time"),
    }

    def process(self):
        from calipers.core.array_sets import ArraySetWriter
        from calipers.core.shear_files import ESTIMATES, read_stamps, stamps_info
        from calipers.shear.estimate import estimate_with_response

        c = self.config
        model, net, meta = read_shear_model(self.input_path("model"))
        path = self.input_path("stamps")
        info = stamps_info(path)
        _check_psfs(path, info, meta, self.input_path("model"))
        n = info["n"]
        # read and check every chunk first: a bad row anywhere writes nothing
        chunks = [read_stamps(path, slice(s, min(s + c["chunk_size"], n))) for s in range(0, n, c["chunk_size"])]
        ops = _operators(np.asarray(info["fixed"]["psf_images"], dtype=np.float64),
                         float(info["attrs"]["pixel_scale"]), float(meta["metacal_step"]))
        arrays = {"mu": ((2,), np.float64), "sigma": ((2,), np.float64), "covariance": ((2, 2), np.float64),
                  "response": ((2, 2), np.float64)}
        with ArraySetWriter(self.output_path("estimates"), ESTIMATES, arrays, fixed=info["fixed"],
                            attrs={"outputs": "sheared ellipticity (eps1, eps2) of each galaxy", "stamps": path,
                                   "pixel_scale": info["attrs"]["pixel_scale"],
                                   "simulation": info["attrs"].get("simulation")},
                            provenance=self.provenance()) as out:
            for images, m, _ in chunks:
                est = estimate_with_response(model, images, m["noise_sigma"], m["noise_key"], ops, m["psf_index"],
                                             seed=c["seed"], device=self.torch_device())
                cov = est["cov"]
                out.append({"mu": est["eps"], "sigma": np.sqrt(np.stack([cov[:, 0, 0], cov[:, 1, 1]], 1)),
                            "covariance": cov, "response": est["response"]},
                           {"id": np.asarray(m["galaxy_id"], dtype=np.int64)} | dict(m))


def _read_estimates(path: str):
    from calipers.core.array_sets import array_set_info, read_array_set
    from calipers.core.shear_files import ESTIMATES

    info = array_set_info(path, ESTIMATES)
    arrays, meta = read_array_set(path, None, None, meta=None, kind=ESTIMATES)
    for name in ("mu", "covariance", "response"):
        bad = ~np.isfinite(arrays[name].reshape(len(arrays[name]), -1)).all(1)
        if bad.any():
            raise FileFormatError(f"{path}: non-finite values in '{name}', row {int(np.flatnonzero(bad)[0])}")
    return arrays, meta, info


class ShearCalibrate(CalipersStage):
    """Metacal response calibration: the mean 2x2 response of each (S/N, size) bin of the estimates,
    and each galaxy's calibrated ``shear = <R>_bin^-1 eps``. Writes the calibrated estimates and the
    calibrator (JSON: edges and mean responses)."""

    name = "ShearCalibrate"
    parallel = False
    inputs = [("estimates", ArraySetFile)]
    outputs = [("calibrated", ArraySetFile), ("calibrator", ReportDir)]
    config_options = CalipersStage.config_options | {
        "snr_column": Param(str, "snr", msg="Meta column binned in S/N"),
        "size_column": Param(str, "hlr", msg="Meta column binned in size"),
        "snr_edges": Param(list, [10, 15, 30, 100], msg="S/N bin edges"),
        "size_edges": Param(list, [0.35, 0.8], msg="Size bin edges (arcsec)"),
    }

    def process(self):
        import json

        from calipers.core.array_sets import ArraySetWriter
        from calipers.core.atomic import remove_path
        from calipers.core.shear_files import ESTIMATES
        from calipers.shear.bias import bin_index, mean_response, response_calibrate

        c = self.config
        path = self.input_path("estimates")
        arrays, meta, info = _read_estimates(path)
        for col in (c["snr_column"], c["size_column"]):
            if col not in meta:
                raise FileFormatError(f"{path}: meta column '{col}' is missing (have {sorted(meta)})")
        sb, zb = bin_index(meta[c["snr_column"]], c["snr_edges"]), bin_index(meta[c["size_column"]], c["size_edges"])
        n_size = len(c["size_edges"]) - 1
        bins = sb * n_size + zb
        mean_r = mean_response(arrays["response"], bins)
        shear = response_calibrate(arrays["mu"], arrays["response"], bins, mean_r)
        with ArraySetWriter(self.output_path("calibrated"), ESTIMATES,
                            {k: (v.shape[1:], v.dtype) for k, v in arrays.items()} | {"shear": ((2,), np.float64)},
                            fixed=info["fixed"], attrs={k: v for k, v in info["attrs"].items()
                                                        if k not in ("kind", "provenance")} | {"calibrated_from": path},
                            provenance=self.provenance()) as out:
            out.append(arrays | {"shear": shear}, meta | {"calibration_bin": bins.astype(np.int64)})
        out_dir = self.output_path("calibrator")
        try:
            os.makedirs(out_dir, exist_ok=True)
            record = {"snr_column": c["snr_column"], "size_column": c["size_column"], "snr_edges": c["snr_edges"],
                      "size_edges": c["size_edges"],
                      "mean_response": {f"snr{b // n_size}_size{b % n_size}": mean_r[b].tolist() for b in mean_r},
                      "count": {f"snr{b // n_size}_size{b % n_size}": int(np.sum(bins == b)) for b in mean_r},
                      "provenance": self.provenance()}
            with open(os.path.join(out_dir, "calibrator.json"), "w") as fh:
                json.dump(record, fh, indent=1)
        except BaseException:
            remove_path(out_dir)
            raise


def bias_table(arrays: dict, g: np.ndarray, meta: dict, snr_edges, size_edges, n_boot: int, seed: int,
               calibrated: bool) -> list[dict]:
    """m and c overall, per S/N bin and per size bin: of the raw ellipticities
    (:func:`calipers.shear.bias.fit_bias`) or of the response-calibrated ones with the mean
    responses re-estimated in every bootstrap resample
    (:func:`calipers.shear.bias.fit_bias_calibrated`, bins of ``meta['calibration_bin']``)."""
    from calipers.shear.bias import bin_index, fit_bias, fit_bias_calibrated

    units = meta["pair_id"]

    def fit(sel):
        if calibrated:
            return fit_bias_calibrated(arrays["mu"][sel], arrays["response"][sel], g[sel],
                                       meta["calibration_bin"][sel], units[sel], n_boot=n_boot, seed=seed)
        return fit_bias(arrays["mu"][sel], g[sel], units[sel], n_boot=n_boot, seed=seed)

    rows = [{"split": "all"} | fit(np.ones(len(g), bool))]
    for col, edges in (("snr", snr_edges), ("hlr", size_edges)):
        b = bin_index(meta[col], edges)
        for i in range(len(edges) - 1):
            sel = b == i
            if sel.sum() > 2 and all(np.ptp(g[sel, k]) > 0 for k in (0, 1)):
                rows.append({"split": col, "low": float(edges[i]), "high": float(edges[i + 1])} | fit(sel))
    return rows


class ShearBias(CalipersStage):
    """Multiplicative and additive bias as shear papers report them: ``<g_hat> = (1 + m) g + c`` per
    component on a ring test, with bootstrap errors over ring units, raw (the estimator's mean
    ellipticity on the metacal noshear images) and response-calibrated (the mean responses
    re-estimated in every resample, so their uncertainty is in the errors), overall and per S/N and
    size bin, against the requirement
    bands (DESC SRD year 10 ``|m| < 0.003``; LSST isolated galaxies ``0.001``)."""

    name = "ShearBias"
    parallel = False
    inputs = [("calibrated", ArraySetFile)]
    outputs = [("bias", ReportDir)]
    config_options = CalipersStage.config_options | {
        "snr_edges": Param(list, [10, 15, 30, 100], msg="S/N bins of the table and figure"),
        "size_edges": Param(list, [0.35, 0.5, 0.65, 0.8], msg="Size bins (arcsec)"),
        "n_boot": Param(int, 200, msg="Bootstrap resamples of ring units"),
    }

    def process(self):
        from calipers.core.report import html_table, write_report
        from calipers.shear import plots

        c = self.config
        path = self.input_path("calibrated")
        arrays, meta, _ = _read_estimates(path)
        for col in ("g1", "g2", "pair_id", "snr", "hlr"):
            if col not in meta:
                raise FileFormatError(f"{path}: meta column '{col}' is missing: the bias needs a simulated ring test")
        if "shear" not in arrays or "calibration_bin" not in meta:
            raise FileFormatError(f"{path}: no calibrated 'shear' or 'calibration_bin': run ShearCalibrate first")
        g = np.stack([meta["g1"], meta["g2"]], 1)
        tables = {name: bias_table(arrays, g, meta, c["snr_edges"], c["size_edges"], c["n_boot"], c["seed"],
                                   calibrated=name == "calibrated") for name in ("raw", "calibrated")}
        overall = {f"{name}_{k}": t[0][k] for name, t in tables.items() for k in ("m1", "m2", "c1", "c2", "m1_err",
                                                                               "m2_err", "c1_err", "c2_err")}
        figures = {"m_vs_snr": plots.bias_vs_bin(tables, "snr"), "m_vs_size": plots.bias_vs_bin(tables, "hlr")}
        cols = ["split", "low", "high", "n_units", "m1", "m1_err", "m2", "m2_err", "c1", "c1_err", "c2", "c2_err"]
        html = "".join(html_table(t, cols, f"{name} estimate") for name, t in tables.items())
        write_report(self.output_path("bias"), f"Shear bias: {os.path.basename(path)}",
                     overall | {"n_objects": int(len(g))}, [], figures, provenance=self.provenance(), extra_html=html,
                     extra={"bias": tables})


class ShearGate(GateStage):
    """Judge shear estimates on the shared Gaussian-vector layer: coverage of the 68% and 95%
    ellipses of each galaxy's 2x2 covariance against its true ellipticity (within ``coverage_tolerance``
    of nominal), no estimate with ``|eps| >= 1``, and from a :class:`ShearBias` report the calibrated
    ``|m|`` and ``|c|`` of both components."""

    name = "ShearGate"
    parallel = False
    inputs = [("calibrated", ArraySetFile), ("bias", ReportDir)]
    outputs = [("report", ReportDir)]
    config_options = CalipersStage.config_options | GATE_OPTIONS | {
        "coverage_tolerance": Param(float, 0.05, msg="Largest allowed |coverage - nominal| of the 68% and 95% ellipses"),
        "max_abs_m": Param(float, 0.01, msg="Largest allowed calibrated |m1|, |m2|"),
        "max_abs_c": Param(float, 5e-3, msg="Largest allowed calibrated |c1|, |c2|"),
    }

    def process(self):
        import json

        from calipers.shear import plots
        from calipers.validate.gate import Check
        from calipers.validate.gaussian import ellipse_coverage, mahalanobis2

        c = self.config
        path = self.input_path("calibrated")
        arrays, meta, _ = _read_estimates(path)
        if "eps1" not in meta or "eps2" not in meta:
            raise FileFormatError(f"{path}: meta 'eps1', 'eps2' (the true ellipticities) are missing")
        y = np.stack([meta["eps1"], meta["eps2"]], 1)
        cover = ellipse_coverage(y, arrays["mu"], arrays["covariance"], (0.68, 0.95))
        outside = float(np.mean(np.hypot(arrays["mu"][:, 0], arrays["mu"][:, 1]) >= 1.0))
        with open(os.path.join(self.input_path("bias"), "report.json")) as fh:
            bias = json.load(fh)["metrics"]
        checks = [Check(f"coverage_{int(p * 100)}", v, "abs<=", c["coverage_tolerance"], target=p,
                        why=f"{int(p * 100)}% ellipses of the per-galaxy covariance") for p, v in cover.items()]
        checks.append(Check("fraction_abs_eps_ge_1", outside, "<=", 0.0, why="no ellipticity outside the unit disc"))
        for k in ("m1", "m2"):
            checks.append(Check(f"calibrated_{k}", float(bias[f"calibrated_{k}"]), "abs<=", c["max_abs_m"],
                                why=f"+- {bias[f'calibrated_{k}_err']:.4f} (bootstrap)"))
        for k in ("c1", "c2"):
            checks.append(Check(f"calibrated_{k}", float(bias[f"calibrated_{k}"]), "abs<=", c["max_abs_c"],
                                why=f"+- {bias[f'calibrated_{k}_err']:.5f} (bootstrap)"))
        d2 = mahalanobis2(y, arrays["mu"], arrays["covariance"])
        summary = {"coverage_68": cover[0.68], "coverage_95": cover[0.95], "fraction_abs_eps_ge_1": outside,
                   "n": int(len(y))} | {k: v for k, v in bias.items() if k.startswith("calibrated_")}
        self.conclude(f"Shear gate: {os.path.basename(path)}", summary, checks,
                      {"mahalanobis": plots.mahalanobis_histogram(d2)})


class ShearReport(CalipersStage):
    """One HTML page for the shear pipeline: m and c per S/N and size bin (raw and calibrated) against
    the requirement bands, the gate's coverage of the ellipses and its checks, and the estimator's
    equivariance errors and training history from the model card."""

    name = "ShearReport"
    parallel = False
    inputs = [("model", ModelDir), ("calibrated", ArraySetFile), ("bias", ReportDir), ("gate", ReportDir)]
    outputs = [("shear_report", ReportDir)]
    config_options = CalipersStage.config_options

    def process(self):
        import json

        from calipers.core.report import html_table, write_report
        from calipers.shear import plots
        from calipers.validate.gaussian import mahalanobis2

        meta_path = os.path.join(self.input_path("model"), "metadata.json")
        with open(meta_path) as fh:
            card = json.load(fh).get("model_card", {})
        with open(os.path.join(self.input_path("bias"), "report.json")) as fh:
            bias = json.load(fh)
        gate_dir = self.input_path("gate")
        with open(os.path.join(gate_dir, "report.json")) as fh:
            gate = json.load(fh)
        arrays, meta, _ = _read_estimates(self.input_path("calibrated"))
        y = np.stack([meta["eps1"], meta["eps2"]], 1)
        figures = {"m_vs_snr": plots.bias_vs_bin(bias["bias"], "snr"),
                   "m_vs_size": plots.bias_vs_bin(bias["bias"], "hlr"),
                   "mahalanobis": plots.mahalanobis_histogram(mahalanobis2(y, arrays["mu"], arrays["covariance"]))}
        equi = card.get("equivariance") or {}
        summary = {"gate_passed": gate.get("passed"), **{k: v for k, v in bias["metrics"].items()},
                   "coverage_68": gate["metrics"].get("coverage_68"), "coverage_95": gate["metrics"].get("coverage_95"),
                   **{f"equivariance_{k}": v for k, v in equi.items()}}
        cols = ["split", "low", "high", "n_units", "m1", "m1_err", "m2", "m2_err", "c1", "c1_err", "c2", "c2_err"]
        html = "".join(html_table(t, cols, f"Bias, {name} estimate") for name, t in bias["bias"].items())
        html += html_table(gate["checks"], ["name", "value", "op", "threshold", "target", "passed", "why"], "Gate checks")
        write_report(self.output_path("shear_report"), "Weak-lensing shear: bias, calibration and equivariance",
                     summary, [], figures, provenance=self.provenance(), extra_html=html,
                     extra={"bias": bias["bias"], "equivariance": equi, "gate_checks": gate["checks"]})
