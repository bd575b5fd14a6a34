"""Exoplanet transmission spectra (issue 20): an Ariel-like simulator from planet to light curves
(:mod:`~calipers.transit.simulate`), per-bin transit-depth extraction (:mod:`~calipers.transit.extract`),
a network that outputs a mean and a sigma per wavelength bin trained on the Gaussian likelihood plus
physics losses (:mod:`~calipers.transit.model`), the challenge's score (:mod:`~calipers.transit.score`)
and an auditor of physical constraints (:mod:`~calipers.transit.audit`). Arrays in, arrays out."""
