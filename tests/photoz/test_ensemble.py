"""DeepEnsemble: reproducibility, code-free persistence, band checks, non-detections."""
from __future__ import annotations

import json
import os
import pickletools
import zipfile

import numpy as np
import pytest
import torch

from calipers.core.models import check_model_bands, load_model, save_model
from calipers.core.errors import ModelMismatchError
from calipers.photoz import (BandMismatchError, DeepEnsemble, EnsembleConfig, PhotometryPreprocessor,
                             mixture_point_estimates)
from conftest import BANDS, TINY_ENSEMBLE, mags_errs


def fit(train, seed: int = 0, **overrides) -> DeepEnsemble:
    mags, errs = mags_errs(train)
    cfg = EnsembleConfig(**{**TINY_ENSEMBLE, "seed": seed, **overrides})
    return DeepEnsemble(cfg).fit(mags, errs, train["redshift"], BANDS, progress=False)


@pytest.fixture(scope="module")
def ensemble(train100) -> DeepEnsemble:
    return fit(train100, seed=0)


# ---------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_predictions(ensemble, train100, valid10):
    again = fit(train100, seed=0)
    x = mags_errs(valid10)
    for a, b in zip(ensemble.predict(*x), again.predict(*x)):
        np.testing.assert_array_equal(a, b)
    assert [h["best_val_nll"] for h in ensemble.history] == [h["best_val_nll"] for h in again.history]


def test_different_seed_gives_different_predictions(ensemble, train100, valid10):
    other = fit(train100, seed=1)
    x = mags_errs(valid10)
    _, mu_a, _ = ensemble.predict(*x)
    _, mu_b, _ = other.predict(*x)
    assert not np.allclose(mu_a, mu_b)


def test_members_differ_from_each_other(ensemble, valid10):
    """Each member has its own seed and validation split, so members are not copies."""
    _, mu, _ = ensemble.predict(*mags_errs(valid10))
    k = TINY_ENSEMBLE["n_components"]
    assert not np.allclose(mu[:, :k], mu[:, k:2 * k])


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu", "tanh"])
def test_batched_prediction_equals_each_members_own_forward(train100, valid10, activation):
    """predict() runs all members as one batched product with the feature scaling folded into
    the first layer; it must give each member's own mixture, whatever the block size."""
    ens = fit(train100, seed=3, activation=activation, n_members=3)
    mags, errs = mags_errs(valid10)
    m, e, f = (torch.as_tensor(a) for a in ens.preprocessor.transform(mags, errs))
    k = ens.config.n_components
    for block in (1, 4, 1024):
        w, mu, s = ens.predict(mags, errs, block=block)
        for j, net in enumerate(ens.members):
            with torch.no_grad():
                log_w, mean, log_s = net(m, e, f)
            cols = slice(j * k, (j + 1) * k)
            np.testing.assert_allclose(w[:, cols], torch.exp(log_w).numpy() / len(ens.members), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(mu[:, cols], mean.numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(s[:, cols], torch.exp(log_s).numpy(), rtol=1e-4)


def test_estimate_in_threads_equals_predict_then_point_estimates(ensemble, valid10):
    """estimate() splits rows over threads; the mixtures and point estimates are those of one
    predict() and mixture_point_estimates() call on all rows."""
    mags, errs = (np.tile(a, (250, 1)) for a in mags_errs(valid10))  # 2500 rows: 2 parts of >= 1024
    which = ["zmode", "zmean", "zmedian", "zlo68", "zhi68"]
    before = torch.get_num_threads()
    (w, mu, s), est = ensemble.estimate(mags, errs, which, threads=2)
    assert torch.get_num_threads() == before  # estimate() runs its parts with one torch thread each
    ref = ensemble.predict(mags, errs)
    for a, b in zip((w, mu, s), ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    ref_est = mixture_point_estimates(w, mu, s, which, threads=1)
    for k in which:
        np.testing.assert_array_equal(est[k], ref_est[k], err_msg=k)


# ---------------------------------------------------------------------------- persistence
def test_save_load_round_trip(ensemble, valid10, tmp_path):
    save_model(str(tmp_path / "model"), ensemble)
    loaded = load_model(str(tmp_path / "model"))
    x = mags_errs(valid10)
    for a, b in zip(ensemble.predict(*x), loaded.predict(*x)):
        np.testing.assert_array_equal(a, b)
    assert loaded.bands == BANDS
    assert loaded.config == ensemble.config
    assert loaded.preprocessor == ensemble.preprocessor


def pickle_globals(data: bytes) -> set[str]:
    """Every 'module.name' a pickle stream would import (GLOBAL and STACK_GLOBAL opcodes)."""
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
    return found


def test_saved_model_is_code_free(ensemble, tmp_path):
    d = tmp_path / "model"
    save_model(str(d), ensemble)
    assert sorted(os.listdir(d)) == ["metadata.json", "weights.pt"]
    with open(d / "metadata.json") as fh:
        meta = json.load(fh)  # plain JSON
    assert meta["format"].startswith("calipers.photoz.DeepEnsemble/")
    assert meta["preprocessor"]["bands"] == BANDS
    # weights load with torch's restricted unpickler: tensors and dicts only
    states = torch.load(d / "weights.pt", map_location="cpu", weights_only=True)
    assert sorted(states) == [f"member_{i}" for i in range(TINY_ENSEMBLE["n_members"])]
    for state in states.values():
        assert all(isinstance(t, torch.Tensor) for t in state.values())
        assert "feature_mean" in state and "feature_std" in state  # scaling travels with weights
    # and the pickle inside the torch archive references no calipers (or other live) classes
    with zipfile.ZipFile(d / "weights.pt") as z:
        pkl = [n for n in z.namelist() if n.endswith(".pkl")]
        assert pkl
        refs = set().union(*(pickle_globals(z.read(n)) for n in pkl))
    assert refs, "expected tensor-rebuild references in the torch archive"
    assert all(r.startswith(("torch.", "collections.OrderedDict")) for r in refs), refs


def test_load_rejects_foreign_directories(ensemble, tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        load_model(str(tmp_path))
    d = tmp_path / "model"
    save_model(str(d), ensemble)
    meta = json.loads((d / "metadata.json").read_text())
    meta["format"] = "someone.else/9"
    del meta["checksums"]  # as a directory written without checksums (else the checksum fails first)
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match="someone.else/9"):
        load_model(str(d))


@pytest.mark.parametrize("bad", [{"max_epochs": 0}, {"batch_size": 0}, {"learning_rate": 0.0}, {"patience": -1}])
def test_config_rejects_unusable_training_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DeepEnsemble(EnsembleConfig(**{**TINY_ENSEMBLE, **bad}))


# ---------------------------------------------------------------------------- bands
def test_check_bands(ensemble):
    """The algorithm raises its own ValueError subclass (photoz does not import calipers.core);
    calipers.core.models.check_model_bands turns it into ModelMismatchError, same message."""
    ensemble.check_bands(BANDS)  # the training bands pass
    with pytest.raises(BandMismatchError) as err:
        ensemble.check_bands(["g", "r", "i", "z"], source="my.hdf5")
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "my.hdf5" in msg and "['g', 'r', 'i', 'z']" in msg and str(BANDS) in msg
    with pytest.raises(BandMismatchError):
        ensemble.check_bands(list(reversed(BANDS)))  # same bands, wrong order
    check_model_bands(ensemble, BANDS)
    with pytest.raises(ModelMismatchError) as err:
        check_model_bands(ensemble, ["g", "r", "i", "z"], source="my.hdf5")
    assert str(err.value) == msg


def test_predict_rejects_wrong_number_of_bands(ensemble, valid10):
    mags, errs = mags_errs(valid10, bands=["g", "r", "i", "z"])
    with pytest.raises(ValueError, match="bands"):
        ensemble.predict(mags, errs)


# ---------------------------------------------------------------------------- non-detections
SENTINELS = {"u": 99.0, "g": -99.0, "r": np.nan, "i": np.inf, "z": -np.inf}


def with_nondetections(valid10):
    """Validation photometry with one kind of non-detection per band (y stays clean)."""
    mags, errs = mags_errs(valid10)
    mags, errs = mags.copy(), errs.copy()
    for j, band in enumerate(BANDS):
        if band in SENTINELS:
            mags[j::2, j] = SENTINELS[band]  # every other row from row j on
    errs[0, 5] = np.nan  # a NaN error on a detected magnitude
    errs[1, 5] = 0.0  # and a zero error
    return mags, errs


def test_nondetections_give_finite_predictions(ensemble, valid10):
    mags, errs = with_nondetections(valid10)
    assert not np.all(np.isfinite(mags))
    w, mu, s = ensemble.predict(mags, errs)
    for a in (w, mu, s):
        assert np.all(np.isfinite(a))
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    for key, v in mixture_point_estimates(w, mu, s).items():
        assert np.all(np.isfinite(v)), key
    # the preprocessor really flagged them (the model saw flags, not 99s); a missing error on a
    # detected magnitude is not a non-detection
    m, e, flags = ensemble.preprocessor.transform(mags, errs)
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(e)) and np.all(e > 0)
    assert np.all(np.abs(m) < 90)
    np.testing.assert_array_equal(flags.astype(bool), ~np.isfinite(mags) | (np.abs(mags) >= 90))
    assert flags[0, 5] == 0 and flags[1, 5] == 0 and m[0, 5] == mags[0, 5] and m[1, 5] == mags[1, 5]


def test_count_nondetections(ensemble, valid10):
    mags, errs = with_nondetections(valid10)
    counts = ensemble.preprocessor.count_nondetections(mags, errs)
    expected = {b: len(range(j, 10, 2)) if b in SENTINELS else 0 for j, b in enumerate(BANDS)}
    assert counts == expected
    missing = ensemble.preprocessor.count_missing_errors(mags, errs)
    assert missing == {b: 2 if b == "y" else 0 for b in BANDS}  # the NaN and the zero error


def test_preprocessor_fit_rejects_all_nondetected_band():
    mags = np.full((5, 2), 24.0)
    mags[:, 1] = 99.0
    errs = np.full((5, 2), 0.1)
    with pytest.raises(ValueError, match="band 'b'"):
        PhotometryPreprocessor(["a", "b"]).fit(mags, errs)


def test_fit_rejects_non_finite_redshift(train100):
    mags, errs = mags_errs(train100)
    z = np.array(train100["redshift"], dtype=float)
    z[7] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        DeepEnsemble(EnsembleConfig(**TINY_ENSEMBLE)).fit(mags, errs, z, BANDS, progress=False)


# ---------------------------------------------------------------------------- batched training
def _toy_photometry(n=600, seed=1):
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.1, 2.0, n)
    mags = np.stack([22 + z * (i - 2) * 0.5 + rng.normal(0, 0.1, n) for i in range(6)], 1)
    return mags, np.full_like(mags, 0.05), z


@pytest.mark.parametrize("n_rows, extra", [
    (600, dict(n_layers=2, n_components=10, max_epochs=80, patience=3, lr_patience=1, ema=0.0)),
    # one hidden layer, 3 components, 285 training rows: output blocks of 29 x 9 in the last batch,
    # which made a member's product depend on its position in the stack before the rows were padded
    (300, dict(n_layers=1, n_components=3, max_epochs=4, patience=5)),
])
def test_members_trained_together_equal_members_trained_alone(n_rows, extra):
    """Every member depends only on (seed, member): trained in one batched stack of 3, alone, or
    with another subset (members stopping early at different epochs), its weights are bit-for-bit
    the same. This is what makes MPI-shared training equal to a serial fit."""
    mags, errs, z = _toy_photometry(n_rows)
    cfg = dict(n_members=3, hidden=16, batch_size=64, cde_weight=0.3, crps_weight=5.0, band_dropout=0.1,
               augment=True, **extra)
    together = DeepEnsemble(EnsembleConfig(**cfg)).fit(mags, errs, z, BANDS, progress=False).member_states()
    stopped_at = {k: h["epochs_run"] for k, (_, h) in together.items()}
    if extra["max_epochs"] == 80:
        assert len(set(stopped_at.values())) > 1, f"members should stop at different epochs here: {stopped_at}"
        assert max(stopped_at.values()) < 80
    for subset in ([1], [2, 0]):
        apart = DeepEnsemble(EnsembleConfig(**cfg)).fit(mags, errs, z, BANDS, progress=False,
                                                        members=subset).member_states()
        for k in subset:
            assert apart[k][1] == together[k][1]
            for name, t in together[k][0].items():
                assert torch.equal(apart[k][0][name], t), (k, name)


def test_training_weights_change_the_fit_and_unit_weights_do_not():
    mags, errs, z = _toy_photometry(300)
    cfg = EnsembleConfig(n_members=1, hidden=16, n_layers=1, max_epochs=3, ema=0.0)
    plain = DeepEnsemble(cfg).fit(mags, errs, z, BANDS, progress=False).member_states()[0][0]
    ones = DeepEnsemble(cfg).fit(mags, errs, z, BANDS, progress=False, weights=np.ones(len(z))).member_states()[0][0]
    tilted = DeepEnsemble(cfg).fit(mags, errs, z, BANDS, progress=False, weights=np.exp(2 * z)).member_states()[0][0]
    for name in plain:
        torch.testing.assert_close(ones[name], plain[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(tilted[name], plain[name], atol=1e-4) for name in plain)


@pytest.mark.parametrize("weights, match", [(np.ones(5), "one value per training row"),
                                            ("nan", "first at row 7"), ("neg", "first at row 7"),
                                            ("zero", "every training weight is 0")])
def test_training_weights_are_checked(weights, match):
    mags, errs, z = _toy_photometry(50)
    if isinstance(weights, str):
        w = np.zeros(len(z)) if weights == "zero" else np.ones(len(z))
        if weights != "zero":
            w[7] = np.nan if weights == "nan" else -1.0
        weights = w
    with pytest.raises(ValueError, match=match):
        DeepEnsemble(EnsembleConfig(n_members=1, max_epochs=1)).fit(mags, errs, z, BANDS, progress=False,
                                                                     weights=weights)
