"""Model directories: checksums of the weights and the metadata, and checked metadata values."""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch

from calipers.core.errors import FileFormatError, ModelFileError, ModelMismatchError
from calipers.core.models import (canonical_json, load_estimator, load_model, read_model_dir, save_estimator,
                                  save_model, write_model_dir)
from calipers.photoz import DeepEnsemble, EnsembleConfig
from conftest import BANDS, TINY_ENSEMBLE, mags_errs


@pytest.fixture(scope="module")
def ensemble(train100) -> DeepEnsemble:
    mags, errs = mags_errs(train100)
    return DeepEnsemble(EnsembleConfig(**TINY_ENSEMBLE)).fit(mags, errs, train100["redshift"], BANDS, progress=False)


@pytest.fixture
def model_dir(ensemble, tmp_path):
    d = tmp_path / "model"
    save_model(str(d), ensemble)
    return d


def edit_meta(d, change, keep_checksums: bool = True) -> None:
    meta = json.loads((d / "metadata.json").read_text())
    change(meta)
    if not keep_checksums:
        del meta["checksums"]
    (d / "metadata.json").write_text(json.dumps(meta, indent=1))


def set_fill_null(meta):
    meta["preprocessor"]["fill_mags"][2] = None


METADATA_EDITS = {
    "member count": lambda m: m["config"].__setitem__("n_members", 1),
    "activation": lambda m: m["config"].__setitem__("activation", "relu"),
    "null fill value": set_fill_null,
    "redshift range": lambda m: m.__setitem__("z_range", [0.0, 9.0]),
}


# ---------------------------------------------------------------------------- checksums
def test_checksums_are_written_and_stripped_on_read(model_dir, ensemble):
    meta = json.loads((model_dir / "metadata.json").read_text())
    sums = meta.pop("checksums")
    assert sums["weights.pt"] == hashlib.sha256((model_dir / "weights.pt").read_bytes()).hexdigest()
    assert sums["metadata.json"] == hashlib.sha256(canonical_json(meta)).hexdigest()
    read, states = read_model_dir(str(model_dir))
    assert "checksums" not in read and read == meta
    assert sorted(states) == [f"member_{i}" for i in range(ensemble.config.n_members)]


def test_reserved_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="checksums"):
        write_model_dir(str(tmp_path / "x"), {"checksums": 1}, {})


@pytest.mark.parametrize("what", list(METADATA_EDITS))
def test_edited_metadata_is_refused(model_dir, what):
    edit_meta(model_dir, METADATA_EDITS[what])
    with pytest.raises(ModelFileError) as err:
        load_model(str(model_dir))
    msg = str(err.value)
    assert str(model_dir / "metadata.json") in msg and "modified" in msg and "corrupt" in msg


def test_reformatted_metadata_still_loads(model_dir, ensemble, valid10):
    """The checksum is over the canonical JSON, so re-indenting the file is not an edit."""
    edit_meta(model_dir, lambda m: None)  # rewritten with another layout, same content
    loaded = load_model(str(model_dir))
    for a, b in zip(loaded.predict(*mags_errs(valid10)), ensemble.predict(*mags_errs(valid10))):
        np.testing.assert_array_equal(a, b)


def test_flipped_weight_byte_is_refused(model_dir):
    data = bytearray((model_dir / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (model_dir / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"weights\.pt: the weights were modified .* or the file is corrupt"):
        load_model(str(model_dir))


@pytest.mark.parametrize("checksums", [True, False], ids=["with_checksums", "legacy"])
def test_truncated_weights_are_an_error_naming_the_file(model_dir, checksums):
    if not checksums:
        edit_meta(model_dir, lambda m: None, keep_checksums=False)
    data = (model_dir / "weights.pt").read_bytes()
    (model_dir / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as err:
        load_model(str(model_dir))
    assert str(model_dir / "weights.pt") in str(err.value)
    assert isinstance(err.value, FileFormatError) and isinstance(err.value, ModelMismatchError)


@pytest.mark.parametrize("text", ['{"format": "calipers.photoz.DeepEnsemble/2", ', "", "\xff\xfe"])
def test_invalid_json_is_an_error_naming_the_file(model_dir, text):
    (model_dir / "metadata.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelFileError, match=r"metadata\.json: not valid JSON"):
        load_model(str(model_dir))


def test_missing_weights_file(model_dir):
    (model_dir / "weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"weights\.pt"):
        load_model(str(model_dir))


# ---------------------------------------------------------------------------- without checksums
def test_directory_without_checksums_loads_with_a_warning(model_dir, ensemble, valid10, caplog):
    edit_meta(model_dir, lambda m: None, keep_checksums=False)
    with caplog.at_level(logging.WARNING, logger="calipers.core.models"):
        loaded = load_model(str(model_dir))
    assert "without checksums" in caplog.text and str(model_dir) in caplog.text
    for a, b in zip(loaded.predict(*mags_errs(valid10)), ensemble.predict(*mags_errs(valid10))):
        np.testing.assert_array_equal(a, b)


VALUE_EDITS = {
    "member count": (lambda m: m["config"].__setitem__("n_members", 3), r"n_members = 3.*member_0.*member_1"),
    "fewer members": (lambda m: m["config"].__setitem__("n_members", 1), r"n_members = 1"),
    "unknown activation": (lambda m: m["config"].__setitem__("activation", "swish"), r"activation"),
    "null fill value": (set_fill_null, r"fill_mags"),
    "null max_err": (lambda m: m["preprocessor"].__setitem__("max_err", None), r"max_err"),
    "components": (lambda m: m["config"].__setitem__("n_components", 4), r"member_0: the weights do not fit"),
    "unknown config key": (lambda m: m["config"].__setitem__("n_memebrs", 2), r"n_memebrs"),
    "redshift range": (lambda m: m.__setitem__("z_range", [1.0, None]), r"z_range"),
    "format": (lambda m: m.__setitem__("format", "someone.else/9"), r"someone.else/9"),
}


@pytest.mark.parametrize("what", list(VALUE_EDITS))
def test_metadata_values_are_checked(model_dir, what):
    """Without checksums (or with a recomputed one) the values themselves are still checked."""
    change, pattern = VALUE_EDITS[what]
    edit_meta(model_dir, change, keep_checksums=False)
    with pytest.raises(ModelMismatchError, match=pattern) as err:
        load_model(str(model_dir))
    assert str(model_dir) in str(err.value)


def test_non_finite_weights_are_refused(model_dir):
    edit_meta(model_dir, lambda m: None, keep_checksums=False)
    states = torch.load(model_dir / "weights.pt", weights_only=True)
    states["member_1"]["net.0.weight"][0, 0] = float("nan")
    torch.save(states, model_dir / "weights.pt")
    with pytest.raises(ModelMismatchError, match=r"member_1: non-finite values in \['net.0.weight'\]"):
        load_model(str(model_dir))


def test_pickled_code_is_refused(model_dir):
    """weights_only stays: a pickle that would run code is refused, naming the file."""
    import pickle

    edit_meta(model_dir, lambda m: None, keep_checksums=False)

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    with open(model_dir / "weights.pt", "wb") as fh:
        pickle.dump(Evil(), fh)
    with pytest.raises(ModelFileError, match=r"weights\.pt: cannot be read"):
        load_model(str(model_dir))


# ---------------------------------------------------------------------------- SBI estimators
@pytest.fixture(scope="module")
def sbi_dir(tmp_path_factory):
    from calipers.sbi import GaussianLinear, SBIConfig, simulate
    from calipers.sbi.estimators import train_estimator

    torch.set_num_threads(1)
    sim = GaussianLinear(dim=2)
    theta, x = simulate(sim, 200, seed=0)
    cfg = SBIConfig(method="npe", hidden_features=8, num_transforms=1, max_num_epochs=1, stop_after_epochs=1,
                    training_batch_size=100)
    net, _ = train_estimator(theta, x, sim.prior_torch(), cfg)
    d = tmp_path_factory.mktemp("sbi") / "model"
    save_estimator(str(d), net, cfg, theta, x, extra={"note": "test"})
    return d


def test_sbi_estimator_round_trip_and_checksums(sbi_dir, tmp_path):
    import shutil

    net, cfg, meta = load_estimator(str(sbi_dir))
    assert meta["note"] == "test" and "checksums" not in meta
    assert "checksums" in json.loads((sbi_dir / "metadata.json").read_text())
    d = tmp_path / "edited"
    shutil.copytree(sbi_dir, d)
    edit_meta(d, lambda m: m["config"].__setitem__("hidden_features", 9))
    with pytest.raises(ModelFileError, match=r"metadata\.json: the metadata was modified"):
        load_estimator(str(d))
    d2 = tmp_path / "flipped"
    shutil.copytree(sbi_dir, d2)
    data = bytearray((d2 / "weights.pt").read_bytes())
    data[len(data) // 3] ^= 0x10
    (d2 / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"weights\.pt: the weights were modified"):
        load_estimator(str(d2))
