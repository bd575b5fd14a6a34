"""Lens-finder model directories and their ONNX export.

A lens model directory holds ``metadata.json`` (architecture, training settings, seeds, each
member's history) and ``weights.pt`` (one state dict per member), written and checked by
:func:`calipers.core.models.write_model_dir` / :func:`~calipers.core.models.read_model_dir`: it
loads with ``torch.load(weights_only=True)``, never executing code. ``export_member_onnx``
writes one member as an ONNX graph (the deterministic logit of one view, without dropout) for
deployment outside Python/torch.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from calipers.core.errors import ModelFileError
from calipers.core.models import read_model_dir, write_model_dir
from calipers.lens.model import LensEnsemble

log = logging.getLogger(__name__)


def write_lens_model(directory: str, ensemble: LensEnsemble, extra: dict | None = None) -> None:
    """Write ``ensemble`` (plus JSON-able ``extra`` metadata, e.g. provenance) to ``directory``."""
    write_model_dir(directory, ensemble.metadata() | (extra or {}), ensemble.state_dicts())


def read_lens_model(directory: str) -> tuple[LensEnsemble, dict]:
    """(ensemble, metadata) of a lens model directory; errors name the directory."""
    meta, states = read_model_dir(directory, what="calipers lens model")
    try:
        return LensEnsemble.from_parts(meta, states), meta
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise ModelFileError(f"{directory}: not a usable calipers lens model: {err}") from err


def export_member_onnx(ensemble: LensEnsemble, member: int, path: str, opset: int = 17,
                       check: bool = True) -> dict:
    """Export member ``member`` (deterministic logit, one view) to ONNX at ``path``, atomically.

    With ``check`` and onnxruntime installed, the exported graph is run on a random batch and
    compared with torch; the largest absolute logit difference is returned.
    """
    if not 0 <= member < ensemble.n_members:
        raise ValueError(f"member must be in [0, {ensemble.n_members}), got {member}")
    model = ensemble.member(member, "cpu")
    cnn = ensemble.cnn
    x = torch.randn(2, cnn.n_bands, cnn.n_pix, cnn.n_pix, generator=torch.Generator().manual_seed(0))
    args = (x,)
    names = ["image"]
    if cnn.meta_columns:
        args = (x, torch.zeros(2, len(cnn.meta_columns)))
        names.append("meta")
    tmp = f"{path}.partial"
    dynamic = {n: {0: "batch"} for n in names} | {"logit": {0: "batch"}}
    torch.onnx.export(model, args, tmp, input_names=names, output_names=["logit"], opset_version=opset,
                      dynamic_axes=dynamic, dynamo=False)
    os.replace(tmp, path)
    info = {"path": path, "member": member, "opset": opset, "inputs": names}
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            log.info("onnxruntime not installed: the ONNX export of member %d is not checked", member)
            return info
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {n: a.numpy() for n, a in zip(names, args)}
        got = sess.run(None, feed)[0]
        with torch.inference_mode():
            want = model(*args).numpy()
        info["max_abs_diff"] = float(np.max(np.abs(got - want)))
    return info
