"""Retrospective active-learning loop (calipers.active.loop) and the DC2 benchmark built on it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calipers.active.loop import curve_at, first_reach, simulate_active_learning
from conftest import subprocess_env

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


# ---------------------------------------------------------------- the loop, with a tiny fake model

class MeanModel:
    """A 'model' that predicts the mean label of its training rows."""

    def __init__(self, rows, labels):
        self.rows = rows
        self.mean = float(labels[rows].mean())


def run(n_pool=20, initial=(0, 1), batch=3, rounds=4, cost=None, acquire=None):
    labels = np.arange(n_pool, dtype=float)
    seen = []

    def fit(rows):
        return MeanModel(rows, labels)

    def evaluate(model):
        return {"error": abs(model.mean - labels.mean())}

    def largest(model, candidates, batch_size, round_):
        seen.append((model, candidates, batch_size, round_))
        return candidates[::-1][:batch_size]  # the largest labels first

    out = list(simulate_active_learning(np.array(initial), n_pool, fit=fit, evaluate=evaluate,
                                        acquire=acquire or largest, batch_size=batch, n_rounds=rounds, cost=cost))
    return out, seen, labels


def test_loop_grows_the_labelled_set_by_the_acquired_rows():
    """Rounds 0..3 train on 2, 5, 8, 11 labels: the initial rows, then each round's acquisition
    (here the largest remaining labels) appended in order; acquire sees that round's model and
    exactly the unlabelled rows; the metrics are those of each round's model."""
    rounds, seen, labels = run()
    assert [r.round for r in rounds] == [0, 1, 2, 3]
    assert [r.n_labels for r in rounds] == [2, 5, 8, 11]
    np.testing.assert_array_equal(rounds[-1].rows, [0, 1, 19, 18, 17, 16, 15, 14, 13, 12, 11])
    for r in rounds:
        assert r.model.rows.tolist() == r.rows.tolist()
        assert r.metrics["error"] == pytest.approx(abs(labels[r.rows].mean() - labels.mean()))
        assert r.cost == r.n_labels  # no cost given: the count
    assert len(seen) == 3  # no acquisition after the last round
    for (model, candidates, batch, k), r in zip(seen, rounds):
        assert model is r.model and batch == 3 and k == r.round
        np.testing.assert_array_equal(candidates, np.setdiff1d(np.arange(20), r.rows))


def test_loop_sums_the_cost_of_the_labelled_rows():
    cost = np.linspace(1.0, 2.9, 20)
    rounds, _, _ = run(cost=cost)
    for r in rounds:
        assert r.cost == pytest.approx(cost[r.rows].sum(), rel=1e-14)


def test_loop_yields_each_round_before_acquiring_the_next():
    """A generator: a caller logs round r before round r's acquisition runs."""
    calls = []

    def acquire(model, candidates, batch, round_):
        calls.append(round_)
        return candidates[:batch]

    loop = simulate_active_learning(np.array([0]), 10, fit=lambda rows: rows, evaluate=lambda m: {},
                                    acquire=acquire, batch_size=2, n_rounds=3)
    first = next(loop)
    assert first.round == 0 and calls == []
    next(loop)
    assert calls == [0]


def test_one_round_trains_once_and_never_acquires():
    rounds, seen, _ = run(rounds=1)
    assert len(rounds) == 1 and seen == []


@pytest.mark.parametrize("bad, message", [
    (lambda m, c, b, r: c[:b - 1], "returned 2 rows, expected 3"),
    (lambda m, c, b, r: np.array([0, c[0], c[1]]), "row 0, which is labelled already"),
    (lambda m, c, b, r: np.array([c[0], c[0], c[1]]), "appears more than once"),
    (lambda m, c, b, r: np.array([c[0], c[1], 99]), "row 99 .* outside the pool of 20"),
    (lambda m, c, b, r: c[:b].astype(float), "integer pool rows"),
])
def test_loop_refuses_a_bad_acquisition_naming_round_and_row(bad, message):
    with pytest.raises(ValueError, match=f"round 0: .*{message}"):
        run(acquire=bad)


def test_loop_refuses_bad_setups():
    with pytest.raises(ValueError, match="need 11 pool rows; the pool has 10"):
        run(n_pool=10)
    with pytest.raises(ValueError, match="initial rows: row 1 appears more than once"):
        run(initial=(1, 1))
    with pytest.raises(ValueError, match="at least one labelled row"):
        run(initial=np.array([], dtype=int))
    with pytest.raises(ValueError, match="cost must be finite and positive: 1 pool row.*first row 4"):
        run(cost=np.where(np.arange(20) == 4, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"cost must be \(20,\)"):
        run(cost=np.ones(19))
    with pytest.raises(ValueError, match="batch_size"):
        run(batch=0)
    with pytest.raises(ValueError, match="n_rounds"):
        run(rounds=0)


# ---------------------------------------------------------------- reading learning curves

def test_curve_at_interpolates_and_never_extrapolates():
    x, y = [1.0, 2.0, 4.0], [10.0, 6.0, 2.0]
    np.testing.assert_allclose(curve_at(x, y, [1.0, 1.5, 3.0, 4.0]), [10.0, 8.0, 4.0, 2.0], rtol=1e-15)
    assert np.isnan(curve_at(x, y, [0.5, 4.5])).all()
    assert curve_at(x, y, 3.0).shape == ()
    with pytest.raises(ValueError, match="increase strictly"):
        curve_at([1.0, 1.0, 2.0], y, 1.5)
    with pytest.raises(ValueError, match="finite"):
        curve_at(x, [1.0, np.nan, 2.0], 1.5)


def test_first_reach_is_the_first_crossing_of_the_piecewise_linear_curve():
    x, y = [0.0, 10.0, 20.0], [1.0, 0.5, 0.2]
    assert first_reach(x, y, 0.35) == pytest.approx(15.0, rel=1e-14)  # 10 + (0.5 - 0.35) / 0.3 * 10
    assert first_reach(x, y, 0.5) == 10.0
    assert first_reach(x, y, 2.0) == 0.0  # already there at the start
    assert np.isnan(first_reach(x, y, 0.1))  # never
    # not monotone: the first crossing counts, not a later one
    assert first_reach([0.0, 1.0, 2.0, 3.0], [1.0, 0.2, 0.8, 0.1], 0.5) == pytest.approx(0.625, rel=1e-14)


# ---------------------------------------------------------------- the DC2 benchmark

def load_benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import active_dc2
    finally:
        sys.path.remove(str(BENCHMARKS))
    return active_dc2


def synthetic_curve(method, labels, cost, crps, cde):
    return {"method": method, "labels": labels, "cost_mean": cost, "crps_mean": crps, "cde_loss_mean": cde,
            "cde_loss_final_per_seed": {0: cde[-1]}}


def test_benchmark_acceptance_numbers_on_known_curves():
    """Random ends at CRPS 0.05 with 2000 labels; a method reaching 0.05 at 1250 labels (halfway
    between its 1000 and 1500 points) needs 62.5% of the labels: it passes. Against cost (log
    cost interpolation), it reaches 0.05 at sqrt(1000 * 4000) = 2000 of random's 4000: ratio 0.5.
    A method 0.04 better in CDE loss at equal labels and worse in CRPS fails."""
    bench = load_benchmark()
    labels = [500, 1000, 1500, 2000]
    random = synthetic_curve("random", labels, [1e2, 1e3, 2e3, 4e3], [0.1, 0.08, 0.06, 0.05], [-3.0, -4.0, -5.0, -6.0])
    good = synthetic_curve("good", labels, [1e2, 1e3, 4e3, 8e3], [0.1, 0.06, 0.04, 0.03], [-3.0, -4.5, -5.5, -6.5])
    meh = synthetic_curve("meh", labels, [1e2, 1e3, 2e3, 4e3], [0.1, 0.09, 0.07, 0.06], [-3.0, -4.0, -5.0, -6.04])
    v = bench.versus_random(good, random)
    assert v["labels_to_reach_random_final_crps"] == pytest.approx(1250.0)
    assert v["label_ratio"] == pytest.approx(0.625)
    assert v["cost_to_reach_random_final_crps"] == pytest.approx(2000.0, rel=1e-4)
    assert v["cost_ratio"] == pytest.approx(0.5, rel=1e-4)
    assert v["cde_gain_final"] == pytest.approx(0.5)
    assert v["cde_gain_per_round"] == pytest.approx([0.0, 0.5, 0.5, 0.5])
    # equal cost: random's final 4000, where 'good' had its third point (-5.5) and random -6.0
    assert v["equal_cost"] == 4000.0 and v["cde_gain_at_equal_cost"] == pytest.approx(-0.5)
    assert v["random_labels_at_equal_cost"] == pytest.approx(2000.0)
    assert v["passes_per_label"] and v["passes_per_cost"]
    w = bench.versus_random(meh, random)
    assert w["label_ratio"] is None and w["cde_gain_final"] == pytest.approx(0.04)
    assert not w["passes_per_label"] and not w["passes_per_cost"]
    verdict = bench.acceptance([v, w])
    assert verdict["best_method"] == "good" and verdict["passed_per_label"] == ["good"]
    assert verdict["result"] == "positive"
    assert bench.acceptance([w])["result"] == "negative"


def test_benchmark_method_names():
    bench = load_benchmark()
    assert bench.parse_method("bald") == ("bald", "topk", False)
    assert bench.parse_method("bald-power/cost") == ("bald", "power", True)
    for bad in ("bald/time", "mystery", "bald-greedy"):
        with pytest.raises(SystemExit):
            bench.parse_method(bad)


def test_benchmark_quick_smoke(tmp_path):
    """``benchmarks/active_dc2.py --quick`` on two seeds: tiny ensembles on 200 pool rows, 2 rounds
    (about 10 s on one core). Checks the JSON lines and that the figure is written."""
    methods = ["random", "entropy", "bald", "bald-power", "bald-kmeans", "bald/cost"]
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "active_dc2.py"), "--quick", "--seeds", "0", "1",
                           "--methods", *methods, "--out", str(tmp_path)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["config"]["ensemble"]["n_members"] == 2 and lines[0]["pool_rows"] == 200
    rounds = [d for d in lines if "round" in d]
    assert len(rounds) == len(methods) * 2 * 2
    for d in rounds:
        assert d["labels"] == 20 * (1 + d["round"])
        for key in ("cost", "crps", "cde_loss", "pit_ks", "cov68", "cov95", "outlier_015", "train_s"):
            assert np.isfinite(d[key])
    # the first round is shared: the same seed set and model for every method
    for seed in (0, 1):
        firsts = {json.dumps({k: v for k, v in d.items() if k != "method"}) for d in rounds
                  if d["seed"] == seed and d["round"] == 0}
        assert len(firsts) == 1
    summaries = {(d["summary"], d.get("method")) for d in lines if "summary" in d}
    assert {("curve", m) for m in methods} <= summaries
    assert {("vs_random", m) for m in methods if m != "random"} <= summaries
    assert lines[-2]["summary"] == "acceptance" and lines[-2]["result"] in ("positive", "negative")
    assert Path(lines[-1]["figure"]).stat().st_size > 10_000
    assert (tmp_path / "active_dc2.jsonl").read_text().splitlines() == proc.stdout.splitlines()
