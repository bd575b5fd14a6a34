"""CatalogSplit partitions rows reproducibly; CatalogCut keeps exactly the selected rows."""
import numpy as np
import pytest
import yaml

from conftest import read_catalog, run_stage, write_catalog


def cfg(tmp_path, **sections):
    p = tmp_path / "cfg.yml"
    p.write_text(yaml.safe_dump(sections))
    return str(p)


@pytest.fixture()
def cat(tmp_path):
    rng = np.random.default_rng(0)
    n = 1000
    return write_catalog(tmp_path / "cat.hdf5", {"id": np.arange(n), "mag_i_lsst": rng.uniform(18, 27, n),
                                                 "redshift": rng.uniform(0, 3, n)})


def test_split_is_a_reproducible_partition(tmp_path, cat):
    c = cfg(tmp_path, CatalogSplit={"fraction_a": 0.3, "chunk_size": 128, "seed": 5})
    ids = []
    for run in (1, 2):
        a, b = tmp_path / f"a{run}.hdf5", tmp_path / f"b{run}.hdf5"
        run_stage("CatalogSplit", c, catalog=cat, part_a=str(a), part_b=str(b))
        ids.append((read_catalog(str(a))["id"], read_catalog(str(b))["id"]))
    (a1, b1), (a2, b2) = ids
    np.testing.assert_array_equal(a1, a2)
    assert len(np.intersect1d(a1, b1)) == 0
    np.testing.assert_array_equal(np.sort(np.r_[a1, b1]), np.arange(1000))
    assert 0.25 < len(a1) / 1000 < 0.35


def test_cut_keeps_exactly_the_range(tmp_path, cat):
    c = cfg(tmp_path, CatalogCut={"column": "mag_i_lsst", "min_value": 24.5, "chunk_size": 100})
    out = tmp_path / "faint.hdf5"
    run_stage("CatalogCut", c, catalog=cat, selected=str(out))
    src, got = read_catalog(cat), read_catalog(str(out))
    np.testing.assert_array_equal(got["id"], src["id"][src["mag_i_lsst"] >= 24.5])
