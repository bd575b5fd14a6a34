"""Spectroscopic selection (calipers.photoz.selection): exact cuts, edges, success rates, seeds."""
import math

import numpy as np
import pytest

from calipers.photoz.selection import (
    NOT_DETECTED,
    NOT_TARGETED,
    REASONS,
    REDSHIFT_FAILED,
    ROW_BLOCK,
    SELECTED,
    SURVEY_TARGETING,
    ColourBox,
    LinearCut,
    LogisticSuccess,
    MagnitudeLimit,
    SpecSelection,
    Targeting,
    colour_cut,
    magnitude_table,
    row_uniforms,
    survey_targeting,
)
from conftest import mag_col

INF = math.inf


# ------------------------------------------------------------------------------ magnitude limit
def test_magnitude_limit_selects_exactly_the_expected_rows():
    i = np.array([18.0, 23.4999, 23.5, 23.5001, 25.0, 99.0, -99.0, INF, -INF, 16.9, 17.0, 23.0])
    sel = SpecSelection(cuts=(MagnitudeLimit("i", faint=23.5, bright=17.0),))
    res = sel.select({"i": i}, seed=0)
    expected = [True, True, False, False, False, False, False, False, False, False, False, True]
    assert res.mask.tolist() == expected
    # non-detections (99, -99, +-inf) are 'not_detected'; detected rows outside the limits 'not_targeted'
    assert res.reason.tolist() == [SELECTED, SELECTED, NOT_TARGETED, NOT_TARGETED, NOT_TARGETED, NOT_DETECTED,
                                   NOT_DETECTED, NOT_DETECTED, NOT_DETECTED, NOT_TARGETED, NOT_TARGETED, SELECTED]
    assert res.counts() == {"selected": 3, "not_detected": 4, "not_targeted": 5, "redshift_failed": 0}
    assert np.all(res.p_success == 1.0)


def test_non_detection_fails_even_a_bright_only_limit():
    # 99 > 20 numerically, but a non-detected galaxy has no measured magnitude: it fails
    i = np.array([21.0, 99.0, INF, 19.0, -99.0])
    assert MagnitudeLimit("i", bright=20.0).passes({"i": i}).tolist() == [True, False, False, False, False]


def test_two_d_array_input_equals_mapping_input():
    rng = np.random.default_rng(1)
    mags = rng.uniform(17, 26, size=(500, 3))
    sel = SpecSelection(cuts=(MagnitudeLimit("r", faint=23.0), colour_cut("g", "i", upper=1.0)),
                        success=(LogisticSuccess("i", 22.5, 0.3),))
    a = sel.select(mags, seed=3, bands=["g", "r", "i"])
    b = sel.select({"g": mags[:, 0], "r": mags[:, 1], "i": mags[:, 2]}, seed=3)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.reason, b.reason)
    expected_targeted = (mags[:, 1] < 23.0) & (mags[:, 0] - mags[:, 2] < 1.0)
    np.testing.assert_array_equal(a.targeted, expected_targeted)
    table = magnitude_table(mags.astype(np.float32), ["g", "r", "i"], needed=["i", "g"])
    assert list(table) == ["i", "g"] and table["i"].dtype == np.float64
    np.testing.assert_array_equal(table["i"], mags[:, 2].astype(np.float32))
    np.testing.assert_array_equal(a.targeted, expected_targeted)


# ------------------------------------------------------------------------------ survey colour boxes
# The published cuts, transcribed independently of the library's LinearCut form: each box is a
# list of edges (name, f(mags), lower, upper) meaning lower < f < upper.
def _c_par(m):
    return 0.7 * (m["g"] - m["r"]) + 1.2 * (m["r"] - m["i"] - 0.18)


def _c_perp(m):
    return (m["r"] - m["i"]) - (m["g"] - m["r"]) / 4.0 - 0.18


def _d_perp(m):
    return (m["r"] - m["i"]) - (m["g"] - m["r"]) / 8.0


PAPER_BOXES = {
    "boss": [
        [("r", lambda m: m["r"], 16.0, 20.0), ("c_perp", _c_perp, -0.2, 0.2),
         ("lowz sliding", lambda m: m["r"] - 13.35 - _c_par(m) / 0.3, -INF, 0.0)],
        [("i", lambda m: m["i"], 17.5, 20.1), ("d_perp", _d_perp, 0.55, INF),
         ("cmass sliding", lambda m: m["i"] - 19.98 - 1.6 * (_d_perp(m) - 0.7), -INF, 0.0),
         ("r-i", lambda m: m["r"] - m["i"], -INF, 2.0)],
    ],
    "deep2": [
        [("r", lambda m: m["r"], 18.5, 24.1),
         ("sloped", lambda m: (m["g"] - m["r"]) - (2.45 * (m["r"] - m["i"]) - 0.2976), -INF, 0.0)],
        [("r", lambda m: m["r"], 18.5, 24.1), ("r-i", lambda m: m["r"] - m["i"], 1.1, INF)],
        [("r", lambda m: m["r"], 18.5, 24.1), ("g-r", lambda m: m["g"] - m["r"], -INF, 0.5)],
    ],
    "gama": [[("r", lambda m: m["r"], -INF, 19.8)]],
    "zcosmos_bright": [[("i", lambda m: m["i"], 15.0, 22.5)]],
    "vvds_f02": [[("i", lambda m: m["i"], 17.5, 24.0)]],
}


def _paper_box(box, m):
    return np.logical_and.reduce([(lo < f(m)) & (f(m) < hi) for _, f, lo, hi in box])


def _paper_targeting(survey, m):
    return np.logical_or.reduce([_paper_box(box, m) for box in PAPER_BOXES[survey]])


def test_every_survey_has_an_independent_transcription():
    assert set(PAPER_BOXES) == set(SURVEY_TARGETING)
    for name, t in SURVEY_TARGETING.items():
        assert len(t.boxes) == len(PAPER_BOXES[name]) and t.reference


@pytest.mark.parametrize("survey", sorted(PAPER_BOXES))
def test_survey_targeting_matches_the_published_cuts_on_random_points(survey):
    rng = np.random.default_rng(2)
    n = 200_000
    base = rng.uniform(15.0, 25.0, n)
    # colours spread over the ranges the boxes care about
    m = {"i": base, "r": base + rng.uniform(-0.5, 2.5, n)}
    m["g"] = m["r"] + rng.uniform(-0.5, 3.0, n)
    t = survey_targeting(survey)
    got = t.passes(m)
    expected = _paper_targeting(survey, m)
    np.testing.assert_array_equal(got, expected)
    assert 0 < expected.sum() < n  # the random points straddle the boxes


@pytest.mark.parametrize("survey", sorted(PAPER_BOXES))
def test_points_just_inside_and_outside_every_edge(survey):
    """For each edge of each published box: a point 1e-6 inside it (all other edges of the box
    comfortably satisfied) is targeted; the point 1e-6 outside fails that box, and the library
    agrees with the published union there."""
    rng = np.random.default_rng(3)
    t = survey_targeting(survey)
    eps = 1e-6
    for k, box in enumerate(PAPER_BOXES[survey]):
        # an interior point: the random point whose smallest margin to any edge is largest
        n = 400_000
        base = rng.uniform(14.0, 26.0, n)
        cloud = {"i": base, "r": base + rng.uniform(-1.0, 3.0, n)}
        cloud["g"] = cloud["r"] + rng.uniform(-1.0, 4.0, n)
        margin = np.min([np.minimum(f(cloud) - lo, hi - f(cloud)) for _, f, lo, hi in box], axis=0)
        best = int(np.argmax(margin))
        assert margin[best] > 0.01, f"{survey} box {k}: no interior point found"
        x0 = {b: float(v[best]) for b, v in cloud.items()}
        for edge, f, lo, hi in box:
            for bound in (lo, hi):
                if not math.isfinite(bound):
                    continue
                found = False
                for _ in range(5000):
                    d = rng.normal(size=3)
                    d /= np.linalg.norm(d)
                    step = {b: x0[b] + d[j] for j, b in enumerate(("g", "r", "i"))}
                    f0 = f({b: np.array([v]) for b, v in x0.items()})[0]
                    slope = f({b: np.array([v]) for b, v in step.items()})[0] - f0  # f is linear
                    if abs(slope) < 0.1:
                        continue
                    t_edge = (bound - f0) / slope
                    # just inside: f = bound -+ eps on the x0 side; just outside: the other side
                    t_in, t_out = t_edge - math.copysign(eps, t_edge) / abs(slope), \
                        t_edge + math.copysign(eps, t_edge) / abs(slope)
                    pts = {b: np.array([x0[b] + t_in * d[j], x0[b] + t_out * d[j]])
                           for j, b in enumerate(("g", "r", "i"))}
                    others = [(lo2 + 1e-3 < g(pts)) & (g(pts) < hi2 - 1e-3)
                              for name2, g, lo2, hi2 in box if name2 != edge]
                    if others and not np.all(others):
                        continue
                    found = True
                    break
                assert found, f"{survey} box {k}: no point reaches edge {edge} = {bound}"
                val = f(pts)
                assert lo < val[0] < hi and not (lo < val[1] < hi), (survey, edge, val)
                assert abs(val[0] - bound) < 2 * eps and abs(val[1] - bound) < 2 * eps
                assert _paper_box(box, pts).tolist() == [True, False]
                lib_box = t.boxes[k].passes(pts)
                assert lib_box.tolist() == [True, False], f"{survey} box {k} edge {edge} = {bound}: {lib_box}"
                assert t.passes(pts).tolist() == _paper_targeting(survey, pts).tolist()


def test_deep2_hand_cases():
    t = survey_targeting("deep2")
    m = {"g": np.array([23.0, 24.0, 22.4, 23.0, 25.0]), "r": np.array([22.0, 22.0, 22.0, 22.0, 24.2]),
         "i": np.array([21.0, 21.5, 21.8, 20.8, 23.0])}
    # (1) g-r=1, r-i=1: 1 < 2.45 - 0.2976; (2) g-r=2, r-i=0.5: in no box; (3) g-r=0.4 < 0.5;
    # (4) r-i=1.2 > 1.1 (g-r=1 < 2.64 too); (5) r=24.2 is fainter than 24.1
    assert t.passes(m).tolist() == [True, False, True, True, False]


def test_strict_edges_and_non_detected_colours():
    cut = colour_cut("g", "r", lower=0.0, upper=0.5)
    m = {"g": np.array([20.5, 20.0, 20.25, 99.0, 20.25, 20.2]), "r": np.array([20.0, 20.0, 20.0, 20.0, 99.0, -99.0])}
    # g-r = 0.5 (on the edge: out), 0 (on the edge: out), 0.25 (in); g or r non-detected: out
    assert cut.passes(m).tolist() == [False, False, True, False, False, False]
    # with a lower bound only, g - r = 79 (g = 99) and 119.2 (r = -99) would pass numerically:
    # a non-detection fails anyway
    assert colour_cut("g", "r", lower=0.0).passes(m).tolist() == [True, False, True, False, False, False]
    box = ColourBox("b", (cut, MagnitudeLimit("r", faint=21.0)))
    assert box.passes(m).tolist() == [False, False, True, False, False, False]


def test_union_of_surveys_as_a_targeting():
    union = Targeting("gama+zcosmos", SURVEY_TARGETING["gama"].boxes + SURVEY_TARGETING["zcosmos_bright"].boxes)
    m = {"r": np.array([19.0, 21.0, 21.0, 19.0]), "i": np.array([22.6, 22.0, 23.0, 14.0])}
    assert union.passes(m).tolist() == [True, True, False, True]
    assert union.bands == ("r", "i")


def test_linear_cut_terms_add_per_band():
    # 'r - c/0.3' style formulas: r appears twice; coefficients add
    cut = LinearCut((("r", 1.0), ("r", 0.5), ("i", -1.0)), upper=10.0, offset=1.0)
    m = {"r": np.array([12.0, 13.0]), "i": np.array([10.0, 10.0])}
    np.testing.assert_allclose(cut.value(m), [1.5 * 12 - 10 + 1, 1.5 * 13 - 10 + 1])
    assert cut.passes(m).tolist() == [True, False]
    assert cut.bands == ("r", "i")


# ------------------------------------------------------------------------------ redshift success
def _logistic(m, m50, width, max_rate=1.0):
    return max_rate / (1.0 + math.exp((m - m50) / width))


def test_success_probability_is_the_analytic_logistic():
    model = LogisticSuccess("i", m50=23.0, width=0.25, max_rate=0.9)
    mags = np.array([15.0, 21.0, 22.5, 23.0, 23.0 + 0.25 * math.log(3.0), 23.4, 24.5, 40.0])
    p = model.probability({"i": mags})
    np.testing.assert_allclose(p, [_logistic(m, 23.0, 0.25, 0.9) for m in mags], rtol=1e-12, atol=1e-300)
    assert p[3] == pytest.approx(0.45, abs=1e-15)  # max_rate / 2 at m50
    assert p[4] == pytest.approx(0.9 / 4, rel=1e-12)  # 1 / (1 + 3)
    assert np.all(np.diff(p) < 0)
    # non-detections have no redshift: probability exactly 0
    assert model.probability({"i": np.array([99.0, -99.0, INF, -INF])}).tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("use_generator", [False, True])
def test_selected_fraction_matches_the_success_probability(use_generator):
    n = 200_000
    model = LogisticSuccess("i", m50=23.0, width=0.3, max_rate=0.95)
    sel = SpecSelection(success=(model,))
    for k, m in enumerate([21.5, 22.7, 23.0, 23.6]):
        p = _logistic(m, 23.0, 0.3, 0.95)
        seed = np.random.default_rng(11 + k) if use_generator else 11 + k
        res = sel.select({"i": np.full(n, m)}, seed=seed)
        frac = res.mask.mean()
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(frac - p) < 4 * sigma, (m, frac, p, sigma)
        np.testing.assert_allclose(res.p_success, p, rtol=1e-12)
        assert res.counts()["redshift_failed"] == n - res.mask.sum()


def test_success_models_multiply_and_only_targeted_rows_are_drawn():
    sel = SpecSelection(cuts=(MagnitudeLimit("i", faint=23.5),),
                        success=(LogisticSuccess("i", 23.0, 0.25), LogisticSuccess("r", 23.5, 0.5, 0.8)))
    m = {"i": np.array([22.0, 24.0, 23.2]), "r": np.array([22.5, 24.0, 99.0])}
    res = sel.select(m, seed=0)
    np.testing.assert_allclose(res.p_success[:2], [_logistic(22.0, 23.0, 0.25) * _logistic(22.5, 23.5, 0.5, 0.8),
                                                   _logistic(24.0, 23.0, 0.25) * _logistic(24.0, 23.5, 0.5, 0.8)])
    assert res.p_success[2] == 0.0  # r not detected: no redshift
    assert res.reason[1] == NOT_TARGETED and res.reason[2] == REDSHIFT_FAILED and not res.mask[2]


# ------------------------------------------------------------------------------ seeds and chunks
def test_same_seed_same_mask_different_seed_different():
    rng = np.random.default_rng(4)
    m = {"i": rng.uniform(21, 25, 20_000)}
    sel = SpecSelection(cuts=(MagnitudeLimit("i", faint=24.5),), success=(LogisticSuccess("i", 23.0, 0.4),))
    a, b, c = (sel.select(m, seed=s).mask for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert (a != c).sum() > 1000
    # a generator seed is reproducible too
    g1 = sel.select(m, seed=np.random.default_rng(7)).mask
    g2 = sel.select(m, seed=np.random.default_rng(7)).mask
    np.testing.assert_array_equal(g1, g2)


def test_row_draws_do_not_depend_on_chunking():
    n = 3 * ROW_BLOCK + 123
    whole = row_uniforms(5, 0, n)
    assert whole.min() >= 0 and whole.max() < 1 and 0.49 < whole.mean() < 0.51
    for sizes in ([1, ROW_BLOCK - 1, ROW_BLOCK + 1, n], [997] * (n // 997 + 1), [ROW_BLOCK] * 4):
        parts, start = [], 0
        for s in sizes:
            s = min(s, n - start)
            if s <= 0:
                break
            parts.append(row_uniforms(5, start, s))
            start += s
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert not np.array_equal(row_uniforms(6, 0, 100), whole[:100])


def test_selection_does_not_depend_on_chunking():
    rng = np.random.default_rng(8)
    n = 10_000
    m = {"g": rng.uniform(20, 26, n), "r": rng.uniform(19, 25, n), "i": rng.uniform(18, 25, n)}
    sel = SpecSelection(cuts=(MagnitudeLimit("i", faint=23.5), survey_targeting("deep2")),
                        success=(LogisticSuccess("i", 23.0, 0.25),))
    whole = sel.select(m, seed=9)
    parts = [sel.select({b: v[s:s + 777] for b, v in m.items()}, seed=9, first_row=s) for s in range(0, n, 777)]
    np.testing.assert_array_equal(np.concatenate([p.mask for p in parts]), whole.mask)
    np.testing.assert_array_equal(np.concatenate([p.reason for p in parts]), whole.reason)
    assert 0 < whole.mask.sum() < whole.targeted.sum()


# ------------------------------------------------------------------------------ bad input
def test_nan_is_an_error_naming_column_and_row_unless_asked_otherwise():
    i = np.array([20.0, 21.0, np.nan, 22.0, np.nan])
    sel = SpecSelection(cuts=(MagnitudeLimit("i", faint=23.5),))
    with pytest.raises(ValueError, match=r"'mag_i_lsst' is NaN at row 102 \(2 NaN row"):
        sel.select({"i": i}, seed=0, first_row=100, columns={"i": "'mag_i_lsst'"})
    lenient = SpecSelection(cuts=(MagnitudeLimit("i", faint=23.5),), nan_policy="nondetection")
    res = lenient.select({"i": i}, seed=0)
    assert res.mask.tolist() == [True, True, False, True, False]
    assert res.reason[2] == NOT_DETECTED and res.reason[4] == NOT_DETECTED


def test_bad_inputs_and_parameters_are_named():
    sel = SpecSelection(cuts=(survey_targeting("boss"),))
    with pytest.raises(ValueError, match=r"no magnitudes for band\(s\) \['g'\]"):
        sel.select({"r": np.ones(3), "i": np.ones(3)}, seed=0)
    with pytest.raises(ValueError, match="different numbers of rows .*band 'r': 2"):
        sel.select({"g": np.ones(3), "r": np.ones(2), "i": np.ones(3)}, seed=0)
    with pytest.raises(ValueError, match="holds <U1 values"):
        sel.select({"g": np.array(["a"]), "r": np.ones(1), "i": np.ones(1)}, seed=0)
    with pytest.raises(ValueError, match=r"shape \(4, 2\); expected \(n_rows, 3\)"):
        sel.select(np.ones((4, 2)), seed=0, bands=["g", "r", "i"])
    with pytest.raises(ValueError, match="needs `bands`"):
        sel.select(np.ones((4, 3)), seed=0)
    with pytest.raises(ValueError, match="bright limit 24.0 must be smaller"):
        MagnitudeLimit("i", faint=23.0, bright=24.0)
    with pytest.raises(ValueError, match="width must be > 0"):
        LogisticSuccess("i", 23.0, 0.0)
    with pytest.raises(ValueError, match=r"max_rate must be in \(0, 1\]"):
        LogisticSuccess("i", 23.0, 0.2, max_rate=1.5)
    with pytest.raises(ValueError, match="m50 must be a finite number"):
        LogisticSuccess("i", float("nan"), 0.2)
    with pytest.raises(ValueError, match="unknown survey targeting 'sdss'"):
        survey_targeting("sdss")
    with pytest.raises(ValueError, match="nan_policy"):
        SpecSelection(nan_policy="ignore")
    with pytest.raises(ValueError, match="lower bound 1.0 must be smaller"):
        colour_cut("g", "r", lower=1.0, upper=0.5)
    with pytest.raises(ValueError, match="at least one"):
        LinearCut(())
    with pytest.raises(ValueError, match="seed, stream"):
        row_uniforms(-1, 0, 3)


def test_reason_names_cover_the_codes():
    assert REASONS[SELECTED] == "selected" and REASONS[NOT_DETECTED] == "not_detected"
    assert REASONS[NOT_TARGETED] == "not_targeted" and REASONS[REDSHIFT_FAILED] == "redshift_failed"


# ------------------------------------------------------------------------------ DC2
def test_dc2_selections_bias_the_redshift_distribution(dc2):
    mags = {b: dc2[mag_col(b)] for b in "ugrizy"}
    z = dc2["redshift"]
    z_all = np.median(z)
    i_lim = SpecSelection(cuts=(MagnitudeLimit("i", faint=23.5),)).select(mags, seed=0)
    np.testing.assert_array_equal(i_lim.mask, mags["i"] < 23.5)  # DC2 i has no non-detections
    assert 0.2 < i_lim.mask.mean() < 0.3
    assert np.median(z[i_lim.mask]) < z_all - 0.1
    # redshift failures remove the faint (higher-z) end of the magnitude-limited sample
    inc = SpecSelection(cuts=(MagnitudeLimit("i", faint=23.5),),
                        success=(LogisticSuccess("i", 23.0, 0.25),)).select(mags, seed=0)
    assert inc.mask.sum() < i_lim.mask.sum() and not np.any(inc.mask & ~i_lim.mask)
    assert np.mean(mags["i"][inc.mask]) < np.mean(mags["i"][i_lim.mask]) - 0.1
    # DEEP2's colour pre-selection keeps z > 0.7 galaxies: higher median z than its r window alone
    deep2 = survey_targeting("deep2").passes(mags)
    r_window = (mags["r"] > 18.5) & (mags["r"] < 24.1)
    assert np.median(z[deep2]) > np.median(z[r_window]) + 0.1
    # GAMA (r < 19.8) is a bright, low-redshift sample
    gama = survey_targeting("gama").passes(mags)
    assert 10 < gama.sum() < 0.02 * len(z) and np.median(z[gama]) < 0.4
