"""Tomographic n(z) with uncertainty, angular power spectra and their covariances (arrays in/out).

- :mod:`~calipers.cosmology.tomography` - bin edges (given or equal-number) and the assignment of
  galaxies to bins by a point estimate or by the p(z) mass in each bin;
- :mod:`~calipers.cosmology.nz` - n(z) per bin as the stack of p(z), with realizations that carry
  its uncertainty (galaxy bootstrap; sampling each galaxy's p(z)), streaming over chunks;
- :mod:`~calipers.cosmology.cl` - pyccl angular power spectra for every tracer pair and every
  n(z) realization, and the Gaussian (Knox) covariance of a survey.
"""
from calipers.cosmology.cl import (SACC_DATA_TYPES, ClSpec, CosmologyParams, SurveySpec, angular_power_spectra,
                                   ell_bins, knox_covariance, make_cosmology, sacc_points, select_sacc_points,
                                   tracer_pairs)
from calipers.cosmology.nz import NZAccumulator, nz_mean_z, truth_nz
from calipers.cosmology.tomography import assign_by_mass, assign_by_point, equal_number_edges

__all__ = ["SACC_DATA_TYPES", "sacc_points", "select_sacc_points", "ClSpec", "CosmologyParams", "NZAccumulator", "SurveySpec", "angular_power_spectra", "assign_by_mass",
           "assign_by_point", "ell_bins", "equal_number_edges", "knox_covariance", "make_cosmology", "nz_mean_z",
           "tracer_pairs", "truth_nz"]
