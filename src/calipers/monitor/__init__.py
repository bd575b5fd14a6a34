"""Drift monitoring for deployed models (issue 22): arrays in, arrays out, state as plain dicts.

A survey pipeline runs its models on nightly batches. These monitors compare each batch with a
reference and carry what they need from one batch to the next in a small JSON-serialisable state,
so a nightly job can stop and resume without changing a single alarm:

- :mod:`~calipers.monitor.covariate`: per-batch two-sample tests of the inputs against a reference
  sample (kernel MMD with a permutation p-value; per-feature KS with a Bonferroni correction), and
  of the predictions themselves when no labels exist (point estimates and widths);
- :mod:`~calipers.monitor.calibration`: the PIT of each labelled batch (from p(z), Gaussian
  z-scores or class probabilities) reduced to a standardised mean and dispersion with their exact
  moments under a uniform PIT;
- :mod:`~calipers.monitor.sequential`: CUSUM and Page-Hinkley detectors over those per-batch
  statistics, with thresholds set from a target average run length;
- :mod:`~calipers.monitor.martingale`: a conformal test martingale over the objects of the whole
  stream, whose probability of ever raising a false alarm is at most ``1 / threshold`` (Ville's
  inequality).
"""
