"""Model cards (Mitchell et al. 2019) for photo-z models, written by the stages, never by hand.

:func:`training_card` is what ``PZInform`` knows when it saves a model: the training data (file,
hash, the spectroscopic selection applied to it when a ``SpecSelection`` stage made it, rows,
redshift and magnitude ranges, importance weights), the model and its training (configuration,
epochs per member, seconds, seeds), the support region that the per-galaxy ``ood`` flags use, and
the software versions. It is stored in the model's ``metadata.json`` (``model_card``). Later
stages add what they measure - the calibration set's metrics before and after calibration, the
validation part's failure modes, the shift test - in their own reports, and the gate's HTML page
shows the card with them (:func:`card_html`). ``PhotozReport`` builds those sections here
(:func:`calibration_card`, :func:`failure_mode_table`, :func:`shift_card`) and shows the whole card
with :func:`report_card_html`.
"""
from __future__ import annotations

import html
import json
import platform
from dataclasses import asdict

import numpy as np

from calipers.core.provenance import read_provenance


def _versions() -> dict:
    import numpy
    import torch

    import calipers

    return {"calipers": calipers.__version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "torch": torch.__version__}


def _selection(path: str) -> dict:
    """The selection recorded in a catalog's provenance by SpecSelection (or {} for a catalog
    that no calipers selection made)."""
    try:
        prov = read_provenance(path)
    except (OSError, ValueError):
        return {}
    out = {}
    for key in ("selection", "selection_cuts"):
        if key in prov:
            try:
                out[key] = json.loads(prov[key])
            except ValueError:
                out[key] = prov[key]
    if out:
        out["made_by_stage"] = prov.get("stage", "")
    return out


def _ranges(values: np.ndarray) -> dict:
    values = values[np.isfinite(values)]
    if not len(values):
        return {"n": 0}
    q = np.percentile(values, [0, 1, 50, 99, 100])
    return {"n": int(len(values)), "min": float(q[0]), "p01": float(q[1]), "median": float(q[2]),
            "p99": float(q[3]), "max": float(q[4])}


def training_card(path: str, group: str, provenance: dict, mags: np.ndarray, errs: np.ndarray, z: np.ndarray,
                  weights, ensemble, support, train_seconds: float, weight_column: str = "") -> dict:
    """The model card of a freshly trained photo-z ensemble (a JSON-able dict)."""
    prep = ensemble.preprocessor
    clean, _, flags = prep.transform(mags, errs)
    detected = flags == 0
    hashes = json.loads(provenance.get("input_hashes", "{}"))
    training = {
        "file": path, "group": group, "sha256": hashes.get("training_catalog", ""),
        "rows": int(len(z)), "selection": _selection(path),
        "redshift": _ranges(np.asarray(z, dtype=float)),
        "magnitudes_detected": {b: _ranges(clean[detected[:, i], i]) for i, b in enumerate(prep.bands)},
        "nondetections": {b: int(v) for b, v in prep.count_nondetections(mags, errs).items()},
    }
    if weights is not None:
        from calipers.calibrate.shift_weights import effective_sample_size

        w = np.asarray(weights, dtype=float)
        ess = effective_sample_size(w)
        training["importance_weights"] = {"column": weight_column, "ess": ess, "ess_fraction": ess / len(w),
                                          "max_over_mean": float(w.max() / w.mean())}
    return {
        "kind": "photo-z deep ensemble of mixture density networks",
        "intended_use": "p(z) of galaxies inside the training sample's support (see support_region); galaxies "
                        "flagged ood are outside it and their p(z) are extrapolations",
        "training_data": training,
        "model": {"config": asdict(ensemble.config),
                  "z_range": list(ensemble.z_range), "members": ensemble.history,
                  "train_seconds": round(float(train_seconds), 1)},
        "support_region": None if support is None else {
            "method": "mean distance to the k nearest training galaxies (standardised magnitudes and adjacent "
                      "colours); ood above the conformal quantile of the training sample's leave-one-out distances",
            "k": support.n_neighbors, "level": support.level, "threshold": support.threshold},
        "software": _versions(),
        "seed": ensemble.config.seed,
        "created": provenance.get("created", ""),
    }


def _html_value(value) -> str:
    if isinstance(value, dict):
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_html_value(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = list(value[0])
        head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{_html_value(row.get(k))}</td>" for k in keys) + "</tr>" for row in value)
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(value, float):
        return f"{value:.5g}"
    return html.escape(str(value))


def card_html(card: dict, title: str = "Model card") -> str:
    """The card as an HTML fragment (nested tables), for a report page."""
    return f"<h2>{html.escape(title)}</h2>" + _html_value(card)


# ---------------------------------------------------------------------------- the report's sections
# What PhotozReport adds to the training card: keys of the card in its report.json, in page order.
REPORT_SECTIONS = {
    "calibration": "Calibration",
    "failure_modes": "Known failure modes (validation part)",
    "shift": "Covariate shift: labelled sample vs target",
}
# Metrics of the validation part before and after calibration, with their ideal values.
CALIBRATION_METRICS = {"pit_ks": 0.0, "cov68": 0.68, "cov95": 0.95, "crps": "lower is better",
                       "cde_loss": "lower is better"}
# Calibrator settings recorded in its provenance, per method (plus the common ones).
_CALIBRATOR_SETTINGS = {
    "pit_global": ("n_knots",),
    "conformal": (),
    "pit_local": ("n_components", "hidden", "n_members", "max_epochs", "patience", "bands", "feature_columns"),
}
_COMMON_SETTINGS = ("zmin", "zmax", "nzbins", "weight_column", "min_ess_fraction", "seed")


def _json_field(record: dict, key: str) -> dict:
    """A JSON-encoded provenance entry as a dict ({} when absent or unreadable)."""
    try:
        value = json.loads(record.get(key, "{}"))
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _finite_or_none(value):
    """A float for report.json: NaN/inf become None (strict JSON has neither)."""
    value = float(value)
    return value if np.isfinite(value) else None


def calibration_card(calibrator_dir: str, before: dict, after: dict) -> dict:
    """The calibration section of the report's card.

    What the calibrator is (method, redshift grid, settings, seed, the model whose p(z) it was
    fitted on), what it was fitted on (the calibration p(z) and catalog with their SHA-256 from
    the calibrator's ``provenance.json``, the number of rows), its importance weights when it was
    fitted for a target population (column, ESS, and the calibration set's PIT summary unweighted
    and weighted, before calibration; ``calibrator.json``'s ``importance_weights``), and the
    validation part's PIT KS, 68/95% coverage, CRPS and CDE loss before (``before``: metrics of
    the raw p(z)) and after calibration (``after``), as table rows.
    """
    from calipers.core.calibrators import importance_weights_info, read_calibrator_spec

    spec = read_calibrator_spec(calibrator_dir)
    prov = read_provenance(calibrator_dir)
    hashes, inputs, config = (_json_field(prov, k) for k in ("input_hashes", "inputs", "config"))
    method = spec.get("method", "")
    settings = {k: config[k] for k in _CALIBRATOR_SETTINGS.get(method, ()) + _COMMON_SETTINGS if k in config}
    fitted_on = spec.get("fitted_on") or {}
    rows = [{"metric": k, "ideal": ideal, "before (raw p(z))": _finite_or_none(before[k]),
             "after (calibrated)": _finite_or_none(after[k])} for k, ideal in CALIBRATION_METRICS.items()]
    return {
        "method": method,
        "calibrator": calibrator_dir,
        "zgrid": spec.get("zgrid"),
        "settings": settings,
        "fitted_on_model": {"file": fitted_on.get("path", ""), "sha256": fitted_on.get("hash", "")},
        "calibration_data": {
            "catalog": inputs.get("calibration_truth", ""), "catalog_sha256": hashes.get("calibration_truth", ""),
            "pz": inputs.get("calibration_pz", ""), "pz_sha256": hashes.get("calibration_pz", ""),
            "rows": spec.get("n_calibration", prov.get("n_calibration")),
        },
        "importance_weights": importance_weights_info(spec),
        "validation_before_after": rows,
        "calipers_version": prov.get("calipers_version", ""),
        "created": prov.get("created", ""),
    }


def _bin_labels(edges) -> list[str]:
    """'< a', 'a - b', ..., '>= z' for edges whose ends may be -inf/inf."""
    labels = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if np.isinf(lo):
            labels.append(f"< {hi:g}")
        elif np.isinf(hi):
            labels.append(f">= {lo:g}")
        else:
            labels.append(f"{lo:g} - {hi:g}")
    return labels


def failure_mode_table(binned: dict, edges, n_rows: int, binned_by: str, not_binned_why: str) -> dict:
    """One failure-mode table of the card from :func:`calipers.validate.metrics.binned_point_metrics`
    (``binned``) over bins ``edges`` (``-inf``/``inf`` ends allowed): one row per bin (label,
    counts, outlier rate, sigma_IQR, bias), and the rows of the ``n_rows`` that fell in no bin
    (``n_not_binned``, with why), so that the counts add up to ``n_rows``."""
    edges = [float(e) for e in edges]
    rows = [{"bin": label, "n": int(binned["n"][j]), "n_invalid": int(binned["n_invalid"][j]),
             "outlier_015": _finite_or_none(binned["outlier_015"][j]),
             "sigma_iqr": _finite_or_none(binned["sigma_iqr"][j]), "bias": _finite_or_none(binned["bias"][j]),
             "outlier_3sig": _finite_or_none(binned["outlier_3sig"][j])}
            for j, label in enumerate(_bin_labels(edges))]
    n_binned = int(np.sum(binned["n"]) + np.sum(binned["n_invalid"]))
    return {"binned_by": binned_by, "edges": [e for e in edges if np.isfinite(e)], "rows": rows,
            "n_not_binned": n_rows - n_binned, "not_binned_why": not_binned_why}


def _report_json(report_dir: str, stage: str, needs: tuple[str, ...]) -> dict:
    """``report.json`` of a report directory written by ``stage``, with ``needs`` in its metrics
    (errors name the file)."""
    import os

    from calipers.core.errors import FileFormatError
    from calipers.core.provenance import read_json_object

    path = os.path.join(report_dir, "report.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{report_dir}: no report.json; expected the report directory of a {stage} stage")
    report = read_json_object(path, FileFormatError)
    made_by = (report.get("provenance") or {}).get("stage", "")
    if made_by and made_by != stage:
        raise FileFormatError(f"{path}: a report of stage {made_by}, expected one of {stage}")
    missing = [k for k in needs if k not in (report.get("metrics") or {})]
    if missing or "passed" not in report:
        raise FileFormatError(f"{path}: no {missing or ['passed']} in the report; expected a complete {stage} "
                              "report (the file is incomplete or was edited)")
    return report


def shift_card(shift_report_dir: str, weights_report_dir: str) -> dict:
    """The shift section of the report's card, from the ``report.json`` of a ``ShiftTest`` report
    (MMD and classifier two-sample tests of the labelled sample's photometry against the
    target's: statistics, p-values, the threshold, pass/fail) and of a ``ShiftWeights`` report
    (importance weights of the labelled rows: method, effective sample size and its fraction,
    rows clipped, largest weight), each with the catalogs it compared (SHA-256) and its seed."""
    test = _report_json(shift_report_dir, "ShiftTest", ("mmd", "classifier"))
    weights = _report_json(weights_report_dir, "ShiftWeights", ("ess", "ess_fraction", "n_clipped"))

    def compared(report: dict, tags: tuple[str, str]) -> dict:
        prov = report.get("provenance") or {}
        hashes, inputs, config = (_json_field(prov, k) for k in ("input_hashes", "inputs", "config"))
        return {f"{t}": inputs.get(t, "") for t in tags} | {f"{t}_sha256": hashes.get(t, "") for t in tags} | {
            "seed": config.get("seed"), "calipers_version": prov.get("calipers_version", "")}

    m = test["metrics"]
    threshold = {c.get("name"): c.get("threshold") for c in test.get("checks", [])}
    shift_test = {"report": shift_report_dir, "passed": bool(test["passed"]),
                  "mmd_statistic": m["mmd"].get("statistic"), "mmd_p_value": m["mmd"].get("p_value"),
                  "classifier_accuracy": m["classifier"].get("statistic"),
                  "classifier_p_value": m["classifier"].get("p_value"),
                  "min_p_value": threshold.get("mmd_p_value", threshold.get("classifier_p_value")),
                  "n_reference": m.get("n_reference"), "n_target": m.get("n_target")}
    shift_test |= compared(test, ("reference_catalog", "target_catalog"))
    w = weights["metrics"]
    keys = ("method", "classifier", "weight_column", "n_labelled", "n_target_used", "ess", "ess_fraction",
            "min_ess_fraction", "n_clipped", "clip_ratio", "max_weight")
    importance = {"report": weights_report_dir, "passed": bool(weights["passed"])} | {k: w.get(k) for k in keys}
    importance |= compared(weights, ("labelled_catalog", "target_catalog"))
    return {"shift_test": shift_test, "importance_weights": importance}


def _failure_html(section: dict) -> str:
    parts = []
    for name, table in section.items():
        if not isinstance(table, dict) or "rows" not in table:
            parts.append(f"<p>{html.escape(str(name))}: {_html_value(table)}</p>")
            continue
        note = (f" {table['n_not_binned']} row(s) in no bin ({html.escape(table['not_binned_why'])})."
                if table["n_not_binned"] else "")
        parts.append(f"<h4>By {html.escape(table['binned_by'])}</h4><p>Outliers: |z_point - z|/(1+z) > 0.15; "
                     f"sigma_IQR and bias (median) of (z_point - z)/(1+z).{note}</p>{_html_value(table['rows'])}")
    return "".join(parts)


def report_card_html(card: dict | None) -> str:
    """The report's card as HTML: the training card (:func:`card_html`) and then each section
    of :data:`REPORT_SECTIONS` present in ``card`` under its own heading, the failure modes as
    one table per binning."""
    card = card or {}
    training = {k: v for k, v in card.items() if k not in REPORT_SECTIONS}
    out = card_html(training) if training else ("<h2>Model card</h2><p>The model stores no model card (trained "
                                               "before calipers wrote one); retrain to get it.</p>")
    for key, title in REPORT_SECTIONS.items():
        if key not in card:
            continue
        body = _failure_html(card[key]) if key == "failure_modes" else _html_value(card[key])
        out += f"<h3>{html.escape(title)}</h3>{body}"
    return out
