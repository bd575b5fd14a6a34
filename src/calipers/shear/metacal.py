"""Metacalibration (Huff & Mandelbaum 2017; Sheldon & Huff 2017): the response of any shear estimator
to a shear applied to the observed image.

Each image is deconvolved by its PSF, sheared by ``+-step`` along each component and reconvolved by
a round Gaussian a little wider than the PSF (dilated by ``1 + 2 step``, so that the deconvolution's
noise stays bounded), with GalSim in :func:`metacal_galsim` (an ``InterpolatedImage`` with a
Lanczos-15 interpolant, ``Deconvolve``, ``shear``, ``Convolve`` with the Gaussian, drawn with the
pixel), as ngmix's Gaussian-reconvolution metacal does. The
response is ``R_ij = (g_i(+step_j) - g_i(-step_j)) / (2 step)``, and the estimator applied to the
``noshear`` image (reconvolved without shear) divided by the mean response is the calibrated shear.

For a fixed PSF and stamp, that whole operation is linear in the pixel values, so
:class:`MetacalOperators` applies GalSim to each pixel of the stamp once and keeps the five
``(N^2, N^2)`` matrices: metacalibrating a million stamps is then a matrix product (tested against
GalSim image by image). The correlated noise that deconvolution and shearing leave is cancelled as in
ngmix's ``fixnoise``: a noise field of the image's sigma, rotated by 90 degrees, metacalibrated and
rotated back, is added to each image (its noise variance doubles, isotropically).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

STEP = 0.01
TYPES = ("noshear", "1p", "1m", "2p", "2m")
SHEARS = {"noshear": (0.0, 0.0), "1p": (1.0, 0.0), "1m": (-1.0, 0.0), "2p": (0.0, 1.0), "2m": (0.0, -1.0)}


def _interpolant():
    import galsim

    return galsim.Lanczos(15)


def _interp(image: np.ndarray, pixel_scale: float):
    import galsim

    return galsim.InterpolatedImage(galsim.Image(np.asarray(image, dtype=np.float64), scale=pixel_scale),
                                    x_interpolant=_interpolant(), calculate_stepk=False, calculate_maxk=False,
                                    pad_factor=4, normalization="flux")


def reconvolution_psf(psf_image: np.ndarray, pixel_scale: float, step: float = STEP):
    """The round Gaussian every metacal image is reconvolved with (before the pixel), as in ngmix and
    GalSim's metacal tests: where the PSF's (pixel-free) Fourier amplitude first falls below 0.01,
    the Gaussian is at 0.003, so it dominates the deconvolved, sheared PSF at every frequency; then
    dilated by ``1 + 2 step``. (Reconvolving with the dilated interpolated PSF instead leaves its
    sampled replicas in the images: a 0.3% error in the response to g2, measured in the tests.)"""
    import galsim

    psf = galsim.Convolve(_interp(psf_image, pixel_scale), galsim.Deconvolve(galsim.Pixel(pixel_scale)))
    dk = psf.stepk / 4.0
    kim = psf.drawKImage(scale=dk).real.array
    n_k = kim.shape[0]
    kx, ky = np.meshgrid(np.arange(-n_k / 2, n_k / 2), np.arange(-n_k / 2, n_k / 2))
    ksq = (kx ** 2 + ky ** 2) * dk ** 2
    low = kim < 1e-2 * kim.max()
    if not low.any():
        raise ValueError("metacal: the PSF's Fourier amplitude never falls below 1% on its k grid: is it a PSF image?")
    sigma = np.sqrt(-2.0 * np.log(3e-3) / ksq[low].min())
    return galsim.Gaussian(sigma=sigma * (1.0 + 2.0 * step))


def metacal_galsim(image: np.ndarray, psf_image: np.ndarray, pixel_scale: float, kind: str,
                   step: float = STEP, reconv=None) -> np.ndarray:
    """One metacal image with GalSim directly (the reference :class:`MetacalOperators` reproduces):
    deconvolve by the interpolated PSF image, shear, convolve with :func:`reconvolution_psf` and draw
    with the pixel."""
    import galsim

    if kind not in SHEARS:
        raise ValueError(f"metacal: unknown kind {kind!r}; known: {list(SHEARS)}")
    s1, s2 = SHEARS[kind]
    n_y, n_x = np.shape(image)
    obj = galsim.Convolve(_interp(image, pixel_scale), galsim.Deconvolve(_interp(psf_image, pixel_scale)))
    if s1 or s2:
        obj = obj.shear(g1=s1 * step, g2=s2 * step)
    reconv = reconvolution_psf(psf_image, pixel_scale, step) if reconv is None else reconv
    obj = galsim.Convolve(obj, reconv)
    return obj.drawImage(nx=n_x, ny=n_y, scale=pixel_scale, dtype=np.float64).array


@dataclass
class MetacalOperators:
    """The five metacal maps of one PSF and stamp geometry as matrices acting on flattened stamps
    (``out = image.reshape(-1) @ ops[kind].T``), with the reconvolution PSF's image."""

    pixel_scale: float
    step: float
    ops: dict
    psf_image: np.ndarray
    reconv_psf_image: np.ndarray

    @classmethod
    def build(cls, psf_image: np.ndarray, pixel_scale: float, step: float = STEP,
              progress: bool = False) -> MetacalOperators:
        """GalSim applied to each of the stamp's pixels (``5 N^2`` GalSim calls: about 15 ms each)."""
        from tqdm.auto import tqdm

        psf_image = np.asarray(psf_image, dtype=np.float64)
        n_y, n_x = psf_image.shape
        if n_y != n_x or n_y % 2 == 0:
            raise ValueError(f"MetacalOperators: the PSF stamp must be square with an odd size, got {psf_image.shape}")
        size = n_y * n_x
        ops = {k: np.empty((size, size), np.float64) for k in TYPES}
        basis = np.zeros((n_y, n_x))
        gauss = reconvolution_psf(psf_image, pixel_scale, step)
        for j in tqdm(range(size), desc="metacal operators", disable=not progress, leave=False):
            basis.flat[j] = 1.0
            for k in TYPES:
                ops[k][:, j] = metacal_galsim(basis, psf_image, pixel_scale, k, step, reconv=gauss).reshape(-1)
            basis.flat[j] = 0.0
        reconv = gauss.drawImage(nx=n_x, ny=n_y, scale=pixel_scale, dtype=np.float64).array
        return cls(float(pixel_scale), float(step), {k: v.astype(np.float32) for k, v in ops.items()},
                   psf_image, reconv / reconv.sum())

    @property
    def stamp_size(self) -> int:
        return int(self.psf_image.shape[0])

    def apply(self, images: np.ndarray, kind: str, noise: np.ndarray | None = None) -> np.ndarray:
        """The metacal ``kind`` of ``images[n, N, N]``; with ``noise[n, N, N]`` (a white field of each
        image's sigma), the fixnoise term ``rot(-90) M rot(90) noise`` is added."""
        if kind not in self.ops:
            raise ValueError(f"metacal: unknown kind {kind!r}; known: {list(self.ops)}")
        images = np.asarray(images, dtype=np.float32)
        n_pix = self.stamp_size
        if images.ndim != 3 or images.shape[1:] != (n_pix, n_pix):
            raise ValueError(f"metacal: stamps must be [n, {n_pix}, {n_pix}] for these operators, got {images.shape}")
        op = self.ops[kind]
        out = (images.reshape(len(images), -1) @ op.T).reshape(images.shape)
        if noise is not None:
            rotated = np.rot90(np.asarray(noise, dtype=np.float32), 1, axes=(1, 2))
            fixed = (np.ascontiguousarray(rotated).reshape(len(images), -1) @ op.T).reshape(images.shape)
            out = out + np.rot90(fixed, -1, axes=(1, 2))
        return out


def response_matrix(estimates: dict) -> np.ndarray:
    """Per object the 2x2 response ``R[n, i, j] = (g_i(+j) - g_i(-j)) / (2 step)`` from the
    estimator's outputs ``g[n, 2]`` on the four sheared images, keyed ``1p, 1m, 2p, 2m``, and the
    metacal ``step`` under the key ``step``."""
    step = float(estimates["step"])
    r = np.empty((len(estimates["1p"]), 2, 2))
    r[:, :, 0] = (np.asarray(estimates["1p"]) - np.asarray(estimates["1m"])) / (2 * step)
    r[:, :, 1] = (np.asarray(estimates["2p"]) - np.asarray(estimates["2m"])) / (2 * step)
    return r
