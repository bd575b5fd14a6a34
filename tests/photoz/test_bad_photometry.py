"""Unusual photometry: non-detections in bands that had none in training, missing errors, the
redshift range, band dropout, the flag scaling, and models saved before these guards."""
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

from calipers.core.models import load_model, save_model
from calipers.photoz import DeepEnsemble, EnsembleConfig, MixtureDensityNetwork, PhotometryPreprocessor
from calipers.photoz.ensemble import drop_bands
from calipers.photoz.mixture import mixture_point_estimates
from calipers.photoz.mdn import MIN_FEATURE_SCALE
from conftest import BANDS, TINY_ENSEMBLE, mags_errs, random_rows, subset

N_TRAIN, N_TEST = 400, 40


@pytest.fixture(scope="module")
def dc2_split(dc2):
    """A small random DC2 sample (no r, i, z, y non-detections, like the full file) and test rows."""
    train_rows = random_rows(len(dc2["redshift"]), N_TRAIN, seed=1)
    test_rows = random_rows(len(dc2["redshift"]), N_TEST, seed=2, exclude=train_rows)
    return subset(dc2, train_rows), subset(dc2, test_rows)


@pytest.fixture(scope="module")
def dc2_model(dc2_split) -> DeepEnsemble:
    train, _ = dc2_split
    mags, errs = mags_errs(train)
    for band in "rizy":
        assert np.all(np.isfinite(mags[:, BANDS.index(band)]) & (np.abs(mags[:, BANDS.index(band)]) < 90))
    cfg = EnsembleConfig(**TINY_ENSEMBLE)
    return DeepEnsemble(cfg).fit(mags, errs, train["redshift"], BANDS, progress=False)


def unbounded(ens: DeepEnsemble) -> DeepEnsemble:
    """The same ensemble with its means not clamped (to look at what the network itself says)."""
    raw = copy.copy(ens)
    raw.z_range = None
    return raw


# ---------------------------------------------------------------------------- non-detections
@pytest.mark.parametrize("band", ["r", "i", "z", "y"])
@pytest.mark.parametrize("value", [np.nan, np.inf, 99.0, -99.0], ids=["nan", "inf", "99", "-99"])
def test_nondetection_in_a_band_never_nondetected_in_training(dc2_model, dc2_split, band, value):
    """The review's case: redshifts in the thousands (or negative) from a flag scaled by 1e-6."""
    _, test = dc2_split
    mags, errs = mags_errs(test)
    mags[:, BANDS.index(band)] = value
    lo, hi = dc2_model.z_range
    w, mu, s = dc2_model.predict(mags, errs)
    for a in (w, mu, s):
        assert np.all(np.isfinite(a))
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    assert mu.min() >= lo and mu.max() <= hi
    est = mixture_point_estimates(w, mu, s)
    for key, v in est.items():
        assert np.all(np.isfinite(v)), key
    assert est["zmode"].min() >= lo - 1e-6 and est["zmode"].max() <= hi + 1e-6
    # and not only because of the clamp: the network's own means stay near the training range
    # (with the old 1e-6 flag scaling they were of order 1e3-1e5)
    _, raw_mu, _ = unbounded(dc2_model).predict(mags, errs)
    assert raw_mu.min() > lo - 1.0 and raw_mu.max() < hi + 1.0


def test_flag_features_are_not_standardised(dc2_model):
    n = len(BANDS)
    for net in dc2_model.members:
        np.testing.assert_array_equal(net.feature_mean[-n:].numpy(), 0.0)
        np.testing.assert_array_equal(net.feature_std[-n:].numpy(), 1.0)
        assert float(net.feature_std.min()) >= MIN_FEATURE_SCALE


def test_set_scaling_never_amplifies():
    """Flags pass unchanged whatever their training frequency; a constant feature gets scale 1;
    the others are standardised."""
    rng = np.random.default_rng(0)
    mags = torch.as_tensor(rng.normal(24, 1, (200, 3)), dtype=torch.float32)
    mags[:, 2] = 25.0  # a constant band: its magnitude is constant
    errs = torch.full((200, 3), 0.05)  # constant errors
    flags = torch.zeros((200, 3))
    flags[:7, 0] = 1.0  # a rare non-detection
    net = MixtureDensityNetwork(3, colours="adjacent")
    net.set_scaling(mags, errs, flags)
    mean, std = net.feature_mean.numpy(), net.feature_std.numpy()
    # features: 3 magnitudes, 2 adjacent colours, 3 log errors, 3 flags
    np.testing.assert_array_equal(mean[-3:], 0.0)
    np.testing.assert_array_equal(std[-3:], 1.0)
    np.testing.assert_array_equal(std[5:8], 1.0)  # constant log errors
    assert std[2] == 1.0 and mean[2] == pytest.approx(25.0)  # constant magnitude: centred, not scaled
    np.testing.assert_allclose(std[0], mags[:, 0].std().item(), rtol=1e-5)


# ---------------------------------------------------------------------------- missing errors
@pytest.mark.parametrize("bad_err", [np.nan, 0.0, -0.1, np.inf])
def test_missing_error_on_a_detected_magnitude(dc2_model, dc2_split, bad_err):
    _, test = dc2_split
    mags, errs = mags_errs(test)
    j = BANDS.index("i")
    errs[:5, j] = bad_err
    prep = dc2_model.preprocessor
    m, e, f = prep.transform(mags, errs)
    assert np.all(np.isfinite(e)) and np.all(e > 0)
    assert np.all(f[:5, j] == 0) and np.all(m[:5, j] == mags[:5, j])  # still a detection
    typical = prep.typical_errors(mags)[:5, j]
    np.testing.assert_allclose(e[:5, j], typical, rtol=1e-6)
    # the same p(z) as when the typical error is given explicitly
    given = errs.copy()
    given[:5, j] = typical
    for a, b in zip(dc2_model.predict(mags, errs), dc2_model.predict(mags, given)):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert prep.count_missing_errors(mags, errs) == {b: 5 if b == "i" else 0 for b in BANDS}
    nd = prep.count_nondetections(mags, errs)  # a missing error is not a non-detection
    assert nd["i"] == 0 and nd == prep.count_nondetections(*mags_errs(test))


def test_typical_error_follows_the_magnitude(dc2_model, dc2_split):
    """The replacement error is the typical error at that magnitude: faint galaxies get larger
    errors than bright ones, close to the training errors of similar galaxies."""
    train, _ = dc2_split
    mags, errs = mags_errs(train)
    j = BANDS.index("i")
    prep = dc2_model.preprocessor
    bright, faint = np.percentile(mags[:, j], [5, 95])
    probe = np.tile(np.median(mags, axis=0), (2, 1))
    probe[:, j] = [bright, faint]
    typical = prep.typical_errors(probe)[:, j]
    assert typical[1] > 2 * typical[0]
    near = np.abs(mags[:, j] - faint) < 0.2
    assert near.sum() > 5
    assert np.min(errs[near, j]) <= typical[1] <= np.max(errs[near, j])


def test_nondetection_counts():
    prep = PhotometryPreprocessor(["a", "b", "c"]).fit(np.full((4, 3), 24.0) + np.arange(4)[:, None],
                                                         np.full((4, 3), 0.1))
    mags = np.array([[np.nan, 24.0, 99.0], [np.inf, -99.0, 24.0], [24.0, 24.0, 95.0], [24.0, 24.0, 24.0]])
    errs = np.array([[0.1, np.nan, 0.1], [0.1, 0.1, 0.0], [0.1, -1.0, np.nan], [0.1, 0.1, 0.1]])
    assert prep.count_nondetections(mags, errs) == {"a": 2, "b": 1, "c": 2}
    # a missing error on a non-detection is not counted again
    assert prep.count_missing_errors(mags, errs) == {"a": 0, "b": 2, "c": 1}


# ---------------------------------------------------------------------------- redshift range
def test_redshift_range_is_the_training_range(dc2_model, dc2_split, tmp_path):
    train, _ = dc2_split
    z = np.asarray(train["redshift"])
    assert dc2_model.z_range == (float(z.min()), float(z.max()))
    assert all(net.z_range == dc2_model.z_range for net in dc2_model.members)
    save_model(str(tmp_path / "m"), dc2_model)
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.z_range == dc2_model.z_range
    assert json.loads((tmp_path / "m" / "metadata.json").read_text())["z_range"] == list(dc2_model.z_range)


def test_configured_redshift_range(dc2_split):
    train, test = dc2_split
    mags, errs = mags_errs(train)
    z = np.asarray(train["redshift"])
    cfg = EnsembleConfig(**{**TINY_ENSEMBLE, "zmin": 0.0, "zmax": 3.5})
    ens = DeepEnsemble(cfg).fit(mags, errs, z, BANDS, progress=False)
    assert ens.z_range == (0.0, 3.5)
    _, mu, _ = ens.predict(*mags_errs(test))
    assert mu.min() >= 0.0 and mu.max() <= 3.5
    # training redshifts outside a configured range are an error naming the first row
    zz = z.copy()
    zz[3] = 4.0
    with pytest.raises(ValueError, match=r"outside the configured range \[0.0, 3.5\].*row 3"):
        DeepEnsemble(cfg).fit(mags, errs, zz, BANDS, progress=False)


@pytest.mark.parametrize("bad", [{"zmin": 1.0, "zmax": 1.0}, {"band_dropout": -0.1}, {"band_dropout": 0.6},
                                 {"band_dropout": float("nan")}, {"n_members": 2.5}, {"activation": "swish"}])
def test_config_rejects(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        EnsembleConfig(**{**TINY_ENSEMBLE, **bad}).validate()


# ---------------------------------------------------------------------------- band dropout
def test_drop_bands_replaces_detected_magnitudes_by_the_nondetection_treatment():
    n, nb = 5000, 4
    gen = torch.Generator().manual_seed(0)
    mags = torch.full((n, nb), 23.0)
    errs = torch.full((n, nb), 0.05)
    flags = torch.zeros((n, nb))
    flags[:100, 1] = 1.0  # already non-detected: left alone
    mags[:100, 1] = 26.0
    errs[:100, 1] = 1.0
    fill = torch.tensor([27.0, 26.0, 25.5, 25.0])
    m, e, f = drop_bands(mags, errs, flags, 0.25, fill, 1.0, gen)
    dropped = (f == 1) & (flags == 0)
    assert 0.23 < dropped.float().mean().item() < 0.27
    assert torch.all(f[:100, 1] == 1) and torch.all(m[:100, 1] == 26.0)
    assert torch.equal(m[dropped], fill.expand(n, nb)[dropped]) and torch.all(e[dropped] == 1.0)
    kept = f == 0
    assert torch.all(m[kept] == 23.0) and torch.all(e[kept] == 0.05)
    # every band is dropped somewhere; p = 1 drops every detection; same seed, same draws
    assert torch.all(dropped.any(0))
    m1, e1, f1 = drop_bands(mags, errs, flags, 1.0, fill, 1.0, torch.Generator().manual_seed(0))
    assert torch.all(f1 == 1) and torch.equal(m1[100:], fill.expand(n - 100, nb))
    again = drop_bands(mags, errs, flags, 0.25, fill, 1.0, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((m, e, f), again))


def test_band_dropout_changes_training_and_zero_disables_it(dc2_split):
    train, test = dc2_split
    mags, errs = mags_errs(train)
    x = mags_errs(test)

    def fit(p):
        cfg = EnsembleConfig(**{**TINY_ENSEMBLE, "n_members": 1, "band_dropout": p})
        return DeepEnsemble(cfg).fit(mags, errs, train["redshift"], BANDS, progress=False)

    assert EnsembleConfig().band_dropout > 0  # on by default
    a, b, c = fit(0.0), fit(0.0), fit(0.2)
    np.testing.assert_array_equal(a.predict(*x)[1], b.predict(*x)[1])
    assert not np.allclose(a.predict(*x)[1], c.predict(*x)[1])


# ---------------------------------------------------------------------------- legacy models
def make_legacy(directory, ens: DeepEnsemble) -> None:
    """Rewrite a saved model as the previous format wrote it: format /1, no redshift range, no
    band_dropout/zmin/zmax, no error curves, flags scaled by the 1e-6 floor, no checksums."""
    meta = json.loads((directory / "metadata.json").read_text())
    del meta["checksums"], meta["z_range"]
    meta["format"] = "calipers.photoz.DeepEnsemble/1"
    for key in ("band_dropout", "zmin", "zmax"):
        del meta["config"][key]
    for key in ("n_error_bins", "error_curve_mags", "error_curve_errs"):
        del meta["preprocessor"][key]
    (directory / "metadata.json").write_text(json.dumps(meta))
    states = torch.load(directory / "weights.pt", weights_only=True)
    for state in states.values():
        state["feature_std"][-len(ens.bands):] = 1e-6
    torch.save(states, directory / "weights.pt")


def test_legacy_model_loads_with_a_warning_and_sane_flag_scaling(dc2_model, dc2_split, tmp_path, caplog):
    _, test = dc2_split
    d = tmp_path / "legacy"
    save_model(str(d), dc2_model)
    make_legacy(d, dc2_model)
    with caplog.at_level(logging.WARNING):
        old = load_model(str(d))
    assert "without checksums" in caplog.text and "retrain" in caplog.text
    assert old.z_range is None and old.config.band_dropout == 0.0
    assert old.preprocessor.error_curve_mags == []
    for net in old.members:
        np.testing.assert_array_equal(net.feature_std[-len(BANDS):].numpy(), 1.0)
    # inputs like the training set: the same p(z) as before the repair of the scaling
    x = mags_errs(test)
    for a, b in zip(old.predict(*x), unbounded(dc2_model).predict(*x)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # an r non-detection: finite, and no 1e6 input (means near the training range)
    mags, errs = x
    mags = mags.copy()
    mags[:, BANDS.index("r")] = np.nan
    errs = errs.copy()
    errs[0, 0] = np.nan  # legacy preprocessor: a missing error becomes max_err
    w, mu, s = old.predict(mags, errs)
    assert np.all(np.isfinite(mu)) and np.all(np.isfinite(s))
    lo, hi = dc2_model.z_range
    assert mu.min() > lo - 1.0 and mu.max() < hi + 1.0
