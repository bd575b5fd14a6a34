"""SpecSelection stage: exactly the selected rows, chunk-independent, config errors, DC2 bias."""
import json

import h5py
import numpy as np
import pytest
import yaml

from calipers.core.errors import CatalogError, ConfigError
from calipers.core.provenance import read_provenance
from calipers.photoz.selection import LogisticSuccess, MagnitudeLimit, SpecSelection, survey_targeting
from conftest import DC2_TRAIN, inprogress, leftovers, read_catalog, run_stage, write_catalog

N = 5000


def cfg(tmp_path, name="cfg.yml", **options):
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"global": {"hdf5_groupname": "photometry"}, "SpecSelection": options}))
    return str(p)


def _columns(n, seed=0):
    rng = np.random.default_rng(seed)
    i = rng.uniform(18.0, 25.5, n)
    r = i + rng.uniform(-0.2, 1.5, n)
    g = r + rng.uniform(-0.3, 2.5, n)
    g[rng.random(n) < 0.05] = 99.0  # some g non-detections
    return {"id": np.arange(n, dtype=np.int64), "mag_g_lsst": g.astype(np.float32),
            "mag_r_lsst": r.astype(np.float32), "mag_i_lsst": i.astype(np.float32),
            "redshift": rng.uniform(0, 3, n), "name": np.array([f"gal{k}".encode() for k in range(n)])}


@pytest.fixture()
def cat(tmp_path):
    return write_catalog(tmp_path / "cat.hdf5", _columns(N))


OPTIONS = {"seed": 3, "bands": ["g", "r", "i"], "mag_limit": 23.5, "targeting": ["deep2"],
           "redshift_success": "logistic", "success_m50": 23.0, "success_width": 0.3, "success_max": 0.9}


def _expected_mask(columns, seed):
    sel = SpecSelection(cuts=(MagnitudeLimit("i", faint=23.5), survey_targeting("deep2")),
                        success=(LogisticSuccess("i", 23.0, 0.3, 0.9),))
    return sel.select({b: columns[f"mag_{b}_lsst"] for b in "gri"}, seed=seed).mask


def test_output_rows_are_exactly_the_selected_rows(tmp_path, cat):
    out = tmp_path / "spec.hdf5"
    run_stage("SpecSelection", cfg(tmp_path, **OPTIONS, chunk_size=700), catalog=cat, selected_catalog=str(out))
    src, got = read_catalog(cat), read_catalog(str(out))
    mask = _expected_mask(src, 3)
    assert 100 < mask.sum() < N / 2
    assert set(got) == set(src)
    for k in src:
        assert got[k].dtype == src[k].dtype
        np.testing.assert_array_equal(got[k], src[k][mask])
    # independent of the library: every kept row is brighter than the limit, and one undetected in
    # g can only be in DEEP2's r - i > 1.1 box (the other two boxes read g)
    assert np.all(got["mag_i_lsst"] < 23.5)
    no_g = got["mag_g_lsst"] > 90
    assert no_g.any() and np.all(got["mag_r_lsst"][no_g] - got["mag_i_lsst"][no_g] > 1.1)
    prov = read_provenance(str(out))
    assert prov["stage"] == "SpecSelection" and json.loads(prov["config"])["targeting"] == ["deep2"]
    summary = json.loads(prov["selection"])
    assert summary["n_input"] == N and summary["n_selected"] == int(mask.sum())
    assert summary["selected_fraction"] == pytest.approx(mask.mean())
    assert sum(summary["reasons"].values()) == N and summary["reasons"]["redshift_failed"] > 0
    # the g non-detections that failed the colour boxes are counted as such
    assert summary["reasons"]["not_detected"] >= int(((src["mag_g_lsst"] > 90) & (src["mag_i_lsst"] < 23.5)).sum())
    assert "deep2" in prov["selection_cuts"] and "i < 23.5" in prov["selection_cuts"]


def test_chunk_size_does_not_change_the_output(tmp_path, cat):
    outs = []
    for chunk in (N, 333, 4099, 1 << 20):
        out = tmp_path / f"spec_{chunk}.hdf5"
        run_stage("SpecSelection", cfg(tmp_path, f"c{chunk}.yml", **OPTIONS, chunk_size=chunk), catalog=cat,
                  selected_catalog=str(out))
        outs.append(read_catalog(str(out)))
    for other in outs[1:]:
        for k in outs[0]:
            np.testing.assert_array_equal(other[k], outs[0][k])
    # another seed selects other rows
    out = tmp_path / "spec_seed.hdf5"
    run_stage("SpecSelection", cfg(tmp_path, "s.yml", **{**OPTIONS, "seed": 4}), catalog=cat, selected_catalog=str(out))
    assert not np.array_equal(read_catalog(str(out))["id"], outs[0]["id"])


@pytest.mark.parametrize("bad, key", [
    ({"targeting": ["deep3"]}, "targeting"),
    ({"targeting": ["boss"], "bands": ["i"], "mag_limit_band": "i", "success_band": "i"}, "targeting"),
    ({"mag_limit_band": "w"}, "mag_limit_band"),
    ({"success_band": "y"}, "success_band"),  # not in bands [g, r, i]
    ({"success_width": 0.0}, "success_width"),
    ({"success_max": 1.2}, "success_max"),
    ({"redshift_success": "tabulated"}, "redshift_success"),
    ({"mag_bright_limit": 24.0}, "mag_bright_limit"),
    ({"nan_policy": "ignore"}, "nan_policy"),
    ({"bands": ["g", "g", "r", "i"]}, "bands"),
])
def test_bad_config_names_the_key(tmp_path, cat, bad, key):
    out = tmp_path / "spec.hdf5"
    with pytest.raises(ConfigError, match=f"'{key}'"):
        run_stage("SpecSelection", cfg(tmp_path, **{**OPTIONS, **bad}), catalog=cat, selected_catalog=str(out))
    assert not out.exists() and not inprogress(out).exists()


def test_unknown_key_and_wrong_type_are_config_errors(tmp_path, cat):
    with pytest.raises(ConfigError, match="did you mean 'mag_limit'"):
        run_stage("SpecSelection", cfg(tmp_path, **OPTIONS, mag_limt=23.0), catalog=cat,
                  selected_catalog=str(tmp_path / "o.hdf5"))
    with pytest.raises(ConfigError, match="'targeting'.*a single string is not a list"):
        run_stage("SpecSelection", cfg(tmp_path, **{**OPTIONS, "targeting": "deep2"}), catalog=cat,
                  selected_catalog=str(tmp_path / "o.hdf5"))


def test_nan_magnitude_names_column_and_row_and_leaves_no_output(tmp_path):
    cols = _columns(1000)
    cols["mag_i_lsst"][617] = np.nan
    path = write_catalog(tmp_path / "nan.hdf5", cols)
    out = tmp_path / "spec.hdf5"
    with pytest.raises(CatalogError, match=r"nan.hdf5.*'mag_i_lsst' is NaN at row 617"):
        run_stage("SpecSelection", cfg(tmp_path, **OPTIONS, chunk_size=300), catalog=path, selected_catalog=str(out))
    assert not out.exists() and leftovers(tmp_path) == []
    # asked to, the stage treats the NaN as a non-detection: row 617 is never selected
    run_stage("SpecSelection", cfg(tmp_path, **OPTIONS, nan_policy="nondetection"), catalog=path,
              selected_catalog=str(out))
    assert 617 not in read_catalog(str(out))["id"]


def test_missing_band_column_and_empty_selection_are_errors(tmp_path, cat):
    out = tmp_path / "spec.hdf5"
    with pytest.raises(CatalogError, match=r"missing column\(s\) \['mag_z_lsst'\]"):
        run_stage("SpecSelection", cfg(tmp_path, **{**OPTIONS, "bands": ["g", "r", "i", "z"], "success_band": "z"}),
                  catalog=cat, selected_catalog=str(out))
    with pytest.raises(CatalogError, match="kept no row of 5000"):
        run_stage("SpecSelection", cfg(tmp_path, **{**OPTIONS, "mag_limit": 17.0}), catalog=cat,
                  selected_catalog=str(out))
    assert not out.exists() and leftovers(tmp_path) == []


def test_stage_yaml_runs_and_every_option_is_commented(tmp_path):
    from pathlib import Path

    import calipers.stages  # noqa: F401
    from ceci import PipelineStage

    path = Path(__file__).resolve().parents[2] / "stages" / "photoz_specz.yml"
    text = path.read_text()
    section = yaml.safe_load(text)["SpecSelection"]
    cls = PipelineStage.get_stage("SpecSelection")
    assert set(section) == set(cls.config_options) - {"hdf5_groupname"}  # that one is in 'global'
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and line.startswith("  ") \
                and not stripped.startswith("targeting"):
            assert "#" in line, f"uncommented option: {line}"


# ------------------------------------------------------------------------------ DC2
def test_dc2_magnitude_limit_lowers_the_selected_fraction_and_median_redshift(tmp_path):
    from pathlib import Path

    src = read_catalog(DC2_TRAIN)
    z_all = np.median(src["redshift"])
    stage_yaml = str(Path(__file__).resolve().parents[2] / "stages" / "photoz_specz.yml")
    runs = {}
    for label, options in {"hard": {"redshift_success": "none"}, "logistic": {}}.items():
        config = yaml.safe_load(open(stage_yaml))
        config["SpecSelection"].update(options)
        path = tmp_path / f"{label}.yml"
        path.write_text(yaml.safe_dump(config))
        out = tmp_path / f"{label}.hdf5"
        run_stage("SpecSelection", str(path), catalog=DC2_TRAIN, selected_catalog=str(out))
        runs[label] = read_catalog(str(out))
        with h5py.File(out) as f:
            assert json.loads(f["provenance"].attrs["selection"])["n_input"] == len(src["redshift"])
    hard, soft = runs["hard"], runs["logistic"]
    # i < 23.5 alone: exactly the rows with i < 23.5 (DC2 i has no non-detections), ~25% of them
    np.testing.assert_array_equal(hard["id"], src["id"][src["mag_i_lsst"] < 23.5])
    frac = len(hard["id"]) / len(src["id"])
    assert 0.2 < frac < 0.3
    assert np.median(hard["redshift"]) < z_all - 0.1
    # redshift failures (50% at i = 23) thin the faint end further: a subset, brighter on average
    assert np.all(np.isin(soft["id"], hard["id"])) and len(soft["id"]) < 0.85 * len(hard["id"])
    assert np.mean(soft["mag_i_lsst"]) < np.mean(hard["mag_i_lsst"]) - 0.1
    assert np.median(soft["redshift"]) < z_all - 0.1
