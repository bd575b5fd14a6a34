"""Drift-monitoring stages (issue 22): one batch in, the previous state in, the new state out.

Each run of a monitor reads one batch and the state its previous run wrote (a fresh state starts a
stream: :func:`calipers.core.monitor_files.write_fresh_state`), and writes the new state, the
monitoring table (one row per batch so far, HDF5), the alert record of this batch (JSON: each alert
names the statistic, its value, the rule, the threshold and the batch) and a report with one figure
per statistic against the batch number. With ``on_alert: error`` a batch that raises an alert stops
the pipeline (:class:`~calipers.core.errors.DriftAlert`) after every output is written, so the next
night can resume from the state. The science lives in :mod:`calipers.monitor`.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from calipers.core.errors import CatalogError, ConfigError, DriftAlert
from calipers.core.file_types import (ArraySetFile, ClassPredictionsFile, GaussianVectorFile, HDF5Catalog, JSONFile,
                                     QPEnsembleFile, ReportDir)
from calipers.core.stage import CalipersStage, Param

log = logging.getLogger(__name__)

__all__ = ["CalibrationDriftMonitor", "ClassDriftMonitor", "CovariateDriftMonitor", "GaussianDriftMonitor"]

OUTPUTS = [("state", JSONFile), ("monitor_table", HDF5Catalog), ("alert", JSONFile), ("report", ReportDir)]


class _DriftMonitor(CalipersStage):
    """Common end of the monitors (not itself runnable)."""

    monitor = ""
    detectors: tuple = ()
    outputs = OUTPUTS
    config_options = CalipersStage.config_options | {
        "alpha": Param(float, 0.05, msg="False-alarm rate of each per-batch test"),
        "on_alert": Param(str, "warn", msg="error (stop the pipeline once the outputs are written) or warn (log)"),
        "alert_on": Param(list, [], msg="Detectors whose alarms are alerts (empty: the monitor's default)"),
    }
    default_alert_on: tuple = ()

    def validate(self):
        c = self.config
        if c["on_alert"] not in ("error", "warn"):
            raise ConfigError(f"stage {self.instance_name}: on_alert must be 'error' or 'warn', got {c['on_alert']!r}")
        if not 0 < c["alpha"] < 1:
            raise ConfigError(f"stage {self.instance_name}: alpha must be in (0, 1), got {c['alpha']}")
        unknown = sorted(set(c["alert_on"]) - set(self.detectors))
        if unknown:
            raise ConfigError(f"stage {self.instance_name}: alert_on {unknown} unknown; known: {list(self.detectors)}")

    def alert_on(self) -> list:
        return list(self.config["alert_on"]) or list(self.default_alert_on)

    def _load_state(self, settings: dict) -> tuple[dict, bool]:
        from calipers.core.monitor_files import fresh_state, read_state

        state = read_state(self.input_path("previous_state"), self.monitor, settings)
        if state is None:
            return fresh_state() | {"monitor": self.monitor, "settings": settings, "detectors": {}, "history": [],
                                    "alerts": []}, True
        return state, False

    def _finish(self, state: dict, row: dict, candidates: list[dict], panels: list[dict], title: str) -> None:
        """Record the row and the alerts of the detectors in ``alert_on``, write every output, then
        raise when ``on_alert`` is error and there are alerts."""
        from calipers.core.monitor_files import write_alert, write_monitor_table, write_state
        from calipers.core.report import write_report
        from calipers.validate.gate import Check
        from calipers.validate.monitor_plots import statistic_vs_batch

        chosen = set(self.alert_on())
        alerts = [a for a in candidates if a["detector"] in chosen]
        fired = [a for a in alerts if a["alarm"]]
        for a in fired:
            log.warning("drift monitor %s: batch %d: %s = %.5g (%s, threshold %.5g)", self.instance_name, a["batch"],
                        a["statistic"], a["value"], a["rule"], a["threshold"])
        state["history"].append(row)
        state["alerts"].extend(fired)
        prov = self.provenance()
        write_state(self.output_path("state"), state)
        write_monitor_table(self.output_path("monitor_table"), state["history"], prov)
        alert_path = self.output_path("alert")
        write_alert(alert_path, {"monitor": self.monitor, "stage": self.instance_name, "batch": row["batch"],
                                 "alerts": fired, "checked": alerts, "provenance": prov})
        checks = [Check(a["statistic"], float(a["value"]), ">=" if a["rule"].startswith("p") else "<=",
                        float(a["threshold"]), why=f"{a['detector']}: alarm when {a['rule']}") for a in alerts]
        summary = {k: v for k, v in row.items() if isinstance(v, (int, float, bool, str))}
        write_report(self.output_path("report"), title, summary, checks,
                     {"statistics_vs_batch": statistic_vs_batch(panels, title)}, provenance=prov,
                     extra={"alerts": fired, "all_alerts": state["alerts"]})
        if fired and self.config["on_alert"] == "error":
            # the outputs are this batch's result: put them in place (and on the resume record) first
            self.finalize()
            raise DriftAlert(fired, os.path.abspath(self.get_output("alert", final_name=True)))


def _column(history: list[dict], key: str) -> np.ndarray:
    return np.array([float(r.get(key, np.nan)) for r in history])


def _flags(history: list[dict], key: str) -> np.ndarray:
    return np.array([bool(r.get(key, False)) for r in history])


class CovariateDriftMonitor(_DriftMonitor):
    """Compare a batch's input features with a reference sample (:mod:`calipers.monitor.covariate`):
    per batch, kernel MMD with a permutation p-value and KS per feature with a Bonferroni
    correction, each an alarm at ``p < alpha``; across batches, a Page-Hinkley detector per feature
    on the Welch z-score of its mean against the reference, each with the in-control run length
    ``arl x n_features`` so that together they raise a false alarm about once in ``arl`` batches.
    Page-Hinkley measures the z-scores against their own running mean, so the reference's own
    sampling error (a constant offset of every batch's z, of standard deviation
    ``sqrt(n_batch / (n_batch + n_reference))``: 0.3 for 1,000 against 10,000) does not accumulate
    into false alarms as it would in a CUSUM; a drift present from the first batch is the per-batch
    tests' to find. With ``colours`` the features are the
    adjacent differences of ``features`` (and ``anchor_feature`` itself), where a zero-point error
    of one band stands out. Rows with a non-finite feature or one above ``max_feature_value``
    (non-detections written as 99) are left out of both samples and counted."""

    name = "CovariateDriftMonitor"
    monitor = "covariate"
    detectors = ("mmd", "ks", "page_hinkley")
    default_alert_on = ("mmd", "ks", "page_hinkley")
    inputs = [("reference", HDF5Catalog), ("batch", HDF5Catalog), ("previous_state", JSONFile)]
    config_options = _DriftMonitor.config_options | {
        "hdf5_groupname": Param(str, "photometry", msg="Group of the catalogs' columns"),
        "features": Param(list, [f"mag_{b}_lsst" for b in "ugrizy"], msg="Feature columns compared"),
        "colours": Param(bool, False, msg="Compare adjacent differences of the features (colours) instead"),
        "anchor_feature": Param(str, "", msg="With colours: also this feature itself (e.g. mag_i_lsst)"),
        "max_feature_value": Param(float, 40.0, msg="Rows with a feature above this are left out (non-detections)"),
        "n_permutations": Param(int, 200, msg="Permutations of the MMD test"),
        "max_rows": Param(int, 1000, msg="Rows of each sample the MMD uses (seeded subsample)"),
        "arl": Param(float, 100.0, msg="In-control average run length of the Page-Hinkley detectors together, in batches"),
        "ph_delta": Param(float, 0.5, msg="Page-Hinkley tolerance (in units of the z-score)"),
    }

    def validate(self):
        super().validate()
        c = self.config
        need = 2 if c["colours"] else 1
        if len(c["features"]) < need:
            raise ConfigError(f"stage {self.instance_name}: features must name at least {need} column(s)"
                              f"{' (colours are differences of adjacent features)' if c['colours'] else ''}, "
                              f"got {c['features']}")
        if c["anchor_feature"] and not c["colours"]:
            raise ConfigError(f"stage {self.instance_name}: anchor_feature is used with colours: true only")

    def _features(self, tag: str) -> tuple[np.ndarray, list[str], int]:
        from calipers.core import catalog
        from calipers.monitor.covariate import colour_features

        path, c = self.input_path(tag), self.config
        catalog.require_columns(path, c["hdf5_groupname"], c["features"])
        cols = catalog.read_columns(path, c["hdf5_groupname"], c["features"])
        x = np.column_stack([np.asarray(cols[f], dtype=float) for f in c["features"]])
        keep = np.all(np.isfinite(x) & (x <= c["max_feature_value"]), axis=1)
        if keep.sum() < 2:
            raise CatalogError(f"{path}: fewer than 2 rows with all of {c['features']} finite and <= "
                               f"{c['max_feature_value']} ({len(x)} rows)")
        x, names = x[keep], list(c["features"])
        if c["colours"]:
            try:
                x, names = colour_features(x, names, c["anchor_feature"])
            except ValueError as err:
                raise ConfigError(f"stage {self.instance_name}: {err}") from err
        return x, names, int((~keep).sum())

    def process(self):
        from calipers.monitor.covariate import ks_bonferroni, mean_shift_z, mmd_drift
        from calipers.monitor.sequential import PageHinkley

        c = self.config
        settings = {k: c[k] for k in ("features", "colours", "anchor_feature", "alpha", "n_permutations", "max_rows",
                                      "max_feature_value", "arl", "ph_delta")}
        state, fresh = self._load_state(settings)
        b = len(state["history"])
        ref, names, _ = self._features("reference")
        x, _, dropped = self._features("batch")
        if fresh:
            state["detectors"] = {f"ph_{n}": PageHinkley(delta=c["ph_delta"], arl=c["arl"] * len(names)).to_dict()
                                  for n in names}
        mmd = mmd_drift(ref, x, alpha=c["alpha"], n_permutations=c["n_permutations"], max_n=c["max_rows"],
                        seed=[int(c["seed"]), b])
        ks = ks_bonferroni(ref, x, alpha=c["alpha"], names=names)
        z = mean_shift_z(ref, x)
        row = {"batch": b, "n": len(x), "n_left_out": dropped, "n_reference": len(ref), "mmd2": mmd["mmd2"],
               "mmd_p": mmd["mmd_p"], "mmd_alarm": mmd["alarm"], "ks_p_bonferroni": ks["p_bonferroni"],
               "ks_alarm": ks["alarm"], "ks_worst_feature": ks["ks_worst_feature"],
               **{f"ks_{f}": v for f, v in ks["ks_statistic"].items()}}
        alpha = c["alpha"]
        candidates = [
            {"detector": "mmd", "statistic": "mmd_p", "value": mmd["mmd_p"], "rule": "p < alpha", "threshold": alpha,
             "batch": b, "alarm": mmd["alarm"]},
            {"detector": "ks", "statistic": f"ks_p_bonferroni ({ks['ks_worst_feature']})", "value": ks["p_bonferroni"],
             "rule": "p < alpha", "threshold": alpha, "batch": b, "alarm": ks["alarm"]}]
        worst, any_alarm = 0.0, False
        for n, zn in zip(names, z):
            det = PageHinkley.from_dict(state["detectors"][f"ph_{n}"])
            out = det.update([zn])[0]
            state["detectors"][f"ph_{n}"] = det.to_dict()
            row |= {f"mean_z_{n}": float(zn), f"ph_{n}": out["statistic"]}
            worst, any_alarm, threshold = max(worst, out["statistic"]), any_alarm or out["alarm"], out["threshold"]
            candidates.append({"detector": "page_hinkley", "statistic": f"ph_{n}", "value": out["statistic"],
                               "rule": "statistic > threshold", "threshold": out["threshold"], "batch": b,
                               "alarm": out["alarm"], "direction": out["direction"]})
        row |= {"ph_max": worst, "ph_threshold": threshold, "ph_alarm": any_alarm}
        h = state["history"] + [row]
        panels = [{"label": "MMD p-value", "values": _column(h, "mmd_p"), "threshold": alpha,
                   "alarms": _flags(h, "mmd_alarm"), "log": True},
                  {"label": "KS p (Bonferroni)", "values": _column(h, "ks_p_bonferroni"), "threshold": alpha,
                   "alarms": _flags(h, "ks_alarm"), "log": True},
                  {"label": "Page-Hinkley of mean z (max)", "values": _column(h, "ph_max"),
                   "threshold": _column(h, "ph_threshold"), "alarms": _flags(h, "ph_alarm")}]
        self._finish(state, row, candidates, panels,
                     f"Covariate drift: batch {b} ({os.path.basename(self.input_path('batch'))})")


class _PITDriftMonitor(_DriftMonitor):
    """Calibration drift from the PIT of labelled batches (not itself runnable): the PIT mean and
    dispersion as z-scores with their exact moments under a uniform PIT, a per-batch test of both
    (Bonferroni), CUSUM and Page-Hinkley detectors on each (thresholds from the in-control average
    run length ``arl``, in batches, per detector) and two conformal test martingales over the objects
    of the whole stream, whose reference is the reference sample's PITs: one on ``|PIT - 1/2|``
    (widths gone wrong), one on the PIT itself (a shift); each alarms at twice
    ``martingale_threshold``, so that a false alarm of either, over the whole stream, has probability
    at most ``1 / martingale_threshold``. Without labels (``labelled: false``) only the label-free
    drift of the point estimates and widths is followed (KS against the reference's, Bonferroni).
    Subclasses read their output kind: :meth:`_load` returns the PIT (None without labels), the
    point estimates and the widths of the reference or the batch."""

    monitor = "calibration"
    detectors = ("batch_test", "cusum", "page_hinkley", "martingale", "prediction")
    default_alert_on = ("cusum", "page_hinkley", "martingale")
    config_options = _DriftMonitor.config_options | {
        "labelled": Param(bool, True, msg="The batches carry the truth (false: prediction drift only)"),
        "arl": Param(float, 100.0, msg="In-control average run length of each CUSUM / Page-Hinkley, in batches"),
        "cusum_k": Param(float, 0.5, msg="CUSUM reference value (half the shift in sigma it is tuned to)"),
        "ph_delta": Param(float, 0.5, msg="Page-Hinkley tolerance"),
        "martingale_threshold": Param(float, 100.0, msg="Alarm when the martingale reaches this (false alarm <= 1/it)"),
        "martingale_levels": Param(int, 4096, msg="Quantisation levels of the martingale's scores"),
        "martingale_jump": Param(float, 1e-4, msg="Share of the martingale's capital spread over its bets per object"),
        "max_reference_rows": Param(int, 20000, msg="Reference rows used (seeded subsample)"),
    }
    kind_settings: tuple = ()
    batch_tag = "predictions"

    def _load(self, which: str, labelled: bool, batch_index: int) -> dict:
        """``{"pit", "point", "width"}`` of ``which`` (``reference`` or ``batch``)."""
        raise NotImplementedError

    def process(self):
        from calipers.monitor.calibration import pit_batch_alarm, pit_batch_statistics
        from calipers.monitor.covariate import prediction_drift
        from calipers.monitor.martingale import ConformalTestMartingale
        from calipers.monitor.sequential import Cusum, PageHinkley

        c = self.config
        settings = {k: c[k] for k in ("alpha", "arl", "cusum_k", "ph_delta", "martingale_threshold", "martingale_levels",
                                      "martingale_jump", "max_reference_rows") + self.kind_settings}
        state, fresh = self._load_state(settings)
        b = len(state["history"])
        ref = self._load("reference", fresh, b)
        n_ref = len(ref["point"])
        rows = np.sort(np.random.default_rng([int(c["seed"]), 0]).permutation(n_ref)[:c["max_reference_rows"]])
        det = state["detectors"]
        if fresh:
            ref_pit = ref["pit"][rows]
            # two martingales, each at twice the threshold, so that either reaching it has
            # probability at most 1 / martingale_threshold: one on |PIT - 1/2| (widths), one on the PIT (shifts)
            for key, low, high, score in (("martingale_width", 0.0, 0.5, np.abs(ref_pit - 0.5)),
                                          ("martingale_shift", 0.0, 1.0, ref_pit)):
                ctm = ConformalTestMartingale(threshold=2 * c["martingale_threshold"], low=low, high=high,
                                              n_levels=c["martingale_levels"], jump=c["martingale_jump"],
                                              seed=int(c["seed"]) + (key == "martingale_shift"))
                ctm.add_reference(score)
                det[key] = ctm.to_dict()
            det.update({**{f"cusum_{s}": Cusum(k=c["cusum_k"], arl=c["arl"]).to_dict() for s in ("mean", "dispersion")},
                        **{f"ph_{s}": PageHinkley(delta=c["ph_delta"], arl=c["arl"]).to_dict()
                           for s in ("mean", "dispersion")}})
        new = self._load("batch", c["labelled"], b)
        pred = prediction_drift(ref["point"][rows], ref["width"][rows], new["point"], new["width"], alpha=c["alpha"])
        row = {"batch": b, "n": len(new["point"]), "median_width": float(np.median(new["width"])),
               "prediction_p_bonferroni": pred["p_bonferroni"], "prediction_alarm": pred["alarm"],
               "ks_point": pred["ks_statistic"]["point"], "ks_width": pred["ks_statistic"]["width"]}
        alpha = c["alpha"]
        candidates = [{"detector": "prediction", "statistic": f"prediction_p_bonferroni ({pred['ks_worst_feature']})",
                       "value": pred["p_bonferroni"], "rule": "p < alpha", "threshold": alpha, "batch": b,
                       "alarm": pred["alarm"]}]
        if c["labelled"]:
            pit = new["pit"]
            s = pit_batch_statistics(pit)
            row |= {k: s[k] for k in ("pit_mean", "pit_var", "z_mean", "z_dispersion", "p_mean", "p_dispersion", "ks",
                                      "p_ks")}
            row["batch_test_alarm"] = pit_batch_alarm(s, alpha)
            candidates.append({"detector": "batch_test", "statistic": "min(p_mean, p_dispersion)",
                               "value": min(s["p_mean"], s["p_dispersion"]), "rule": "p < alpha / 2",
                               "threshold": alpha / 2, "batch": b, "alarm": row["batch_test_alarm"]})
            for stat, key in (("mean", "z_mean"), ("dispersion", "z_dispersion")):
                for name, cls, label in (("cusum", Cusum, "cusum"), ("ph", PageHinkley, "page_hinkley")):
                    d = cls.from_dict(det[f"{name}_{stat}"])
                    out = d.update([s[key]])[0]
                    det[f"{name}_{stat}"] = d.to_dict()
                    row |= {f"{name}_{stat}": out["statistic"], f"{name}_{stat}_threshold": out["threshold"],
                            f"{name}_{stat}_alarm": out["alarm"]}
                    candidates.append({"detector": label, "statistic": f"{name}_{stat}", "value": out["statistic"],
                                       "rule": "statistic > threshold", "threshold": out["threshold"], "batch": b,
                                       "alarm": out["alarm"], "direction": out["direction"]})
            for key, score in (("martingale_width", np.abs(pit - 0.5)), ("martingale_shift", pit)):
                ctm = ConformalTestMartingale.from_dict(det[key])
                m = ctm.update(score, b)
                det[key] = ctm.to_dict()
                row |= {f"log10_{key}": m["log10_martingale"], f"max_log10_{key}": m["max_log10_in_batch"],
                        f"{key}_alarm": bool(m["alarm"])}
                candidates.append({"detector": "martingale", "statistic": f"log10_{key} (max in batch)",
                                   "value": m["max_log10_in_batch"], "rule": "statistic >= log10 threshold",
                                   "threshold": float(np.log10(ctm.threshold)), "batch": b, "alarm": bool(m["alarm"])})
            row["martingale_alarm"] = bool(row["martingale_width_alarm"] or row["martingale_shift_alarm"])
        h = state["history"] + [row]
        panels = []
        if c["labelled"]:
            panels += [{"label": f"CUSUM {s}", "values": _column(h, f"cusum_{s}"),
                        "threshold": _column(h, f"cusum_{s}_threshold"), "alarms": _flags(h, f"cusum_{s}_alarm")}
                       for s in ("mean", "dispersion")]
            panels += [{"label": f"Page-Hinkley {s}", "values": _column(h, f"ph_{s}"),
                        "threshold": _column(h, f"ph_{s}_threshold"), "alarms": _flags(h, f"ph_{s}_alarm")}
                       for s in ("mean", "dispersion")]
            panels += [{"label": f"log10 {key.replace('_', ' ')}", "values": _column(h, f"max_log10_{key}"),
                        "threshold": np.log10(2 * c["martingale_threshold"]), "alarms": _flags(h, f"{key}_alarm")}
                       for key in ("martingale_width", "martingale_shift")]
        panels.append({"label": "prediction KS p (Bonf.)", "values": _column(h, "prediction_p_bonferroni"),
                       "threshold": alpha, "alarms": _flags(h, "prediction_alarm"), "log": True})
        self._finish(state, row, candidates, panels,
                     f"Calibration drift ({self.name}): batch {b} ({os.path.basename(self.input_path(self.batch_tag))})")


class CalibrationDriftMonitor(_PITDriftMonitor):
    """Calibration drift of p(z) (qp ensembles; :class:`_PITDriftMonitor` says what is followed):
    the PIT is each p(z)'s CDF at the true redshift on the grid ``0 .. zmax``, the point estimate its
    median and the width its 16-84% interval."""

    name = "CalibrationDriftMonitor"
    batch_tag = "pz"
    inputs = [("reference_pz", QPEnsembleFile), ("reference_truth", HDF5Catalog), ("pz", QPEnsembleFile),
              ("truth", HDF5Catalog), ("previous_state", JSONFile)]
    config_options = _PITDriftMonitor.config_options | {
        "hdf5_groupname": Param(str, "photometry", msg="Group of the truth catalogs"),
        "redshift_column": Param(str, "redshift", msg="True redshift column"),
        "zmax": Param(float, 3.0, msg="Upper end of the redshift grid the p(z) are evaluated on"),
        "nzbins": Param(int, 301, msg="Points of that grid"),
    }
    kind_settings = ("zmax", "nzbins")

    def _grid(self):
        return np.linspace(0.0, self.config["zmax"], self.config["nzbins"])

    def _pdfs(self, tag: str):
        from calipers.core.qpio import qp_size, read_qp_rows
        from calipers.validate.metrics import grid_pdfs

        path = self.input_path(tag)
        n = qp_size(path)
        if n == 0:
            raise CatalogError(f"{path}: holds no p(z)")
        pdfs, valid = grid_pdfs(read_qp_rows(path, 0, n), self._grid())
        if not valid.all():
            raise CatalogError(f"{path}: {int((~valid).sum())} p(z) are not finite or do not normalise on the grid "
                               f"0..{self.config['zmax']}, first at row {int(np.flatnonzero(~valid)[0])}")
        return pdfs

    def _load(self, which: str, labelled: bool, batch_index: int) -> dict:
        from calipers.core import catalog
        from calipers.gridpdf import grid_quantiles
        from calipers.validate.metrics import pit_values

        c = self.config
        pz_tag, truth_tag = ("reference_pz", "reference_truth") if which == "reference" else ("pz", "truth")
        pdfs = self._pdfs(pz_tag)
        q = grid_quantiles(pdfs, self._grid(), [0.16, 0.5, 0.84])
        out = {"pit": None, "point": q[:, 1], "width": q[:, 2] - q[:, 0]}
        if labelled:
            z = catalog.read_truth(self.input_path(truth_tag), c["hdf5_groupname"], c["redshift_column"], len(pdfs),
                                   self.input_path(pz_tag))
            bad = np.flatnonzero(~np.isfinite(z))
            if bad.size:
                raise CatalogError(f"{self.input_path(truth_tag)}: column '{c['redshift_column']}' is not finite in "
                                   f"{bad.size} row(s), first at row {bad[0]}")
            out["pit"] = pit_values(pdfs, self._grid(), z)
        return out


class GaussianDriftMonitor(_PITDriftMonitor):
    """Calibration drift of Gaussian-vector predictions (``mu[N, K]``, ``sigma[N, K]``;
    :class:`_PITDriftMonitor` says what is followed): the PIT of output ``k`` is ``Phi((y - mu) /
    sigma)`` (:func:`calipers.monitor.calibration.pit_from_zscores`), the point estimate ``mu`` and
    the width ``2 sigma``, over the outputs listed in ``outputs`` (all when empty), object by object.
    The per-batch statistics' exact moments assume independent PITs: list outputs whose errors are
    nearly independent (the two shear components, one transit bin), not a whole correlated spectrum."""

    name = "GaussianDriftMonitor"
    inputs = [("reference_predictions", GaussianVectorFile), ("reference_truth", ArraySetFile),
              ("predictions", GaussianVectorFile), ("truth", ArraySetFile), ("previous_state", JSONFile)]
    config_options = _PITDriftMonitor.config_options | {
        "truth_array": Param(str, "depth", msg="Array of the truth files with the true values [N, K]"),
        "truth_id_column": Param(str, "", msg="Meta column of the truth files with the ids ('' = do not compare)"),
        "outputs": Param(list, [], msg="Outputs (columns of mu) followed; empty: all"),
    }
    kind_settings = ("outputs",)

    def _load(self, which: str, labelled: bool, batch_index: int) -> dict:
        from calipers.core.transit_files import read_gaussian_vectors, read_gaussian_with_truth
        from calipers.monitor.calibration import pit_from_zscores

        c = self.config
        pred_tag, truth_tag = ("reference_predictions", "reference_truth") if which == "reference" \
            else ("predictions", "truth")
        if labelled:
            mu, sigma, y, _, _ = read_gaussian_with_truth(self.input_path(pred_tag), self.input_path(truth_tag),
                                                          c["truth_array"], c["truth_id_column"])
        else:
            mu, sigma, _, _ = read_gaussian_vectors(self.input_path(pred_tag))
            y = None
        cols = list(c["outputs"]) or list(range(mu.shape[1]))
        if min(cols) < 0 or max(cols) >= mu.shape[1]:
            raise ConfigError(f"stage {self.instance_name}: outputs {cols} out of range for "
                              f"{self.input_path(pred_tag)} ({mu.shape[1]} outputs)")
        mu, sigma = mu[:, cols], sigma[:, cols]
        return {"pit": None if y is None else pit_from_zscores((y[:, cols] - mu) / sigma).ravel(),
                "point": mu.ravel(), "width": 2.0 * sigma.ravel()}


class ClassDriftMonitor(_PITDriftMonitor):
    """Calibration drift of class probabilities (calipers class-predictions files with their labels
    in ``meta/label``; :class:`_PITDriftMonitor` says what is followed): the PIT is the randomised
    PIT of each Bernoulli outcome (:func:`calipers.monitor.calibration.pit_binary`, its uniform draws
    seeded per batch), the point estimate the probability and the width the spread of the members'
    logits."""

    name = "ClassDriftMonitor"
    inputs = [("reference_predictions", ClassPredictionsFile), ("predictions", ClassPredictionsFile),
              ("previous_state", JSONFile)]

    def _load(self, which: str, labelled: bool, batch_index: int) -> dict:
        from calipers.core.class_predictions import read_class_predictions
        from calipers.monitor.calibration import pit_binary

        tag = "reference_predictions" if which == "reference" else "predictions"
        path = self.input_path(tag)
        pred = read_class_predictions(path)
        width = np.std(np.asarray(pred.member_logits, dtype=float), axis=0)
        out = {"pit": None, "point": np.asarray(pred.prob, dtype=float), "width": width}
        if labelled:
            key = [int(self.config["seed"]), 9] + ([] if which == "reference" else [int(batch_index)])
            try:
                out["pit"] = pit_binary(pred.prob, pred.labels(path), np.random.default_rng(key))
            except ValueError as err:
                raise CatalogError(f"{path}: {err}") from err
        return out
