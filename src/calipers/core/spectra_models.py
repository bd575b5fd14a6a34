"""Model directories of the log g regressors (issue 19): the CNN deep ensemble, ridge and LightGBM.

A directory holds ``metadata.json`` and ``weights.pt``, written and verified by
:func:`calipers.core.models.write_model_dir` / :func:`~calipers.core.models.read_model_dir`
(SHA-256 checksums of both; ``torch.load(weights_only=True)``, so opening a model never executes
code), and for LightGBM a third file:

- ``kind: cnn``: ``weights.pt`` = ``{"wavelength": (n_pix,) float64, "members": [state dict, ...]}``;
  ``params`` = ``{"net": SpectrumNetConfig.to_dict(), "train": SpectrumTrainConfig.to_dict()}``
  (``net.residual_on_linear`` tells the ``cnn_residual`` form apart), plus ``aux_labels``, the
  names of the ``net.n_aux`` auxiliary labels of a multi-task network (e.g. ``["teff", "m_h"]``).
- ``kind: ridge``: ``weights.pt`` = ``{"wavelength", "weights": (n_pix,), "intercept": ()}``, float64;
  ``params`` = :meth:`~calipers.spectra.baselines.RidgeLogg.state` (penalty, split, width coefficients).
- ``kind: lightgbm``: ``booster.txt``, the booster in LightGBM's own text format
  (``model_to_string``; parsed with ``lightgbm.Booster(model_str=...)``, never a pickle), whose
  SHA-256 is stored in the (checksummed) metadata under ``files``, so an edited booster is refused
  like an edited weight; ``weights.pt`` = ``{"wavelength"}``; ``params`` = :meth:`GBMLogg.state
  <calipers.spectra.baselines.GBMLogg.state>`.

The metadata also carries ``format``, ``format_version``, ``kind``, ``n_pix`` and
``wavelength_range`` (the pixel grid the model was trained on, so spectra on another grid are
refused with both grids named) and whatever the writer adds (a model card: training set,
members' seeds, histories and training times, provenance).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from calipers.core.errors import ModelFileError, ModelMismatchError
from calipers.core.models import read_model_dir, sha256, write_model_dir

log = logging.getLogger(__name__)

FORMAT = "calipers.spectra_model"
FORMAT_VERSION = 1
KINDS = ("cnn", "ridge", "lightgbm")
BOOSTER_NAME = "booster.txt"
RESERVED = ("format", "format_version", "kind", "n_pix", "wavelength_range", "files", "params")
WAVELENGTH_RTOL = 1e-7  # pixel centres of a set and of the model must agree to this (relative)

__all__ = ["BOOSTER_NAME", "FORMAT", "KINDS", "SpectraRegressor", "read_spectra_model", "write_spectra_model"]


@dataclass
class SpectraRegressor:
    """A loaded log g regressor: ``predict(flux, ivar) -> (means, sigmas)``, both [M, N] (M members;
    1 for ridge and LightGBM), each row a Gaussian for log g in dex.

    Attributes
    ----------
    kind : ``cnn``, ``ridge`` or ``lightgbm``.
    directory : where it was read from (named in errors).
    wavelength : (n_pix,) pixel centres (Angstrom) the model was trained on.
    meta : the whole metadata (``params``, the model card, ...).
    model : the member state dicts (cnn) or the fitted :class:`~calipers.spectra.baselines.RidgeLogg`
        / :class:`~calipers.spectra.baselines.GBMLogg`.
    """

    kind: str
    directory: str
    wavelength: np.ndarray
    meta: dict
    model: Any
    net: Any = field(default=None, repr=False)

    @property
    def n_pix(self) -> int:
        return int(self.wavelength.size)

    @property
    def n_members(self) -> int:
        return len(self.model) if self.kind == "cnn" else 1

    @property
    def aux_labels(self) -> list[str]:
        """Names of the auxiliary labels a multi-task CNN also predicts (empty otherwise)."""
        return list(self.meta["params"].get("aux_labels", [])) if self.kind == "cnn" else []

    def check_spectra(self, wavelength, source: str) -> None:
        """Refuse spectra on another pixel grid: a :class:`ModelMismatchError` naming ``source`` (the
        spectrum file), this model's directory and both grids."""
        lam = np.asarray(wavelength, dtype=np.float64)
        ours = f"{self.n_pix} pixels, {self.wavelength[0]:.2f}-{self.wavelength[-1]:.2f} A"
        if lam.shape != self.wavelength.shape:
            theirs = f"{lam.size} pixels" + (f", {lam[0]:.2f}-{lam[-1]:.2f} A" if lam.size else "")
            raise ModelMismatchError(f"{source}: the spectra have {theirs}; the model {self.directory} was trained "
                                     f"on {ours}. Apply a model trained on this set's pixel grid")
        if not np.allclose(lam, self.wavelength, rtol=WAVELENGTH_RTOL, atol=0.0):
            p = int(np.argmax(np.abs(lam - self.wavelength) / self.wavelength))
            raise ModelMismatchError(f"{source}: pixel {p} is at {lam[p]:.4f} A, but at {self.wavelength[p]:.4f} A "
                                     f"in the model {self.directory} ({ours}); the pixel grids differ")

    def predict(self, flux, ivar, device: str = "cpu", batch_size: int = 512, aux: bool = False):
        """Each member's Gaussian for log g of spectra ``flux``, ``ivar`` [N, n_pix]: ``(means,
        sigmas)``, float64 [M, N]; with ``aux=True`` also the members' mean of each auxiliary label
        (:attr:`aux_labels`), [N, n_aux] (n_aux = 0 for the models without)."""
        flux = np.asarray(flux)
        if flux.ndim != 2 or flux.shape[1] != self.n_pix:
            raise ModelMismatchError(f"spectra of shape {flux.shape}: the model {self.directory} expects "
                                     f"[N, {self.n_pix}]")
        if self.kind == "cnn":
            from calipers.spectra.model import predict_members

            means, sigmas, aux_means = predict_members(self.model, self.net, flux, ivar, device=device,
                                                       batch_size=batch_size, aux=True)
            return (means, sigmas, aux_means.mean(0)) if aux else (means, sigmas)
        mean, sigma = self.model.predict(flux, ivar)
        out = (np.asarray(mean, dtype=np.float64)[None, :], np.asarray(sigma, dtype=np.float64)[None, :])
        return out + (np.zeros((flux.shape[0], 0)),) if aux else out


# ============================================================================ writing
def _check_wavelength(wavelength) -> np.ndarray:
    lam = np.asarray(wavelength, dtype=np.float64)
    if lam.ndim != 1 or lam.size < 2 or not np.all(np.isfinite(lam)) or np.any(np.diff(lam) <= 0):
        raise ValueError(f"wavelength must be a finite, strictly increasing 1-d grid, got shape {lam.shape}")
    return lam


def _build(kind: str, params: dict, arrays: dict, booster_text: str | None, wavelength: np.ndarray,
           directory: str) -> SpectraRegressor:
    """The regressor from its parts; a ValueError/KeyError/TypeError/RuntimeError when they do not fit."""
    meta_stub = {"params": params}
    if kind == "cnn":
        from calipers.spectra.model import SpectrumNet, SpectrumNetConfig, SpectrumTrainConfig

        net = SpectrumNetConfig.from_dict(params["net"])
        SpectrumTrainConfig.from_dict(params["train"])
        aux = params.get("aux_labels", [])
        if not isinstance(aux, list) or len(aux) != net.n_aux or not all(isinstance(a, str) for a in aux):
            raise ValueError(f"'aux_labels' must name the network's {net.n_aux} auxiliary label(s), got {aux!r}")
        if net.n_pix != wavelength.size:
            raise ValueError(f"the network is built for {net.n_pix} pixels but the wavelength grid has "
                             f"{wavelength.size}")
        members = arrays["members"]
        if not isinstance(members, (list, tuple)) or not members:
            raise ValueError("'members' must be a non-empty list of state dicts")
        states = []
        for k, state in enumerate(members):
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ValueError(f"member {k} is not a state dict of tensors")
            SpectrumNet(net).load_state_dict(state)  # strict: every key and shape must match the config
            if not all(bool(torch.all(torch.isfinite(v))) for v in state.values() if v.is_floating_point()):
                raise ValueError(f"member {k} has non-finite weights")
            states.append(dict(state))
        return SpectraRegressor(kind, directory, wavelength, meta_stub, states, net)
    if kind == "ridge":
        from calipers.spectra.baselines import RidgeLogg

        model = RidgeLogg.from_state(params, {k: np.asarray(arrays[k]) for k in ("weights", "intercept")})
        if model.weights.size != wavelength.size:
            raise ValueError(f"the ridge weights have {model.weights.size} entries but the wavelength grid has "
                             f"{wavelength.size} pixels")
        return SpectraRegressor(kind, directory, wavelength, meta_stub, model)
    from calipers.spectra.baselines import GBMLogg

    n_jobs = max(1, torch.get_num_threads())
    model = GBMLogg.from_state(params, booster_text, n_jobs=n_jobs)
    n_features = wavelength.size // model.rebin
    if model.booster.num_feature() != n_features:
        raise ValueError(f"the booster uses {model.booster.num_feature()} features; {wavelength.size} pixels rebinned "
                         f"by {model.rebin} give {n_features}")
    return SpectraRegressor(kind, directory, wavelength, meta_stub, model)


def write_spectra_model(directory: str, kind: str, meta: dict, states, wavelength) -> None:
    """Write a log g regressor to ``directory`` (see the module docstring for the layout).

    Parameters
    ----------
    kind : ``cnn``, ``ridge`` or ``lightgbm``.
    meta : JSON-able metadata; ``meta["params"]`` describes the model (cnn: ``{"net": ..., "train":
        ...}``; ridge / lightgbm: the first item of their ``state()``); everything else (a model
        card, provenance) is stored as given. The keys ``format``, ``format_version``, ``kind``,
        ``n_pix``, ``wavelength_range`` and ``files`` are set here.
    states : cnn: the members' state dicts (a list); ridge: ``{"weights", "intercept"}`` arrays;
        lightgbm: the booster text (``model_to_string()``).
    wavelength : (n_pix,) pixel centres (Angstrom) of the training spectra.

    The parts are checked by building the model from them before anything is written.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    taken = sorted(k for k in meta if k in RESERVED and k != "params")
    if taken:
        raise ValueError(f"model metadata may not set the reserved key(s) {taken}")
    if "params" not in meta or not isinstance(meta["params"], dict):
        raise ValueError("model metadata needs 'params' (a dict describing the model)")
    lam = _check_wavelength(wavelength)
    params = meta["params"]
    booster_text = None
    if kind == "cnn":
        arrays = {"members": [{k: v.detach().cpu().clone() for k, v in s.items()} for s in states]}
    elif kind == "ridge":
        arrays = {k: torch.as_tensor(np.asarray(states[k], dtype=np.float64)) for k in ("weights", "intercept")}
    else:
        if not isinstance(states, str):
            raise TypeError(f"a lightgbm model is stored as the booster's text (model_to_string()), got "
                            f"{type(states).__name__}")
        booster_text, arrays = states, {}
    _build(kind, params, arrays, booster_text, lam, directory)
    full = dict(meta) | {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "n_pix": int(lam.size),
                         "wavelength_range": [float(lam[0]), float(lam[-1])]}
    os.makedirs(directory, exist_ok=True)
    if booster_text is not None:
        data = booster_text.encode("utf-8")
        full["files"] = {BOOSTER_NAME: sha256(data)}
        with open(os.path.join(directory, BOOSTER_NAME), "wb") as fh:
            fh.write(data)
    write_model_dir(directory, full, arrays | {"wavelength": torch.as_tensor(lam)})
    log.info("wrote %s model %s (%d pixels)", kind, directory, lam.size)


# ============================================================================ reading
def read_spectra_model(directory: str) -> SpectraRegressor:
    """Load a regressor written by :func:`write_spectra_model`, without executing code, after
    verifying the checksums of every file (:class:`ModelFileError` naming the file when one was
    modified, is missing or is unusable)."""
    meta, arrays = read_model_dir(directory, what="calipers log g model")
    where = os.path.join(directory, "metadata.json")
    if meta.get("format") != FORMAT or meta.get("kind") not in KINDS:
        raise ModelFileError(f"{where}: not a calipers log g model (format {meta.get('format')!r}, kind "
                             f"{meta.get('kind')!r}; expected format {FORMAT!r} and a kind in {KINDS})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{where}: format_version {meta.get('format_version')!r}; this calipers reads "
                             f"{FORMAT_VERSION}")
    kind = meta["kind"]
    if not isinstance(arrays, dict) or not isinstance(arrays.get("wavelength"), torch.Tensor):
        raise ModelFileError(f"{os.path.join(directory, 'weights.pt')}: no 'wavelength' tensor")
    lam = arrays["wavelength"].numpy().astype(np.float64)
    booster_text = None
    if kind == "lightgbm":
        path = os.path.join(directory, BOOSTER_NAME)
        if not os.path.exists(path):
            raise ModelFileError(f"{path}: missing; a lightgbm model directory needs its booster text")
        with open(path, "rb") as fh:
            data = fh.read()
        want = (meta.get("files") or {}).get(BOOSTER_NAME)
        if want != sha256(data):
            raise ModelFileError(f"{path}: the booster was modified after it was written, or is corrupt (its SHA-256 "
                                 "does not match the one in metadata.json); restore the original file or retrain")
        booster_text = data.decode("utf-8")
    try:
        lam = _check_wavelength(lam)
        if meta.get("n_pix") != lam.size:
            raise ValueError(f"n_pix = {meta.get('n_pix')!r} but the wavelength grid has {lam.size} pixels")
        model = _build(kind, meta["params"], arrays, booster_text, lam, directory)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise ModelFileError(f"{directory}: not a usable {kind} log g model ({type(err).__name__}: {err})") from err
    model.meta = meta
    return model
