"""SpecSelection (exactly the selected rows, chunk-independent, config errors, DC2 bias), ShiftWeights
(mean-1 weights, ESS, collapse) and ActiveSpecZSelect (BALD = validate.support, cost, budget, seeds)."""
import json

import h5py
import numpy as np
import pytest
import yaml

from calipers.calibrate.shift_weights import WeightCollapseError
from calipers.core.errors import CatalogError, ConfigError, ModelMismatchError
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
    for stage in ("SpecSelection", "ShiftWeights", "ActiveSpecZSelect"):
        section = yaml.safe_load(text)[stage]
        cls = PipelineStage.get_stage(stage)
        assert set(section) == set(cls.config_options) - {"hdf5_groupname"}, stage  # that one is in 'global'
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


# ------------------------------------------------------------------------------ ShiftWeights
def stage_cfg(tmp_path, stage, name="cfg.yml", **options):
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"global": {"hdf5_groupname": "photometry"}, stage: options}))
    return str(p)


def _photometry(n, seed, faint_shift=0.0, truth=True):
    """g, r, i (+ errors) of a Gaussian population; ``faint_shift`` moves every magnitude fainter."""
    rng = np.random.default_rng(seed)
    i = rng.normal(22.0 + faint_shift, 0.8, n)
    r = i + rng.normal(0.4, 0.2, n)
    g = r + rng.normal(0.6, 0.3, n)
    cols = {"id": np.arange(n, dtype=np.int64) + 1000 * seed}
    for band, m in zip("gri", (g, r, i)):
        cols[f"mag_{band}_lsst"] = m.astype(np.float32)
        cols[f"mag_err_{band}_lsst"] = np.full(n, 0.05, np.float32)
    if truth:
        cols["redshift"] = np.clip(0.3 * (i - 20.0), 0.01, None)
    return cols


SW = {"seed": 1, "bands": ["g", "r", "i"], "n_folds": 3}


def _run_shift(tmp_path, labelled, target, tag="w", **options):
    out, report = tmp_path / f"{tag}.hdf5", tmp_path / f"{tag}_report"
    run_stage("ShiftWeights", stage_cfg(tmp_path, "ShiftWeights", f"{tag}.yml", **{**SW, **options}),
              labelled_catalog=labelled, target_catalog=target, weighted_catalog=str(out),
              shift_weights_report=str(report))
    return read_catalog(str(out)), json.loads((report / "report.json").read_text()), out, report


@pytest.fixture()
def labelled(tmp_path):
    return write_catalog(tmp_path / "lab.hdf5", _photometry(600, 0))


def test_shift_weights_of_the_labelled_sample_itself_are_one(tmp_path, labelled):
    src = read_catalog(labelled)
    same = {k: v for k, v in src.items() if k != "redshift"}  # the labelled sample, photometry only
    target = write_catalog(tmp_path / "tgt.hdf5", same)
    got, report, out, report_dir = _run_shift(tmp_path, labelled, target)
    # the labelled columns, rows and order unchanged, plus the weight column
    assert set(got) == set(src) | {"shift_weight"}
    for k in src:
        assert got[k].dtype == src[k].dtype
        np.testing.assert_array_equal(got[k], src[k])
    w = got["shift_weight"]
    assert w.dtype == np.float64 and np.all(w > 0)
    assert np.mean(w) == pytest.approx(1.0, abs=1e-12)
    metrics = report["metrics"]
    assert metrics["ess_fraction"] > 0.9 and metrics["n_labelled"] == 600 and metrics["method"] == "classifier"
    assert metrics["ess"] == pytest.approx(w.sum() ** 2 / np.sum(w * w))
    assert metrics["n_clipped"] == 0 and report["passed"] is True
    assert (report_dir / "log_weights.png").stat().st_size > 0 and (report_dir / "index.html").exists()
    prov = read_provenance(str(out))
    assert prov["stage"] == "ShiftWeights" and json.loads(prov["shift_weights"])["ess"] == pytest.approx(metrics["ess"])
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("method", ["classifier", "knn"])
def test_shifted_target_weights_rows_like_the_target_more(tmp_path, labelled, method):
    target = write_catalog(tmp_path / "tgt.hdf5", _photometry(800, 5, faint_shift=0.6, truth=False))
    got, report, _, _ = _run_shift(tmp_path, labelled, target, method=method, clip_quantile=0.99)
    w, i = got["shift_weight"], got["mag_i_lsst"]
    assert np.mean(w) == pytest.approx(1.0, abs=1e-12)
    # the target is fainter: the faint labelled rows carry the weight
    faint, bright = i > np.quantile(i, 0.75), i < np.quantile(i, 0.25)
    assert np.mean(w[faint]) > 2 * np.mean(w[bright])
    assert np.corrcoef(w, i)[0, 1] > 0.5
    assert 0.05 < report["metrics"]["ess_fraction"] < 0.9
    assert report["metrics"]["n_clipped"] >= 1 and report["metrics"]["clip_ratio"] is not None


def test_weight_collapse_names_stage_and_files_and_leaves_no_output(tmp_path, labelled):
    target = write_catalog(tmp_path / "far.hdf5", _photometry(600, 7, faint_shift=3.0, truth=False))
    with pytest.raises(WeightCollapseError, match=r"stage ShiftWeights.*lab\.hdf5.*far\.hdf5.*effective sample size"):
        _run_shift(tmp_path, labelled, target, min_ess_fraction=0.3)
    assert not (tmp_path / "w.hdf5").exists() and not (tmp_path / "w_report").exists()
    assert leftovers(tmp_path) == []


def test_target_without_a_configured_band_is_an_error_naming_file_and_column(tmp_path):
    cols = _photometry(300, 0)
    cols["mag_z_lsst"], cols["mag_err_z_lsst"] = cols["mag_i_lsst"] - 0.2, cols["mag_err_i_lsst"]
    labelled = write_catalog(tmp_path / "lab.hdf5", cols)
    target = write_catalog(tmp_path / "tgt.hdf5", _photometry(300, 3, truth=False))  # no z band
    with pytest.raises(CatalogError, match=r"target_catalog .*tgt\.hdf5.*missing column\(s\) \['mag_z_lsst', "
                                           r"'mag_err_z_lsst'\]"):
        _run_shift(tmp_path, labelled, target, bands=["g", "r", "i", "z"])
    assert leftovers(tmp_path) == [] and not (tmp_path / "w.hdf5").exists()
    # a weight column the labelled catalog already has is refused, not overwritten
    with pytest.raises(ConfigError, match=r"'weight_column' = 'redshift'.*lab\.hdf5"):
        _run_shift(tmp_path, labelled, labelled, weight_column="redshift")


# ------------------------------------------------------------------------------ ActiveSpecZSelect
N_POOL = 300


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_model_dir):
    """(pool catalog, its mixmod p(z) from PZEstimate, the model) for 300 DC2 galaxies."""
    from conftest import random_rows, subset, write_config

    d = tmp_path_factory.mktemp("pool")
    src = read_catalog(DC2_TRAIN)
    cols = subset(src, random_rows(len(src["id"]), N_POOL, seed=11), drop=("redshift",))
    cols["texp"] = np.random.default_rng(3).uniform(0.5, 3.0, N_POOL)
    cat = write_catalog(d / "pool.hdf5", cols)
    pz = d / "pool_pz.hdf5"
    run_stage("PZEstimate", write_config(d / "est.yml", estimate={"chunk_size": 100, "point_estimates": ["zmean"]}),
              model=tiny_model_dir,
              catalog=cat, pz=str(pz))
    return cat, str(pz), tiny_model_dir


AS = {"seed": 2, "method": "bald", "batch": "topk", "batch_size": 20, "chunk_size": 37, "nzbins": 201}


def _select(tmp_path, pool, tag="t", catalog_path=None, model=None, **options):
    cat, pz, model_dir = pool
    out = tmp_path / f"{tag}.hdf5"
    run_stage("ActiveSpecZSelect", stage_cfg(tmp_path, "ActiveSpecZSelect", f"{tag}.yml", **{**AS, **options}),
              pz=pz, catalog=catalog_path or cat, model=model or model_dir, targets=str(out))
    return read_catalog(str(out)), out


def _bald_of_file(pz, n_members, zgrid):
    from calipers.validate.support import ensemble_entropies

    with h5py.File(pz) as f:
        w, mu, s = (f["data"][k][:] for k in ("weights", "means", "stds"))
    return ensemble_entropies(w, mu, s, n_members, zgrid)


def test_bald_topk_targets_are_the_best_priorities_with_support_mutual_information(tmp_path, pool):
    from calipers.active.acquisition import exposure_cost
    from calipers.core.models import load_model

    cat, pz, model_dir = pool
    got, out = _select(tmp_path, pool)
    src = read_catalog(cat)
    rows = got["row"]
    assert len(rows) == 20 and len(np.unique(rows)) == 20
    np.testing.assert_array_equal(got["rank"], np.arange(1, 21))  # 1 = observe first
    np.testing.assert_array_equal(got["id"], src["id"][rows])
    # the score is validate.support's mutual information of the same p(z), member by member (to
    # float32 rounding: qp renormalises the stored float32 mixture weights when it reads them)
    n_members = load_model(model_dir).config.n_members
    assert n_members == 2
    bald = _bald_of_file(pz, n_members, np.linspace(0.0, 3.0, 201)).epistemic
    np.testing.assert_allclose(got["score"], bald[rows], rtol=1e-6)
    # the cost is the exposure time of the i magnitude, and the batch the top-20 BALD per unit cost
    cost = exposure_cost(src["mag_i_lsst"], ref_mag=22.5)
    np.testing.assert_allclose(got["cost"], cost[rows], rtol=1e-12)
    np.testing.assert_array_equal(rows, np.argsort(-(bald / cost), kind="stable")[:20])
    assert np.all(np.diff(got["priority"]) <= 0)
    np.testing.assert_allclose(got["cumulative_cost"], np.cumsum(cost[rows]))
    prov = read_provenance(str(out))
    summary = json.loads(prov["selection"])
    assert prov["stage"] == "ActiveSpecZSelect" and summary["n_members"] == 2 and summary["n_selected"] == 20
    # entropy scores: the total entropy of the same decomposition
    got, _ = _select(tmp_path, pool, "ent", method="entropy", chunk_size=1000)
    total = _bald_of_file(pz, n_members, np.linspace(0.0, 3.0, 201)).total
    np.testing.assert_allclose(got["score"], total[got["row"]], rtol=1e-6)


def test_budget_is_respected_with_a_cost_column(tmp_path, pool):
    got, _ = _select(tmp_path, pool, batch_size=0, budget=6.0, cost_column="texp")
    cost = read_catalog(pool[0])["texp"]
    np.testing.assert_array_equal(got["cost"], cost[got["row"]])
    total = got["cost"].sum()
    assert 1 < len(got["row"]) < N_POOL and total <= 6.0
    # greedy knapsack: no candidate left out would still fit
    left = np.setdiff1d(np.arange(N_POOL), got["row"])
    assert np.all(cost[left] > 6.0 - total)
    with pytest.raises(ConfigError, match="'budget' = 0.1 is below the cost of the cheapest candidate"):
        _select(tmp_path, pool, "b2", batch_size=0, budget=0.1, cost_column="texp")


def test_negative_cost_names_file_column_and_row_before_reading_pz(tmp_path, pool):
    cols = read_catalog(pool[0])
    cols["texp"][123] = -1.0
    bad = write_catalog(tmp_path / "badcost.hdf5", cols)
    out = tmp_path / "t.hdf5"
    # checked first: not even a p(z) file that does not match the catalog is looked at
    with pytest.raises(CatalogError, match=r"badcost\.hdf5: column 'texp' .*cost -1 at row 123"):
        run_stage("ActiveSpecZSelect", stage_cfg(tmp_path, "ActiveSpecZSelect", **AS, cost_column="texp"),
                  pz=bad, catalog=bad, model=pool[2], targets=str(out))
    cols["texp"][123], cols["texp"][200] = 1.0, np.nan
    nan = write_catalog(tmp_path / "nancost.hdf5", cols)
    with pytest.raises(CatalogError, match=r"nancost\.hdf5: column 'texp' .*cost nan at row 200"):
        _select(tmp_path, pool, catalog_path=nan, cost_column="texp")
    # the exposure-time cost of a cost-band non-detection
    cols["mag_i_lsst"][77] = 99.0
    undetected = write_catalog(tmp_path / "undetected.hdf5", cols)
    with pytest.raises(CatalogError, match=r"undetected\.hdf5: column 'mag_i_lsst' .*no detected magnitude at row 77"):
        _select(tmp_path, pool, catalog_path=undetected)
    assert not out.exists() and leftovers(tmp_path) == []


def test_same_seed_same_targets_and_chunks_do_not_matter(tmp_path, pool):
    runs = [_select(tmp_path, pool, f"p{k}", batch="power", seed=seed, chunk_size=chunk)[0]
            for k, (seed, chunk) in enumerate([(4, 37), (4, 1000), (5, 37)])]
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
    assert not np.array_equal(runs[0]["row"], runs[2]["row"])
    assert len(np.unique(runs[0]["row"])) == 20
    # random scores: seeded over the whole pool, whatever the chunks
    a = _select(tmp_path, pool, "r1", method="random", chunk_size=50)[0]
    b = _select(tmp_path, pool, "r2", method="random", chunk_size=300)[0]
    np.testing.assert_array_equal(a["row"], b["row"])
    # kmeans: a diverse batch of distinct rows, reproducible
    k1 = _select(tmp_path, pool, "k1", batch="kmeans", batch_size=6, pool_factor=5)[0]
    k2 = _select(tmp_path, pool, "k2", batch="kmeans", batch_size=6, pool_factor=5)[0]
    assert len(np.unique(k1["row"])) == 6
    np.testing.assert_array_equal(k1["row"], k2["row"])


def test_pz_of_another_model_is_refused(tmp_path, pool, griz_model_dir):
    with pytest.raises(ModelMismatchError, match="give the model PZEstimate used"):
        _select(tmp_path, pool, model=griz_model_dir)
    assert leftovers(tmp_path) == []
