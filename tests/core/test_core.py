"""calipers.core: paths, catalogs, chunking, atomic writes, provenance."""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import calipers
from calipers.core.atomic import atomic_path
from calipers.core.catalog import catalog_info, chunk_ranges, iter_chunks, read_columns, require_columns
from calipers.core.errors import CalipersError, CatalogError
from calipers.core.paths import resolve_path
from calipers.core.provenance import make_provenance, read_provenance, write_provenance_hdf5
from conftest import TRAIN_100, write_catalog


# ---------------------------------------------------------------------------- paths
def test_resolve_pkg_path_found():
    path = resolve_path(TRAIN_100)
    assert os.path.isfile(path)
    assert path.endswith(os.path.join("rail", "examples_data", "testdata", "training_100gal.hdf5"))
    with h5py.File(path, "r") as f:
        assert "photometry" in f


def test_resolve_plain_paths_unchanged(tmp_path):
    assert resolve_path("some/relative/file.hdf5") == "some/relative/file.hdf5"
    assert resolve_path(tmp_path / "x.h5") == str(tmp_path / "x.h5")  # os.PathLike accepted


def test_resolve_pkg_path_missing_file():
    with pytest.raises(FileNotFoundError) as err:
        resolve_path("pkg://rail/examples_data/testdata/no_such_file.hdf5")
    msg = str(err.value)
    assert "examples_data/testdata/no_such_file.hdf5" in msg and "'rail'" in msg


def test_resolve_pkg_path_missing_package():
    with pytest.raises(FileNotFoundError, match="no_such_package_xyz.*not installed"):
        resolve_path("pkg://no_such_package_xyz/data.hdf5")


# ---------------------------------------------------------------------------- catalogs
@pytest.fixture
def small_catalog(tmp_path):
    cols = {"a": np.arange(10.0), "b": np.arange(10) * 2, "c": np.linspace(0, 1, 10)}
    return write_catalog(tmp_path / "cat.hdf5", cols, group="photometry"), cols


def test_catalog_info(small_catalog):
    path, cols = small_catalog
    n, names = catalog_info(path, "photometry")
    assert n == 10 and sorted(names) == sorted(cols)


def test_require_columns_names_file_group_and_every_missing_column(small_catalog):
    path, _ = small_catalog
    assert require_columns(path, "photometry", ["a", "c"]) == 10
    with pytest.raises(CatalogError) as err:
        require_columns(path, "photometry", ["a", "mag_y_lsst", "redshift"])
    msg = str(err.value)
    assert path in msg
    assert "'photometry'" in msg
    assert "mag_y_lsst" in msg and "redshift" in msg
    assert isinstance(err.value, CalipersError)


def test_require_columns_missing_group(small_catalog):
    path, _ = small_catalog
    with pytest.raises(CatalogError, match="no group 'photo'.*photometry"):
        require_columns(path, "photo", ["a"])


def test_catalog_with_unequal_columns_is_rejected(tmp_path):
    path = write_catalog(tmp_path / "bad.hdf5", {"a": np.arange(5), "b": np.arange(6)})
    with pytest.raises(CatalogError, match="different lengths"):
        catalog_info(path, "photometry")


def test_root_group_catalog(tmp_path):
    path = write_catalog(tmp_path / "root.hdf5", {"a": np.arange(4.0)}, group="")
    assert require_columns(path, "", ["a"]) == 4
    np.testing.assert_array_equal(read_columns(path, "", ["a"], 1, 3)["a"], [1.0, 2.0])


@settings(max_examples=200, deadline=None)
@given(n_rows=st.integers(0, 500), chunk_size=st.integers(1, 120), size=st.integers(1, 7))
def test_chunk_ranges_cover_every_row_once_across_ranks(n_rows, chunk_size, size):
    covered = np.zeros(n_rows, dtype=int)
    per_rank = [chunk_ranges(n_rows, chunk_size, rank, size) for rank in range(size)]
    for ranges in per_rank:
        for start, end in ranges:
            assert 0 <= start < end <= n_rows
            assert end - start <= chunk_size
            covered[start:end] += 1
    assert np.all(covered == 1)
    # ranks' loads differ by at most one chunk
    counts = [len(r) for r in per_rank]
    assert max(counts) - min(counts) <= 1


def test_chunk_ranges_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_ranges(10, 0)


def test_iter_chunks_reassembles_the_catalog(small_catalog):
    path, cols = small_catalog
    got = {"a": [], "b": []}
    for rank in range(3):
        for start, end, chunk in iter_chunks(path, "photometry", ["a", "b"], 3, rank, 3):
            np.testing.assert_array_equal(chunk["a"], cols["a"][start:end])
            got["a"].append((start, chunk["a"]))
            got["b"].append((start, chunk["b"]))
    a = np.concatenate([c for _, c in sorted(got["a"], key=lambda t: t[0])])
    np.testing.assert_array_equal(a, cols["a"])


# ---------------------------------------------------------------------------- atomic writes
class Boom(RuntimeError):
    pass


def test_atomic_path_leaves_nothing_when_body_raises(tmp_path):
    target = tmp_path / "out.hdf5"
    with pytest.raises(Boom):
        with atomic_path(str(target)) as tmp:
            assert tmp != str(target) and os.path.dirname(tmp) == str(tmp_path)
            Path(tmp).write_text("half written")
            raise Boom
    assert os.listdir(tmp_path) == []


def test_atomic_path_keeps_old_target_when_body_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(str(target)) as tmp:
            Path(tmp).write_text("new")
            raise Boom
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(str(target)) as tmp:
        Path(tmp).write_text("complete")
        assert not target.exists()  # nothing at the final name until the body ends
    assert target.read_text() == "complete"
    assert os.listdir(target.parent) == ["out.txt"]


def test_atomic_path_file_mode_follows_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        target = tmp_path / "out.txt"
        with atomic_path(str(target)) as tmp:
            Path(tmp).write_text("x")
    finally:
        os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o644


def test_atomic_path_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with atomic_path(str(target), directory=True) as tmp:
        Path(tmp, "weights.pt").write_text("w")
    assert sorted(os.listdir(target)) == ["weights.pt"]
    with pytest.raises(Boom):
        with atomic_path(str(tmp_path / "model2"), directory=True) as tmp:
            Path(tmp, "weights.pt").write_text("w")
            raise Boom
    assert sorted(os.listdir(tmp_path)) == ["model"]


# ---------------------------------------------------------------------------- provenance
def test_make_provenance(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("data")
    cfg = {"n_members": 2, "bands": ["g", "r"]}
    prov = make_provenance("PZInform", cfg, {"training_catalog": str(inp)})
    assert prov["calipers_version"] == calipers.__version__
    assert prov["stage"] == "PZInform"
    assert json.loads(prov["config"]) == cfg
    hashes = json.loads(prov["input_hashes"])
    assert set(hashes) == {"training_catalog"} and len(hashes["training_catalog"]) == 64
    assert all(isinstance(v, str) for v in prov.values())

    same = make_provenance("PZInform", dict(cfg), {"training_catalog": str(inp)})
    assert same["run_key"] == prov["run_key"]

    changed = make_provenance("PZInform", {**cfg, "n_members": 3}, {"training_catalog": str(inp)})
    assert changed["config"] != prov["config"]
    assert changed["run_key"] != prov["run_key"]

    inp.write_text("other data")
    new_input = make_provenance("PZInform", cfg, {"training_catalog": str(inp)})
    assert json.loads(new_input["input_hashes"]) != hashes
    assert new_input["run_key"] != prov["run_key"]


def test_provenance_hashes_directories(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "weights.pt").write_bytes(b"123")
    h1 = json.loads(make_provenance("S", {}, {"model": str(d)})["input_hashes"])["model"]
    (d / "weights.pt").write_bytes(b"124")
    h2 = json.loads(make_provenance("S", {}, {"model": str(d)})["input_hashes"])["model"]
    assert h1 != h2


def test_provenance_hdf5_round_trip(tmp_path):
    prov = make_provenance("PZEstimate", {"chunk_size": 5}, {})
    path = tmp_path / "out.hdf5"
    with h5py.File(path, "w") as f:
        write_provenance_hdf5(f, prov)
    assert read_provenance(str(path)) == prov


def test_device_binds_rank_r_to_gpu_r_mod_n(monkeypatch):
    import torch

    from calipers.core.device import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [choose_device("auto", r) for r in range(5)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert choose_device("cuda", 3) == "cuda:1" and choose_device("cuda:0", 3) == "cuda:0"
    assert choose_device("cpu", 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto", 1) == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        choose_device("cuda", 0)
    with pytest.raises(ValueError, match="Unknown device"):
        choose_device("tpu", 0)


# ---------------------------------------------------------------------------- streaming qp writes
QP_LAYOUT = dict(meta={"pdf_name": np.array([b"mixmod"]), "pdf_version": np.array([0])},
                 data_shapes={"weights": (3,), "means": (3,), "stds": (3,)}, ancil_names=["zmode"])


def write_qp_chunks(path, chunks, background):
    from calipers.core.qpio import QPChunkWriter

    with QPChunkWriter(str(path), sum(len(c["weights"]) for c in chunks), background=background, **QP_LAYOUT) as out:
        start = 0
        for c in chunks:
            n = len(c["weights"])
            out.write(start, start + n, {k: c[k] for k in ("weights", "means", "stds")}, {"zmode": c["zmode"]})
            start += n


def test_background_qp_writes_equal_direct_writes_and_open_with_qp(tmp_path):
    import qp

    rng = np.random.default_rng(0)
    chunks = []
    for n in (5, 7, 1, 12):
        w = rng.uniform(0.1, 1, (n, 3))
        chunks.append(dict(weights=w / w.sum(1, keepdims=True), means=rng.uniform(0, 3, (n, 3)),
                           stds=rng.uniform(0.05, 0.3, (n, 3)), zmode=rng.uniform(0, 3, n)))
    write_qp_chunks(tmp_path / "a.hdf5", chunks, background=False)
    write_qp_chunks(tmp_path / "b.hdf5", chunks, background=True)
    with h5py.File(tmp_path / "a.hdf5") as a, h5py.File(tmp_path / "b.hdf5") as b:
        for group in ("data", "ancil"):
            for k in a[group]:
                np.testing.assert_array_equal(a[group][k][:], b[group][k][:])
    ens = qp.read(str(tmp_path / "b.hdf5"))
    assert ens.npdf == 25
    np.testing.assert_allclose(ens.ancil["zmode"], np.concatenate([c["zmode"] for c in chunks]))


def test_background_qp_write_error_is_raised(tmp_path):
    """A chunk that does not fit fails in the writer thread; the error reaches the caller."""
    chunk = dict(weights=np.ones((4, 3)) / 3, means=np.ones((4, 3)), stds=np.ones((4, 3)), zmode=np.ones(4))
    bad = dict(chunk, means=np.ones((4, 2)))  # 2 components where the file has 3
    with pytest.raises((TypeError, ValueError)):
        write_qp_chunks(tmp_path / "c.hdf5", [chunk, bad, chunk], background=True)
