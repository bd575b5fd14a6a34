"""Strong-lens finding (arrays in, arrays out).

Modules
-------
simulate
    Seeded, block-deterministic g, r, i cutouts of galaxy-galaxy lenses and of the non-lenses that
    look like them (ellipticals, spirals, mergers with tidal tails, ring galaxies, edge-on dusty
    disks, satellite streaks and ghosts), with an inverse-variance map and the truth per image.
model
    The CNN lens-finder ensemble: training, scoring, fusion of members.

Nothing is imported here, so ``import calipers.lens`` stays light (no torch, no lenstronomy);
import the module you need, e.g. ``from calipers.lens.simulate import simulate_cutouts``.
"""
