"""Stellar spectra: surface gravity from low-resolution spectra (arrays in, arrays out).

Modules
-------
simulate
    A differentiable (torch) model of Subaru PFS red-arm spectra (7100-8850 A, R ~ 5000) of
    FGK/early-M stars as a function of (Teff, log g, [M/H]): Planck continuum, a single-layer LTE
    photosphere in hydrostatic equilibrium with Saha/Boltzmann populations, Voigt lines with
    van der Waals and Stark damping, TiO bands, a seeded weak-line forest; heteroscedastic
    source + sky noise at a set S/N, seeded and deterministic in blocks.
fisher
    The information ceiling of a spectral regression of log g: Jacobians by forward-mode
    autograd, per-star Fisher matrices (optionally with continuum scale and tilt nuisances),
    the marginal Cramer-Rao bound, its prior-aware (Bayesian) form, and R^2_max per S/N.

The family's regression models and baselines live in their own modules (see their docstrings).

Nothing is imported here, so ``import calipers.spectra`` stays light; import the module you
need, e.g. ``from calipers.spectra.simulate import SpectrumModel``.
"""
