"""Selection function: completeness tables (1-D and 2-D) with exact counts, insufficient-data
flags, errors naming the column, FPR per class of negative, JSON round trip, monotonicity."""
from __future__ import annotations

import json

import numpy as np
import pytest

from calipers.validate.classification import threshold_at_fpr
from calipers.validate.selection_function import (
    SelectionFunction,
    clopper_pearson,
    completeness_table,
    completeness_table_2d,
    fpr_by_class,
    is_monotone_increasing,
    selection_function,
)


def test_clopper_pearson_is_vectorised_and_handles_empty_bins():
    k, n = np.array([0, 3, 10, 0]), np.array([10, 10, 10, 0])
    lo, hi = clopper_pearson(k, n)
    for i in range(4):
        assert (lo[i], hi[i]) == clopper_pearson(int(k[i]), int(n[i]))
    assert lo[0] == 0 and hi[2] == 1 and (lo[3], hi[3]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(5, 3)


def test_completeness_table_exact_counts_edges_and_insufficient_bins():
    values = np.array([0.5, 0.5, 1.0, 1.5, 1.5, 2.5, 3.0, -1.0])
    scores = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0])  # 0.5 == threshold: not selected
    rows = completeness_table(scores, 0.5, values, [0, 1, 2, 3], min_count=2, name="theta_e")
    assert [(r["n"], r["k"]) for r in rows] == [(2, 1), (3, 2), (1, 1)]  # 1.0 -> 2nd bin; 3.0, -1.0 -> none
    assert rows[0]["completeness"] == 0.5 and rows[1]["completeness"] == pytest.approx(2 / 3)
    assert rows[0]["status"] == rows[1]["status"] == "ok"
    lo, hi = clopper_pearson(2, 3)
    assert (rows[1]["lo"], rows[1]["hi"], rows[1]["half_width"]) == pytest.approx((lo, hi, (hi - lo) / 2))
    r = rows[2]
    assert r["status"] == "insufficient data" and (r["n"], r["k"]) == (1, 1)
    assert np.isnan(r["completeness"]) and np.isnan(r["lo"]) and np.isnan(r["hi"])
    assert (rows[0]["edge_lo"], rows[0]["edge_hi"], rows[0]["name"]) == (0.0, 1.0, "theta_e")


def test_completeness_table_errors_name_the_column():
    with pytest.raises(ValueError, match="'psf_fwhm_r'.*first at row 2"):
        completeness_table(np.ones(3), 0.5, np.array([0.7, 0.8, np.nan]), [0, 1], name="psf_fwhm_r")
    with pytest.raises(ValueError, match="'theta_e'.*strictly increasing"):
        completeness_table(np.ones(3), 0.5, np.ones(3), [0, 2, 1], name="theta_e")
    with pytest.raises(ValueError, match="differ in length"):
        completeness_table(np.ones(3), 0.5, np.ones(4), [0, 2], name="theta_e")


def test_completeness_table_2d_exact_counts():
    x = np.array([0.1, 0.1, 0.1, 0.6, 0.6, 0.9, 0.2])
    y = np.array([1.5, 1.5, 0.5, 0.5, 0.5, 1.9, 5.0])  # the last is outside the y edges
    s = np.array([1, 0, 1, 1, 1, 0, 1], dtype=float)
    t = completeness_table_2d(s, 0.5, x, [0, 0.5, 1.0], y, [0, 1, 2], min_count=2, name_x="psf", name_y="theta")
    assert t["n"].tolist() == [[1, 2], [2, 1]]
    assert t["k"].tolist() == [[1, 1], [2, 0]]
    assert t["status"].tolist() == [["insufficient data", "ok"], ["ok", "insufficient data"]]
    assert t["completeness"][0, 1] == 0.5 and t["completeness"][1, 0] == 1.0
    assert np.isnan(t["completeness"][0, 0]) and np.isnan(t["completeness"][1, 1])
    assert t["n_outside"] == 1 and t["edges_x"].tolist() == [0, 0.5, 1.0]
    with pytest.raises(ValueError, match="'theta'"):
        completeness_table_2d(s, 0.5, x, [0, 1], np.r_[y[:-1], np.nan], [0, 1], name_x="psf", name_y="theta")


def test_fpr_by_class_exact_counts_codes_and_names():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.95])
    codes = np.array([0, 0, 1, 1, 1, 0])
    rows = fpr_by_class(scores, 0.75, codes, ["spiral", "ring", "merger"])
    assert [(r["class"], r["n"], r["k"]) for r in rows] == [("spiral", 3, 2), ("ring", 3, 1), ("merger", 0, 0)]
    assert rows[0]["fpr"] == pytest.approx(2 / 3) and rows[1]["fpr"] == pytest.approx(1 / 3)
    assert np.isnan(rows[2]["fpr"]) and (rows[2]["lo"], rows[2]["hi"]) == (0.0, 1.0)
    assert (rows[1]["lo"], rows[1]["hi"]) == pytest.approx(clopper_pearson(1, 3))
    names = np.array(["spiral", "spiral", "ring", "ring", "ring", "spiral"])
    by_name = fpr_by_class(scores, 0.75, names, ["spiral", "ring", "merger"])
    assert by_name[:2] == rows[:2] and (by_name[2]["n"], by_name[2]["k"]) == (0, 0)
    with pytest.raises(ValueError, match="not an index"):
        fpr_by_class(scores, 0.75, codes + 5, ["spiral", "ring"])
    with pytest.raises(ValueError, match="'elliptical'"):
        fpr_by_class(scores, 0.75, np.append(names[:-1], "elliptical"), ["spiral", "ring"])


def _simulated(rng, n_lens=6000, n_neg=20_000):
    theta = rng.uniform(0.5, 2.5, n_lens)
    psf = rng.uniform(0.6, 1.2, n_lens)
    # detectability rises with theta_E and falls with seeing
    lens_scores = rng.normal(2.5 * (theta - 1.0) - 2.0 * (psf - 0.9), 1.0)
    neg_scores = rng.normal(-2.0, 1.0, n_neg)
    neg_classes = rng.integers(0, 3, n_neg)
    return lens_scores, {"theta_e": theta, "psf_fwhm_r": psf}, neg_scores, neg_classes


def test_selection_function_end_to_end_json_round_trip_and_monotone_theta_e():
    rng = np.random.default_rng(0)
    lens_scores, meta, neg_scores, neg_classes = _simulated(rng)
    strata = {"theta_e": np.linspace(0.5, 2.5, 6), "psf_fwhm_r": [0.6, 0.8, 1.0, 1.2]}
    sf = selection_function(lens_scores, meta, neg_scores, neg_classes, ["spiral", "ring", "merger"],
                            fpr_target=1e-3, strata=strata, min_count=50)
    assert sf.threshold == threshold_at_fpr(neg_scores, 1e-3)
    assert sf.fpr == np.sum(neg_scores > sf.threshold) / neg_scores.size <= 1e-3
    assert sum(r["n"] for r in sf.strata["theta_e"]) == 6000
    assert sum(r["k"] for r in sf.strata["theta_e"]) == np.sum(lens_scores > sf.threshold)
    assert sum(r["n"] for r in sf.fpr_classes) == 20_000
    table2d = sf.two_d["psf_fwhm_r__theta_e"]
    assert table2d["n"].shape == (3, 5) and table2d["n"].sum() == 6000
    assert is_monotone_increasing(sf.strata["theta_e"])
    assert not is_monotone_increasing(list(reversed(sf.strata["theta_e"])))
    text = json.dumps(sf.to_dict(), allow_nan=False)  # NaN -> null
    back = SelectionFunction.from_dict(json.loads(text))
    assert back.threshold == sf.threshold and back.fpr_classes == sf.fpr_classes
    assert back.strata.keys() == sf.strata.keys()
    for a, b in zip(back.strata["theta_e"], sf.strata["theta_e"]):
        for key in a:
            assert a[key] == b[key] or (np.isnan(a[key]) and np.isnan(b[key]))
    for key in ("n", "k", "completeness", "lo", "hi", "status"):
        np.testing.assert_array_equal(back.two_d["psf_fwhm_r__theta_e"][key], table2d[key])


def test_selection_function_insufficient_cells_become_null_in_json():
    rng = np.random.default_rng(1)
    lens_scores, meta, neg_scores, neg_classes = _simulated(rng, n_lens=300, n_neg=2000)
    sf = selection_function(lens_scores, meta, neg_scores, neg_classes, ["a", "b", "c"], fpr_target=1e-2,
                            strata={"theta_e": np.linspace(0.5, 2.5, 11), "psf_fwhm_r": [0.6, 0.9, 1.2]},
                            min_count=50)
    statuses = {r["status"] for r in sf.strata["theta_e"]}
    assert statuses == {"insufficient data"}  # about 30 lenses per bin
    d = sf.to_dict()
    assert all(r["completeness"] is None for r in d["strata"]["theta_e"])
    with pytest.raises(ValueError, match="at least 2 bins"):
        is_monotone_increasing(sf.strata["theta_e"])


def test_selection_function_missing_or_nan_columns_are_named():
    rng = np.random.default_rng(2)
    lens_scores, meta, neg_scores, neg_classes = _simulated(rng, n_lens=100, n_neg=2000)
    with pytest.raises(KeyError, match=r"'lens_mag'.*\['psf_fwhm_r', 'theta_e'\]"):
        selection_function(lens_scores, meta, neg_scores, neg_classes, ["a", "b", "c"],
                           strata={"lens_mag": [18, 20, 22], "theta_e": [0.5, 2.5], "psf_fwhm_r": [0.6, 1.2]})
    with pytest.raises(ValueError, match="'psf_fwhm_r'"):
        selection_function(lens_scores, meta, neg_scores, neg_classes, ["a", "b", "c"], strata={"theta_e": [0.5, 2.5]})
    meta_nan = dict(meta, theta_e=np.r_[np.nan, meta["theta_e"][1:]])
    with pytest.raises(ValueError, match="'theta_e'.*row 0"):
        selection_function(lens_scores, meta_nan, neg_scores, neg_classes, ["a", "b", "c"],
                           strata={"theta_e": [0.5, 2.5]}, pairs=())
    with pytest.raises(ValueError, match="needs at least 10000 negatives"):
        selection_function(lens_scores, meta, neg_scores, neg_classes, ["a", "b", "c"], fpr_target=1e-4,
                           strata={"theta_e": [0.5, 2.5]}, pairs=())


def test_monotone_check_tolerates_noise_but_not_a_real_drop():
    def table(ks, n=400):
        return [{"n": n, "k": k, "status": "ok"} for k in ks]

    assert is_monotone_increasing(table([100, 200, 300, 390]))
    assert is_monotone_increasing(table([200, 195, 205]))  # flat within noise
    assert is_monotone_increasing(table([400, 400, 400]))  # saturated
    assert not is_monotone_increasing(table([100, 300, 200]))
    skipped = table([100, 300]) + [{"n": 10, "k": 0, "status": "insufficient data"}] + table([350])
    assert is_monotone_increasing(skipped)
