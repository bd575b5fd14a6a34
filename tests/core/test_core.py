"""calipers.core: paths, catalogs, chunking, provenance."""
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


# ---------------------------------------------------------------------------- pkg:// containment
@pytest.mark.parametrize("bad", ["pkg://rail/../../etc/passwd", "pkg://rail/examples_data/../../../etc/passwd",
                                 "pkg://rail//etc/passwd", "pkg://rail/"])
def test_pkg_path_must_stay_inside_its_package(bad):
    with pytest.raises(FileNotFoundError) as err:
        resolve_path(bad)
    assert bad in str(err.value) and "rail" in str(err.value)


def test_pkg_path_symlink_out_of_the_package_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "lib" / "escape_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", pkg / "link.txt")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    with pytest.raises(FileNotFoundError, match="outside package 'escape_pkg'"):
        resolve_path("pkg://escape_pkg/link.txt")


def test_pkg_path_does_not_import_the_package(tmp_path, monkeypatch):
    """Locating a package must not run its code (find_spec, not import_module)."""
    import sys

    pkg = tmp_path / "lib" / "side_effect_pkg"
    pkg.mkdir(parents=True)
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (pkg / "data.txt").write_text("x")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    assert resolve_path("pkg://side_effect_pkg/data.txt") == str(pkg / "data.txt")
    assert not marker.exists() and "side_effect_pkg" not in sys.modules


def test_pkg_path_names_must_be_package_names():
    with pytest.raises(FileNotFoundError, match="not a package name"):
        resolve_path("pkg://../etc/passwd")


# ---------------------------------------------------------------------------- catalog column errors
def test_string_and_2d_columns_are_errors_naming_file_group_and_column(tmp_path):
    path = str(tmp_path / "odd.hdf5")
    with h5py.File(path, "w") as f:
        f["photometry/name"] = np.array([b"a", b"b", b"c"])
        f["photometry/z2d"] = np.ones((3, 2))
        f["photometry/z"] = np.ones(3)
    with pytest.raises(CatalogError) as err:
        read_columns(path, "photometry", ["z", "name"])
    assert path in str(err.value) and "'name'" in str(err.value) and "'photometry'" in str(err.value)
    assert "numeric" in str(err.value)
    with pytest.raises(CatalogError, match=r"'z2d'.*shape \(3, 2\).*1-d"):
        read_columns(path, "photometry", ["z2d"])
    with pytest.raises(CatalogError, match="'z2d'"):
        list(iter_chunks(path, "photometry", ["z2d"], 2))
    assert read_columns(path, "photometry", ["name"], numeric=False)["name"].tolist() == [b"a", b"b", b"c"]


def test_truncated_hdf5_is_an_error_naming_the_file(tmp_path):
    from calipers.core.errors import FileFormatError

    path = write_catalog(tmp_path / "cat.hdf5", {"z": np.arange(20000.0)})
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError) as err:
        catalog_info(path, "photometry")
    assert path in str(err.value) and "truncated" in str(err.value)
    with pytest.raises(FileNotFoundError, match="no_such.hdf5"):
        catalog_info(str(tmp_path / "no_such.hdf5"), "photometry")


def test_matching_ids_name_the_first_mismatching_row(tmp_path):
    from calipers.core.catalog import check_matching_ids

    ids = np.arange(100, 110)
    a = write_catalog(tmp_path / "a.hdf5", {"id": ids})
    b = write_catalog(tmp_path / "b.hdf5", {"id": ids})
    swapped = ids.copy()
    swapped[[4, 6]] = swapped[[6, 4]]
    c = write_catalog(tmp_path / "c.hdf5", {"id": swapped})
    assert check_matching_ids(a, "photometry/id", b, "photometry", "id", chunk_size=3) is True
    assert check_matching_ids(a, "photometry/id", b, "photometry", "") is False           # switched off
    assert check_matching_ids(a, "photometry/nope", b, "photometry", "id") is False       # no ids: nothing to compare
    with pytest.raises(CatalogError) as err:
        check_matching_ids(a, "photometry/id", c, "photometry", "id", chunk_size=3)
    msg = str(err.value)
    assert "row 4 has id 104" in msg and "106" in msg and a in msg and c in msg


# ---------------------------------------------------------------------------- qp chunk files
def test_one_row_chunk_keeps_two_dimensional_data(tmp_path):
    """qp squeezes a 1-distribution ensemble to 1-d data and refuses to slice it: a chunk of one
    row (row 20,000 of 20,001 at chunk_size 20,000) crashed every p(z) stage with IndexError."""
    import qp

    from calipers.core.qpio import read_qp_rows
    from calipers.validate.metrics import grid_pdfs

    n, zgrid = 5, np.linspace(0, 3, 31)
    mix = qp.Ensemble(qp.mixmod, data=dict(means=np.linspace(0.5, 1, n)[:, None], stds=np.full((n, 1), 0.1),
                                           weights=np.ones((n, 1))))
    mix.set_ancil({"zmode": np.arange(n) * 1.0})
    mix.write_to(str(tmp_path / "mix.hdf5"))
    interp = qp.Ensemble(qp.interp, data=dict(xvals=zgrid, yvals=np.exp(-((zgrid - 1) ** 2))[None, :].repeat(n, 0)))
    interp.write_to(str(tmp_path / "interp.hdf5"))
    for name in ("mix", "interp"):
        one = read_qp_rows(str(tmp_path / f"{name}.hdf5"), 4, 5)
        assert one.npdf == 1 and all(np.ndim(v) == 2 and np.shape(v)[0] == 1 for v in one.objdata.values())
        pdfs, valid = grid_pdfs(one, zgrid)
        many, _ = grid_pdfs(read_qp_rows(str(tmp_path / f"{name}.hdf5"), 0, 5), zgrid)
        assert pdfs.shape == (1, 31) and valid.all()
        np.testing.assert_allclose(pdfs[0], many[4])
    assert read_qp_rows(str(tmp_path / "mix.hdf5"), 4, 5).ancil["zmode"].tolist() == [4.0]


def test_qp_writer_setup_failure_closes_and_removes_its_file(tmp_path):
    import threading

    from calipers.core.qpio import QPChunkWriter

    path = tmp_path / "bad.hdf5"
    layout = dict(QP_LAYOUT, data_shapes={"weights": (-3,)})  # h5py refuses a negative shape
    with pytest.raises((ValueError, TypeError, OverflowError)):
        QPChunkWriter(str(path), 4, background=True, **layout)
    assert not path.exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("qp-writer")]
    with h5py.File(path, "w"):  # nothing holds the name open
        pass


def test_qp_writer_never_hides_the_callers_exception(tmp_path, caplog):
    """A failing background write surfacing at close must not replace the stage's own error."""
    from calipers.core.qpio import QPChunkWriter

    bad = {"weights": np.ones((4, 2)), "means": np.ones((4, 3)), "stds": np.ones((4, 3))}  # 2 where 3 are
    with pytest.raises(RuntimeError, match="the stage's own error"):
        with QPChunkWriter(str(tmp_path / "o.hdf5"), 4, background=True, **QP_LAYOUT) as out:
            out.write(0, 4, bad, {"zmode": np.ones(4)})
            raise RuntimeError("the stage's own error")
    assert "error while closing after a failure" in caplog.text
    # without an error of its own, the writer's error is raised
    with pytest.raises((TypeError, ValueError)):
        with QPChunkWriter(str(tmp_path / "p.hdf5"), 4, background=True, **QP_LAYOUT) as out:
            out.write(0, 4, bad, {"zmode": np.ones(4)})


def test_qp_size_of_a_file_that_is_not_qp(tmp_path):
    from calipers.core.errors import FileFormatError
    from calipers.core.qpio import qp_size

    path = write_catalog(tmp_path / "cat.hdf5", {"z": np.ones(3)})
    with pytest.raises(FileFormatError, match=f"{path}: not a qp ensemble"):
        qp_size(path)


# ---------------------------------------------------------------------------- locks
def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, caplog):
    import socket
    import subprocess
    import sys

    from calipers.core.errors import OutputLocked
    from calipers.core.lock import Lock

    path = tmp_path / ".calipers" / "run.lock"
    path.parent.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": "x", "command": "c"}))
        with pytest.raises(OutputLocked) as err:
            Lock(str(path), "output directory d").acquire()
        assert str(path) in str(err.value) and f"pid {live.pid}" in str(err.value)
    finally:
        live.kill()
        live.wait()
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    with Lock(str(path), "output directory d"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text
    assert not path.exists() and not path.parent.exists()  # released, empty .calipers removed
