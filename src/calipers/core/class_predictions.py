"""Class-probability prediction files: the output kind of a classifier (DESIGN.md).

Layout (HDF5): ``logit[N]`` (the log-odds the file stands for), ``prob[N]`` (its sigmoid),
``member_logits[M, N]`` and ``member_logit_var[M, N]`` (each ensemble member's logit and its
Monte-Carlo dropout variance), optional extra per-object columns (``logit_uncalibrated``,
``logit_deploy``, ``prob_deploy``, ``logit_single_view``...) and a ``meta`` group with the images'
metadata columns (labels, observing conditions, truth). Attributes: ``kind``, ``calibration``
(JSON: what was applied), ``provenance`` (JSON).

Files are written to a temporary name next to the target and renamed, so a crash never leaves a
half file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from calipers.core.catalog import open_hdf5
from calipers.core.errors import FileFormatError
from calipers.validate.classification import sigmoid  # noqa: F401  (re-exported: stages import it from here)

KIND = "calipers.class_predictions"
REQUIRED = ("logit", "prob", "member_logits")


@dataclass
class ClassPredictions:
    logit: np.ndarray
    prob: np.ndarray
    member_logits: np.ndarray
    member_logit_var: np.ndarray | None = None
    columns: dict = field(default_factory=dict)   # further per-object arrays
    meta: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.logit)

    def labels(self, source: str = "predictions") -> np.ndarray:
        if "label" not in self.meta:
            raise FileFormatError(f"{source}: no 'label' column in its meta group; these objects have no truth "
                                  f"labels (have {sorted(self.meta)})")
        return np.asarray(self.meta["label"]).astype(int)


def write_class_predictions(path: str, pred: ClassPredictions, provenance: dict | None = None) -> None:
    """Write ``pred`` to ``path`` atomically (temporary file, then rename)."""
    n = len(pred.logit)
    arrays = {"logit": pred.logit, "prob": pred.prob, "member_logits": pred.member_logits}
    if pred.member_logit_var is not None:
        arrays["member_logit_var"] = pred.member_logit_var
    arrays |= pred.columns
    for name, a in arrays.items():
        if np.shape(a)[-1] != n:
            raise ValueError(f"column {name!r} has {np.shape(a)[-1]} objects, logit has {n}")
    for name, a in pred.meta.items():
        if len(a) != n:
            raise ValueError(f"meta column {name!r} has {len(a)} rows, logit has {n}")
    tmp = f"{path}.partial"
    try:
        with h5py.File(tmp, "w") as fh:
            fh.attrs["kind"] = KIND
            for name, a in arrays.items():
                fh.create_dataset(name, data=np.asarray(a))
            g = fh.create_group("meta")
            for name, a in pred.meta.items():
                g.create_dataset(name, data=np.asarray(a))
            for k, v in pred.attrs.items():
                fh.attrs[k] = json.dumps(v)
            fh.attrs["provenance"] = json.dumps(provenance or {})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_class_predictions(path: str, meta_columns=None) -> ClassPredictions:
    """Read a predictions file; errors name the file and what is missing or malformed."""
    with open_hdf5(path, "class-predictions file") as fh:
        if fh.attrs.get("kind") != KIND:
            raise FileFormatError(f"{path}: not a calipers class-predictions file (kind={fh.attrs.get('kind')!r})")
        missing = [k for k in REQUIRED if k not in fh]
        if missing:
            raise FileFormatError(f"{path}: missing dataset(s) {missing}")
        logit = fh["logit"][:]
        bad = np.flatnonzero(~np.isfinite(logit))
        if bad.size:
            raise FileFormatError(f"{path}: column 'logit' is not finite at row {bad[0]} ({bad.size} rows)")
        cols = {k: fh[k][:] for k in fh if isinstance(fh[k], h5py.Dataset) and k not in REQUIRED + ("member_logit_var",)}
        var = fh["member_logit_var"][:] if "member_logit_var" in fh else None
        names = list(fh["meta"]) if "meta" in fh else []
        if meta_columns is not None:
            absent = [c for c in meta_columns if c not in names]
            if absent:
                raise FileFormatError(f"{path}: meta column(s) {absent} missing; have {names}")
            names = list(meta_columns)
        meta = {k: fh["meta"][k][:] for k in names}
        attrs = {k: json.loads(v) for k, v in fh.attrs.items() if k not in ("kind", "provenance")}
        return ClassPredictions(logit, fh["prob"][:], fh["member_logits"][:], var, cols, meta, attrs)
