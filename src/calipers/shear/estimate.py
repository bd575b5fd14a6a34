"""Per-object shear estimates with their metacal responses (issue 21).

The estimator is the network applied to metacal images: :func:`metacal_inputs` turns stamps into the
``noshear`` image (deconvolved, reconvolved by the round Gaussian, with the fixnoise field) or one of
the four sheared ones, and :func:`estimate_with_response` returns, per object, the network's
Gaussian on the ``noshear`` image and the 2x2 response from the sheared ones. Training uses the same
``noshear`` images, so the network never sees an image kind it is not applied to.

The fixnoise field of a galaxy is drawn from ``(seed, 2, noise_key)``: ring partners under ``+g``
and ``-g`` share it as they share their pixel noise.
"""
from __future__ import annotations

import numpy as np

from .metacal import TYPES, MetacalOperators, response_matrix
from .model import network_inputs, predict


def fixnoise_fields(noise_sigma, noise_keys, shape, seed: int) -> np.ndarray:
    """White fields of each object's sigma, ``[n, *shape]`` float32, one generator per key."""
    out = np.empty((len(noise_keys), *shape), np.float32)
    for i, (s, k) in enumerate(zip(np.asarray(noise_sigma), np.asarray(noise_keys))):
        out[i] = s * np.random.default_rng([int(seed), 2, int(k)]).normal(size=shape)
    return out


def metacal_inputs(images, noise_sigma, noise_keys, operators: dict, psf_index, kind: str, seed: int,
                   fixnoise: bool = True, noise: np.ndarray | None = None) -> np.ndarray:
    """Network inputs ``[n, 2, N, N]`` of the metacal ``kind`` of each stamp, with the operators of
    its PSF (``operators[psf_index]``) and that PSF's reconvolution image as the PSF channel. The
    fixnoise fields are drawn here unless given (``noise``, as :func:`fixnoise_fields` draws them)."""
    images = np.asarray(images, dtype=np.float32)
    noise_sigma = np.asarray(noise_sigma, dtype=np.float64)
    psf_index = np.asarray(psf_index)
    out = np.empty((len(images), 2, *images.shape[1:]), np.float32)
    for p in np.unique(psf_index):
        if int(p) not in operators:
            raise ValueError(f"metacal: no operators for PSF index {int(p)} (have {sorted(operators)})")
        sel = np.flatnonzero(psf_index == p)
        ops: MetacalOperators = operators[int(p)]
        if not fixnoise:
            fields = None
        elif noise is not None:
            fields = noise[sel]
        else:
            fields = fixnoise_fields(noise_sigma[sel], np.asarray(noise_keys)[sel], images.shape[1:], seed)
        mc = ops.apply(images[sel], kind, noise=fields)
        out[sel] = network_inputs(mc, noise_sigma[sel], ops.reconv_psf_image)
    return out


def estimate_with_response(model, images, noise_sigma, noise_keys, operators: dict, psf_index, seed: int,
                           device: str = "cpu", batch_size: int = 1024) -> dict:
    """``eps[n, 2]`` and ``cov[n, 2, 2]`` on the ``noshear`` images and ``response[n, 2, 2]``."""
    res = {}
    noise = fixnoise_fields(noise_sigma, noise_keys, np.shape(images)[1:], seed)  # one draw for all five kinds
    for kind in TYPES:
        x = metacal_inputs(images, noise_sigma, noise_keys, operators, psf_index, kind, seed, noise=noise)
        res[kind] = predict(model, x, device=device, batch_size=batch_size)
    step = next(iter(operators.values())).step
    response = response_matrix({k: res[k][0] for k in ("1p", "1m", "2p", "2m")} | {"step": step})
    return {"eps": res["noshear"][0], "cov": res["noshear"][1], "response": response}
