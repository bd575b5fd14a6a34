"""Model cards (Mitchell et al. 2019) for photo-z models, written by the stages, never by hand.

:func:`training_card` is what ``PZInform`` knows when it saves a model: the training data (file,
hash, the spectroscopic selection applied to it when a ``SpecSelection`` stage made it, rows,
redshift and magnitude ranges, importance weights), the model and its training (configuration,
epochs per member, seconds, seeds), the support region that the per-galaxy ``ood`` flags use, and
the software versions. It is stored in the model's ``metadata.json`` (``model_card``). Later
stages add what they measure - the calibration set's metrics before and after calibration, the
validation part's failure modes, the shift test - in their own reports, and the gate's HTML page
shows the card with them (:func:`card_html`).
"""
from __future__ import annotations

import html
import json
import platform

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
    clean = prep.transform(mags, errs)[0]
    detected = prep.transform(mags, errs)[2] == 0  # flag 0: a detection
    hashes = json.loads(provenance.get("input_hashes", "{}"))
    training = {
        "file": path, "group": group, "sha256": hashes.get("training_catalog", ""),
        "rows": int(len(z)), "selection": _selection(path),
        "redshift": _ranges(np.asarray(z, dtype=float)),
        "magnitudes_detected": {b: _ranges(clean[detected[:, i], i]) for i, b in enumerate(prep.bands)},
        "nondetections": {b: int(v) for b, v in prep.count_nondetections(mags, errs).items()},
    }
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        training["importance_weights"] = {"column": weight_column, "ess": float(w.sum() ** 2 / np.sum(w * w)),
                                          "ess_fraction": float(w.sum() ** 2 / np.sum(w * w) / len(w)),
                                          "max_over_mean": float(w.max() / w.mean())}
    return {
        "kind": "photo-z deep ensemble of mixture density networks",
        "intended_use": "p(z) of galaxies inside the training sample's support (see support_region); galaxies "
                        "flagged ood are outside it and their p(z) are extrapolations",
        "training_data": training,
        "model": {"config": {k: v for k, v in ensemble.state()[0]["config"].items()},
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
