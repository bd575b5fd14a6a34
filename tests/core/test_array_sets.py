"""Array sets: round trip, chunked appends, atomic writes (an error leaves no file), kind checks
and shape errors naming the file."""
from __future__ import annotations

import numpy as np
import pytest

from calipers.core.array_sets import ArraySetWriter, array_set_info, read_array_set
from calipers.core.errors import FileFormatError


def test_round_trip_in_chunks(tmp_path):
    path = str(tmp_path / "set.hdf5")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 3, 4)).astype(np.float32)
    with ArraySetWriter(path, "test.kind", {"a": ((3, 4), np.float32), "b": ((), np.int64)},
                        fixed={"grid": np.arange(4.0)}, attrs={"note": {"x": 1}}) as out:
        out.append({"a": a[:6], "b": np.arange(6)}, {"id": np.arange(6), "name": np.array(["p"] * 6)})
        out.append({"a": a[6:], "b": np.arange(6, 10)}, {"id": np.arange(6, 10), "name": np.array(["q"] * 4)})
    info = array_set_info(path, "test.kind")
    assert info["n"] == 10 and info["arrays"] == {"a": (3, 4), "b": ()} and info["attrs"]["note"] == {"x": 1}
    np.testing.assert_array_equal(info["fixed"]["grid"], np.arange(4.0))
    arrays, meta = read_array_set(path, ["a"], slice(2, 8), meta=None)
    np.testing.assert_array_equal(arrays["a"], a[2:8])
    assert list(meta["name"]) == ["p"] * 4 + ["q"] * 2 and list(meta["id"]) == list(range(2, 8))
    with pytest.raises(FileFormatError, match="holds 'test.kind', expected 'other'"):
        read_array_set(path, kind="other")
    with pytest.raises(FileFormatError, match=r"no array\(s\) \['c'\]"):
        read_array_set(path, ["c"])


def test_an_error_leaves_nothing_and_bad_chunks_are_named(tmp_path):
    path = tmp_path / "set.hdf5"
    with pytest.raises(FileFormatError, match="set.hdf5 .*'a' has rows of shape \\(5,\\), the set \\(4,\\)"):
        with ArraySetWriter(str(path), "k", {"a": ((4,), np.float64)}) as out:
            out.append({"a": np.zeros((2, 4))})
            out.append({"a": np.zeros((2, 5))})
    assert not path.exists() and not list(tmp_path.iterdir())  # no temporary file left either
    with pytest.raises(FileFormatError, match="different row counts"):
        with ArraySetWriter(str(path), "k", {"a": ((4,), np.float64)}) as out:
            out.append({"a": np.zeros((2, 4))}, {"id": np.arange(3)})
    assert not path.exists()
