"""Active learning of spec-z labels on DC2, from a bright seed set: does choosing whom to observe
beat observing at random?

A simulated loop with labels revealed from the truth (:func:`calipers.active.loop.
simulate_active_learning`):

- **pool**: the DC2 training file (``test_dc2_training_9816.hdf5``, 10,225 rows; it is sorted by
  redshift, so every subset of it is drawn at random, seeded). Its redshifts are hidden until a
  row is "observed".
- **seed set**: ``--start`` (500) rows drawn at random among the *bright* pool rows,
  i < ``--bright-mag`` (23: the brightest ~17.5% of the pool, 1,792 rows), as a spectroscopic
  campaign would start.
- **each round**: a deep ensemble (the pipeline's ``stages/photoz.yml`` PZInform section, with
  the overrides ``DEFAULT_OVERRIDES`` below - 5 members, 64 hidden units, 200 epochs, patience
  20, weight average 0.99 - or those of ``--train-overrides``) is trained on the labelled rows
  and scored on the DC2 validation file (``test_dc2_validation_9816.hdf5``, 20,449 rows, never labelled)
  with the neutral metrics of ``benchmarks/pzmetrics.py`` on its ZGRID (p(z) evaluated in chunks
  of 2,000 rows and normalised on the grid); then the acquisition scores the unlabelled pool and
  ``--step`` (500) more rows are observed, up to ``--start + (rounds - 1) * step`` (5,000).
- **cost**: the exposure time of a spectrum, ``exposure_cost(i, ref_mag=22)`` (background
  limited, 10^(0.8 (i - 22)); 1 at i = 22), summed over the labelled rows.

Methods (``--methods``), ``score[-selection][/cost]``:

- ``score``: ``random``, ``entropy`` (differential entropy of the ensemble p(z)), ``bald``
  (mutual information between z and the member, the epistemic part), exact on ZGRID
  (:func:`calipers.active.acquisition_scores`);
- ``selection`` (:func:`calipers.active.select_batch`): ``topk`` (default), ``power``
  (power-BALD, Kirsch et al. 2021), ``softmax``, ``kmeans`` (the best row of each of ``step``
  score-weighted k-means clusters of the 10 x step best rows, in cleaned magnitudes and adjacent
  colours, Zhdanov 2019);
- ``/cost``: rank by score per unit exposure cost. (Entropy can be negative: for ``/cost``,
  ``power`` and ``kmeans`` it is shifted to start at 0 on the candidates.)

``--seeds`` (0 1 2): a seed sets the pool subset (``--pool-rows``), the seed set, the ensemble's
training seed (the config's seed + this seed; the same for every round and method, so methods at
equal labels differ only in which rows they labelled), the random acquisitions and the
stochastic selections. The first round of a seed is the same for every method and trained once.

Output, JSON lines on stdout (also written to ``--out``/active_dc2.jsonl):

1. ``{"config": ...}``: the ensemble configuration, device, pool/test/seed-set sizes, rounds;
2. one line per (method, seed, round): ``method, seed, round, labels, cost, crps, cde_loss,
   pit_ks, cov68, cov95, outlier_015, train_s, acquire_s`` (the time to choose the batch that
   entered this round) and ``i_median``, ``z_max`` of the labelled set;
3. ``{"summary": "curve", "method": ...}`` per method: labels and per-round mean, standard
   deviation, min and max over seeds of cost and of every metric (``crps_mean``, ``crps_std``,
   ...), and the final CDE loss of each seed;
4. ``{"summary": "vs_random", "method": ...}`` per non-random method: the labels (and the
   exposure cost) at which its mean CRPS curve first reaches random's final mean CRPS
   (interpolated; null: never) and their ratios to random's final labels (cost); the CDE-loss
   gain over random (random minus method, > 0: method better) at the final round, per round,
   per seed at the final round, and at equal exposure cost (at the smaller of the two final
   mean costs, and at each of the method's round costs; against cost, which spans orders of
   magnitude, curves are interpolated linearly in log cost, never extrapolated;
   ``random_labels_at_equal_cost`` says how many labels random had bought with that cost);
   whether it passes the acceptance rule (labels ratio <= 0.7 or final CDE gain >= 0.05; the
   same per unit of cost: cost ratio <= 0.7 or CDE gain at equal cost >= 0.05);
5. ``{"summary": "acceptance", ...}``: the best method per label and per cost, which methods
   pass, and a positive or negative result;
6. ``{"figure": path}``: CRPS and CDE loss against labels and against cost, one line per method
   (mean over seeds) with the seed spread (min to max) shaded.

    python benchmarks/active_dc2.py                                   # full run (hours on 2 cores)
    python benchmarks/active_dc2.py --quick                           # smoke test (seconds)
    python benchmarks/active_dc2.py --methods random bald --seeds 0 --rounds 4
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from pzmetrics import ZGRID, metrics  # noqa: E402

TESTDATA = "pkg://rail/examples_data/testdata/"
POOL = TESTDATA + "test_dc2_training_9816.hdf5"
TEST = TESTDATA + "test_dc2_validation_9816.hdf5"
BANDS = list("ugrizy")
I_BAND = BANDS.index("i")
REF_MAG = 22.0
DEFAULT_METHODS = ["random", "entropy", "bald", "bald-power", "bald-kmeans", "bald/cost"]
# cheaper than the pipeline's ensemble (5 x 128 x 3, 500 epochs): it is retrained every round. The
# weight average has a shorter memory (0.99 instead of the pipeline's 0.999): the average starts at
# the initial weights, and 500 labels make only ~400 optimiser steps in 200 epochs, after which
# 0.999^400 = 67% of a 0.999 average is still the initialisation (measured on DC2 with a bright
# seed set of 500: CRPS 0.270 with 0.999, 0.082 with 0.99, 0.086 with no average)
DEFAULT_OVERRIDES = {"n_members": 5, "hidden": 64, "max_epochs": 200, "patience": 20, "ema": 0.99}
QUICK_OVERRIDES = {"n_members": 2, "hidden": 16, "n_layers": 1, "max_epochs": 3, "patience": 5}
QUICK = {"pool_rows": 200, "test_rows": 500, "start": 20, "step": 20, "rounds": 2}
ROUND_KEYS = ("crps", "cde_loss", "pit_ks", "cov68", "cov95", "outlier_015")
LABEL_RATIO_TO_PASS, CDE_GAIN_TO_PASS = 0.7, 0.05


# ------------------------------------------------------------------ data and configuration

def read_dc2(name: str):
    """(redshift, magnitudes, errors) of a DC2 test catalog, bands in BANDS order."""
    from calipers.core.catalog import read_columns
    from calipers.core.paths import resolve_path

    cols = read_columns(resolve_path(name), "photometry", [f"mag_{b}_lsst" for b in BANDS]
                        + [f"mag_err_{b}_lsst" for b in BANDS] + ["redshift"])
    stack = lambda fmt: np.stack([cols[fmt.format(b)] for b in BANDS], 1).astype(np.float32)  # noqa: E731
    return np.asarray(cols["redshift"], dtype=float), stack("mag_{}_lsst"), stack("mag_err_{}_lsst")


def ensemble_config(config_path: str, overrides: dict) -> tuple[dict, str]:
    """(EnsembleConfig keyword arguments, device) from the PZInform section of a stage config
    with ``overrides`` applied; z_range maps to zmin/zmax as in the PZInform stage."""
    import yaml

    from calipers.photoz import EnsembleConfig

    with open(config_path) as fh:
        cfg = dict(yaml.safe_load(fh).get("PZInform", {}))
    fields = set(EnsembleConfig.__dataclass_fields__) - {"zmin", "zmax"}
    unknown = sorted(set(overrides) - fields - {"z_range", "device"})
    if unknown:
        known = sorted(fields | {"z_range", "device"})
        raise SystemExit(f"--train-overrides: unknown key(s) {unknown}; known: {known}")
    cfg |= overrides
    device = str(cfg.get("device", "auto"))
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = {k: v for k, v in cfg.items() if k in fields}
    z_range = list(cfg.get("z_range") or [])
    if z_range:
        if len(z_range) != 2:
            raise SystemExit(f"z_range must be [zmin, zmax] or [], got {z_range}")
        kwargs |= {"zmin": float(z_range[0]), "zmax": float(z_range[1])}
    EnsembleConfig(**kwargs).validate()
    return kwargs, device


def parse_method(name: str) -> tuple[str, str, bool]:
    """``score[-selection][/cost]`` -> (score, selection, cost_aware)."""
    from calipers.active import ACQUISITION_METHODS, SELECTION_METHODS

    body, slash, tail = name.partition("/")
    if slash and tail != "cost":
        raise SystemExit(f"method {name!r}: only '/cost' may follow the score")
    score, _, selection = body.partition("-")
    selection = selection or "topk"
    if score not in ACQUISITION_METHODS or selection not in SELECTION_METHODS:
        raise SystemExit(f"method {name!r}: score must be one of {ACQUISITION_METHODS} and selection one of "
                         f"{SELECTION_METHODS}")
    return score, selection, bool(slash)


# ------------------------------------------------------------------ model, score, acquisition

class Trained:
    """A trained ensemble with its training time."""

    def __init__(self, ensemble, train_s: float):
        self.ensemble, self.train_s = ensemble, train_s


def grid_pdfs(weights, means, stds, chunk: int = 2000) -> np.ndarray:
    """The ensemble p(z) on ZGRID, evaluated in chunks of rows, clipped and normalised as
    pzmetrics.grid_pdfs does with a qp ensemble."""
    from calipers.photoz.mixture import mixture_pdf

    out = np.empty((len(weights), len(ZGRID)))
    for a in range(0, len(weights), chunk):
        p = np.nan_to_num(np.clip(mixture_pdf(weights[a:a + chunk], means[a:a + chunk], stds[a:a + chunk], ZGRID),
                                  0, None))
        norm = np.trapezoid(p, ZGRID, axis=1)
        norm[norm <= 0] = 1.0
        out[a:a + chunk] = p / norm[:, None]
    return out


class Experiment:
    """Everything one (method, seed) run needs: the pool, the test set, the training config."""

    def __init__(self, pool, test, cfg: dict, device: str, step: int):
        self.z, self.mags, self.errs, self.cost, self.features = pool
        self.z_test, self.mags_test, self.errs_test = test
        self.cfg, self.device, self.step = cfg, device, step
        self._first: dict = {}  # seed -> (rows, Trained, metrics) of the shared first round

    def fit(self, rows: np.ndarray, seed: int) -> Trained:
        from calipers.photoz import DeepEnsemble, EnsembleConfig

        cached = self._first.get(seed)
        if cached is not None and np.array_equal(cached[0], rows):
            return cached[1]
        cfg = EnsembleConfig(**(self.cfg | {"seed": int(self.cfg.get("seed", 0)) + seed}))
        t0 = time.perf_counter()
        ens = DeepEnsemble(cfg).fit(self.mags[rows], self.errs[rows], self.z[rows], BANDS, device=self.device,
                                    progress=False)
        return Trained(ens, time.perf_counter() - t0)

    def evaluate(self, model: Trained, seed: int) -> dict:
        cached = self._first.get(seed)
        if cached is not None and cached[1] is model:
            return cached[2]
        pdfs = grid_pdfs(*model.ensemble.predict(self.mags_test, self.errs_test))
        return {k: float(v) for k, v in metrics(pdfs, self.z_test).items()}

    def remember_first(self, seed: int, rows: np.ndarray, model: Trained, scores: dict) -> None:
        self._first = {seed: (rows.copy(), model, scores)}

    def acquire(self, method: str, model: Trained, candidates: np.ndarray, batch: int, round_: int,
                seed: int) -> np.ndarray:
        from calipers.active import acquisition_scores, select_batch
        from calipers.validate.support import ensemble_entropies

        score, selection, cost_aware = parse_method(method)
        draw_seed = 1_000_003 * (seed + 1) + round_  # random scores and stochastic selections
        if score == "random":
            scores = acquisition_scores("random", n_objects=len(candidates), seed=draw_seed)
        else:
            ens = model.ensemble
            w, mu, s = ens.predict(self.mags[candidates], self.errs[candidates])
            entropies = ensemble_entropies(w, mu, s, len(ens.members), ZGRID)
            scores = acquisition_scores(score, entropies=entropies)
            if score == "entropy" and (cost_aware or selection in ("power", "kmeans")):
                scores = scores - scores.min()  # a differential entropy can be negative
        picked = select_batch(scores, batch, cost=self.cost[candidates] if cost_aware else None, method=selection,
                              features=self.features[candidates] if selection == "kmeans" else None, seed=draw_seed)
        return candidates[picked.rows]


def run_method(exp: Experiment, method: str, seed: int, initial_rows: np.ndarray, rounds: int):
    """One (method, seed) learning curve: a JSON-able dict per round, yielded as it is scored."""
    from calipers.active.loop import simulate_active_learning

    acquire_s = [0.0]

    def acquire(model, candidates, batch, round_):
        t0 = time.perf_counter()
        rows = exp.acquire(method, model, candidates, batch, round_, seed)
        acquire_s[0] = time.perf_counter() - t0
        return rows

    loop = simulate_active_learning(initial_rows, len(exp.z), fit=lambda rows: exp.fit(rows, seed),
                                    evaluate=lambda model: exp.evaluate(model, seed), acquire=acquire,
                                    batch_size=exp.step, n_rounds=rounds, cost=exp.cost)
    for r in loop:
        if r.round == 0:
            exp.remember_first(seed, r.rows, r.model, r.metrics)
        yield ({"method": method, "seed": seed, "round": r.round, "labels": r.n_labels, "cost": round(r.cost, 3)}
               | {k: round(r.metrics[k], 5) for k in ROUND_KEYS}
               | {"train_s": round(r.model.train_s, 2), "acquire_s": round(acquire_s[0] if r.round else 0.0, 2),
                  "i_median": round(float(np.median(exp.mags[r.rows, I_BAND])), 3),
                  "z_max": round(float(exp.z[r.rows].max()), 4)})


# ------------------------------------------------------------------ summaries

def curves(records: list[dict], methods: list[str]) -> dict:
    """Per method: labels, mean/std over seeds of cost and each metric, per round, and the
    per-seed final values."""
    out = {}
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        if not rows:
            continue
        seeds = sorted({r["seed"] for r in rows})
        n_rounds = min(max(r["round"] for r in rows if r["seed"] == s) + 1 for s in seeds)
        table = {(r["seed"], r["round"]): r for r in rows}
        curve = {"summary": "curve", "method": m, "n_seeds": len(seeds),
                 "labels": [table[(seeds[0], k)]["labels"] for k in range(n_rounds)]}
        for key in ("cost",) + ROUND_KEYS:
            values = np.array([[table[(s, k)][key] for k in range(n_rounds)] for s in seeds])
            curve[f"{key}_mean"] = np.round(values.mean(0), 5).tolist()
            curve[f"{key}_std"] = np.round(values.std(0), 5).tolist()
            curve[f"{key}_min"] = np.round(values.min(0), 5).tolist()
            curve[f"{key}_max"] = np.round(values.max(0), 5).tolist()
        curve["cde_loss_final_per_seed"] = {int(s): table[(s, n_rounds - 1)]["cde_loss"] for s in seeds}
        out[m] = curve
    return out


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 5)


def versus_random(curve: dict, random: dict) -> dict:
    """The acceptance numbers of one method's mean curve against random's (see the module doc)."""
    from calipers.active.loop import curve_at, first_reach

    n = min(len(curve["labels"]), len(random["labels"]))
    labels, r_labels = np.array(curve["labels"][:n], float), np.array(random["labels"][:n], float)
    cost, r_cost = np.array(curve["cost_mean"][:n]), np.array(random["cost_mean"][:n])
    crps, r_crps = np.array(curve["crps_mean"][:n]), np.array(random["crps_mean"][:n])
    cde, r_cde = np.array(curve["cde_loss_mean"][:n]), np.array(random["cde_loss_mean"][:n])
    log_cost, r_log_cost = np.log(cost), np.log(r_cost)  # against cost, curves are interpolated in log cost
    target = r_crps[-1]
    labels_to_reach = first_reach(labels, crps, target)
    cost_to_reach = float(np.exp(first_reach(log_cost, crps, target)))
    label_ratio = labels_to_reach / r_labels[-1]
    cost_ratio = cost_to_reach / r_cost[-1]
    gain_final = r_cde[-1] - cde[-1]
    equal_cost = min(r_cost[-1], cost[-1])
    gain_cost = float(curve_at(r_log_cost, r_cde, np.log(equal_cost)) - curve_at(log_cost, cde, np.log(equal_cost)))
    gain_cost_rounds = curve_at(r_log_cost, r_cde, log_cost) - cde
    random_labels_at_equal_cost = float(curve_at(r_log_cost, r_labels, np.log(equal_cost)))
    seeds = sorted(set(curve["cde_loss_final_per_seed"]) & set(random["cde_loss_final_per_seed"]))
    per_seed = {s: round(random["cde_loss_final_per_seed"][s] - curve["cde_loss_final_per_seed"][s], 5) for s in seeds}
    pass_labels = bool(label_ratio <= LABEL_RATIO_TO_PASS or gain_final >= CDE_GAIN_TO_PASS)
    pass_cost = bool(cost_ratio <= LABEL_RATIO_TO_PASS or gain_cost >= CDE_GAIN_TO_PASS)
    return {"summary": "vs_random", "method": curve["method"], "random_final_crps": _num(target),
            "labels_to_reach_random_final_crps": _num(labels_to_reach), "label_ratio": _num(label_ratio),
            "cost_to_reach_random_final_crps": _num(cost_to_reach), "cost_ratio": _num(cost_ratio),
            "cde_gain_final": _num(gain_final), "cde_gain_per_round": [_num(v) for v in r_cde - cde],
            "cde_gain_final_per_seed": per_seed,
            "equal_cost": _num(equal_cost), "random_labels_at_equal_cost": _num(random_labels_at_equal_cost),
            "cde_gain_at_equal_cost": _num(gain_cost),
            "cde_gain_at_equal_cost_per_round": [_num(v) for v in gain_cost_rounds],
            "passes_per_label": pass_labels, "passes_per_cost": pass_cost}


def acceptance(comparisons: list[dict]) -> dict:
    if not comparisons:
        return {"summary": "acceptance", "result": "not judged", "note": "needs 'random' and another method"}

    def key(c):  # fewest labels to random's final CRPS, then the largest final CDE gain
        ratio = c["label_ratio"] if c["label_ratio"] is not None else np.inf
        return (ratio, -(c["cde_gain_final"] if c["cde_gain_final"] is not None else -np.inf))

    def key_cost(c):
        ratio = c["cost_ratio"] if c["cost_ratio"] is not None else np.inf
        return (ratio, -(c["cde_gain_at_equal_cost"] if c["cde_gain_at_equal_cost"] is not None else -np.inf))

    best, best_cost = min(comparisons, key=key), min(comparisons, key=key_cost)
    passed = [c["method"] for c in comparisons if c["passes_per_label"]]
    passed_cost = [c["method"] for c in comparisons if c["passes_per_cost"]]
    out = {"summary": "acceptance", "rule": f"label_ratio <= {LABEL_RATIO_TO_PASS} or cde_gain_final >= "
           f"{CDE_GAIN_TO_PASS} (per label); the same per unit of exposure cost",
           "best_method": best["method"], "best_label_ratio": best["label_ratio"],
           "best_cde_gain_final": best["cde_gain_final"], "best_method_per_cost": best_cost["method"],
           "best_cost_ratio": best_cost["cost_ratio"],
           "best_cde_gain_at_equal_cost": best_cost["cde_gain_at_equal_cost"],
           "passed_per_label": passed, "passed_per_cost": passed_cost,
           "result": "positive" if passed or passed_cost else "negative"}
    if not (passed or passed_cost):
        out["note"] = ("negative result: no acquisition reached random's final CRPS with <= 70% of the labels or "
                       "of the cost, nor beat its CDE loss by >= 0.05 at equal labels or cost; see the curves")
    return out


def plot(curve_by_method: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    for m, c in curve_by_method.items():
        labels, cost = np.array(c["labels"]), np.array(c["cost_mean"])
        for row, key in enumerate(("crps", "cde_loss")):
            mean, lo, hi = (np.array(c[f"{key}_{s}"]) for s in ("mean", "min", "max"))
            for col, x in enumerate((labels, cost)):
                ax = axes[row, col]
                (line,) = ax.plot(x, mean, marker="o", ms=3, label=m)
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    for row, key in enumerate(("CRPS", "CDE loss")):
        axes[row, 0].set_ylabel(f"{key} (DC2 validation)")
        axes[row, 0].set_xlabel("labels")
        axes[row, 1].set_xlabel(f"exposure cost of the labelled set (1 = one spectrum at i = {REF_MAG:g})")
        axes[row, 1].set_xscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Active learning from a bright seed set on DC2: mean over seeds, min-max shaded")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="score[-selection][/cost] (see above)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--start", type=int, default=500, help="labels in the bright seed set")
    p.add_argument("--step", type=int, default=500, help="labels added per round")
    p.add_argument("--rounds", type=int, default=10, help="rounds, the first included (10: 500 ... 5000 labels)")
    p.add_argument("--bright-mag", type=float, default=23.0, help="the seed set is drawn among pool rows with i < this")
    p.add_argument("--pool-rows", type=int, default=0, help="random subset of the pool (0 = all 10,225 rows)")
    p.add_argument("--test-rows", type=int, default=0, help="random subset of the test set (0 = all 20,449 rows)")
    p.add_argument("--config", default=os.path.join(ROOT, "stages", "photoz.yml"), help="stage config: PZInform")
    p.add_argument("--train-overrides", default=None,
                   help=f"JSON object over the PZInform section (default {json.dumps(DEFAULT_OVERRIDES)})")
    p.add_argument("--out", default=None, help="folder for the figure and the JSON lines (default: a new temp dir)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {json.dumps(QUICK)}, ensemble {json.dumps(QUICK_OVERRIDES)}")
    a = p.parse_args(argv)
    if a.quick:  # the quick settings become the defaults; options given explicitly still win
        p.set_defaults(**QUICK)
        a = p.parse_args(argv)
    overrides = json.loads(a.train_overrides) if a.train_overrides else dict(QUICK_OVERRIDES if a.quick
                                                                          else DEFAULT_OVERRIDES)
    if not isinstance(overrides, dict):
        raise SystemExit("--train-overrides must be a JSON object")
    for m in a.methods:
        parse_method(m)
    cfg, device = ensemble_config(a.config, overrides)
    out_dir = a.out or tempfile.mkdtemp(prefix="calipers_active_")
    os.makedirs(out_dir, exist_ok=True)
    lines = open(os.path.join(out_dir, "active_dc2.jsonl"), "w")

    def emit(obj: dict) -> None:
        text = json.dumps(obj)
        print(text, flush=True)
        lines.write(text + "\n")
        lines.flush()

    from calipers.active import exposure_cost
    from calipers.core.features import photometry_features
    from calipers.photoz.preprocess import PhotometryPreprocessor

    z_all, mags_all, errs_all = read_dc2(POOL)
    usable = np.flatnonzero(np.isfinite(mags_all[:, I_BAND]) & (np.abs(mags_all[:, I_BAND]) < 90))
    z_test, mags_test, errs_test = read_dc2(TEST)
    if a.test_rows:
        keep = np.sort(np.random.default_rng(12345).choice(len(z_test), min(a.test_rows, len(z_test)), replace=False))
        z_test, mags_test, errs_test = z_test[keep], mags_test[keep], errs_test[keep]
    final = a.start + (a.rounds - 1) * a.step
    emit({"config": {"ensemble": cfg, "device": device, "train_overrides": overrides,
                     "stage_config": os.path.relpath(os.path.abspath(a.config), ROOT)},
          "pool": os.path.basename(POOL), "pool_rows": a.pool_rows or len(usable),
          "pool_rows_without_i": int(len(z_all) - len(usable)), "test": os.path.basename(TEST),
          "test_rows": len(z_test), "seed_set": f"{a.start} rows at random among pool rows with i < {a.bright_mag:g}",
          "start": a.start, "step": a.step, "rounds": a.rounds, "final_labels": final, "methods": a.methods,
          "seeds": a.seeds, "cost": f"exposure_cost(mag_i, ref_mag={REF_MAG:g}) = 10^(0.8 (i - {REF_MAG:g}))",
          "torch_threads": __import__("torch").get_num_threads(), "out": out_dir})

    records = []
    for seed in a.seeds:
        rows = usable
        if a.pool_rows:
            if a.pool_rows > len(usable):
                raise SystemExit(f"--pool-rows {a.pool_rows}: the pool has {len(usable)} usable rows")
            rows = np.sort(np.random.default_rng([seed, 1]).choice(usable, a.pool_rows, replace=False))
        z, mags, errs = z_all[rows], mags_all[rows], errs_all[rows]
        cost = exposure_cost(mags[:, I_BAND], ref_mag=REF_MAG)
        feats = photometry_features(mags, errs, PhotometryPreprocessor(BANDS).fit(mags, errs))
        bright = np.flatnonzero(mags[:, I_BAND] < a.bright_mag)
        if len(bright) < a.start:
            raise SystemExit(f"seed {seed}: only {len(bright)} pool rows have i < {a.bright_mag:g}, fewer than "
                             f"--start {a.start}; raise --bright-mag or lower --start")
        if final > len(z):
            raise SystemExit(f"{final} labels asked for, the pool has {len(z)} rows")
        initial = np.random.default_rng([seed, 2]).choice(bright, a.start, replace=False)
        exp = Experiment((z, mags, errs, cost, feats), (z_test, mags_test, errs_test), cfg, device, a.step)
        for method in a.methods:
            for rec in run_method(exp, method, seed, initial, a.rounds):
                records.append(rec)
                emit(rec)

    by_method = curves(records, a.methods)
    for c in by_method.values():
        emit(c)
    comparisons = []
    if "random" in by_method:
        comparisons = [versus_random(c, by_method["random"]) for m, c in by_method.items() if m != "random"]
        for c in comparisons:
            emit(c)
    emit(acceptance(comparisons))
    emit({"figure": plot(by_method, os.path.join(out_dir, "active_dc2_curves.png"))})
    lines.close()


if __name__ == "__main__":
    main()
