"""Simulation-based inference stages: Simulate -> SBITrain -> SBIGate -> SBIPosterior."""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from calipers.core.errors import ConfigError
from calipers.core.file_types import ModelDir, QPEnsembleFile, ReportDir, SaccFile, SamplesFile, SimulationFile
from calipers.core.gate_stage import GateStage
from calipers.core.options import GATE_OPTIONS
from calipers.core.provenance import write_provenance_json
from calipers.core.simulations import (
    read_simulations,
    simulator_from_spec,
    write_posterior_samples,
    write_simulations,
)
from calipers.core.stage import CalipersStage, Param

log = logging.getLogger(__name__)

__all__ = ["SBIGate", "SBIPosterior", "SBIPosteriorSacc", "SBITrain", "Simulate", "SimulateCl"]


class Simulate(CalipersStage):
    """Draw parameters from the simulator's prior and simulate data, in seeded blocks split over
    MPI ranks (the output does not depend on the number of ranks)."""

    name = "Simulate"
    parallel = True
    inputs = []
    outputs = [("simulations", SimulationFile)]
    config_options = CalipersStage.config_options | {
        "simulator": Param(str, "gaussian_linear", msg="Simulator name (gaussian_linear)"),
        "simulator_options": Param(dict, {}, msg="Keyword options of the simulator (e.g. dim)"),
        "n_simulations": Param(int, 10_000, msg="Number of (theta, x) pairs"),
        "block_size": Param(int, 500, msg="Simulations per seeded block (the unit of work of a rank)"),
    }

    def validate(self):
        if self.config["n_simulations"] < 1:
            raise ConfigError(f"n_simulations must be >= 1, got {self.config['n_simulations']}")
        self._simulator = simulator_from_spec(self._spec())

    def _spec(self) -> dict:
        return {"simulator": self.config["simulator"], "options": dict(self.config["simulator_options"])}

    def process(self):
        from calipers.sbi import simulate

        c = self.config
        spec = self._spec()
        sim = self._simulator
        n, bs = c["n_simulations"], c["block_size"]
        n_blocks = -(-n // bs)
        mine = list(range(self.rank, n_blocks, self.size))
        t0 = time.time()
        theta, x = simulate(sim, n, c["seed"], bs, mine) if mine else (None, None)
        if self.size > 1:
            parts = self.comm.gather((mine, theta, x), root=0)
            if self.rank != 0:
                return
            order = sorted((b, t[i * bs:(i + 1) * bs], xx[i * bs:(i + 1) * bs])
                           for blocks, t, xx in parts if blocks for i, b in enumerate(blocks))
            theta = np.concatenate([t for _, t, _ in order])
            x = np.concatenate([xx for _, _, xx in order])
        log.info("%d simulations of %s in %.1f s", n, c["simulator"], time.time() - t0)
        spec["param_names"] = sim.param_names
        write_simulations(self.output_path("simulations"), theta, x, spec, self.provenance())


class SimulateCl(Simulate):
    """Simulate tomographic C_ell data vectors (``cosmology_cl``) from an ``NZEstimate`` output:
    theta = (Omega_m, sigma8); each simulation uses a random n(z) realization when
    ``simulator_options.marginalise_nz`` is true (the default), else the fiducial n(z)."""

    name = "SimulateCl"
    inputs = [("nz", QPEnsembleFile)]
    config_options = Simulate.config_options | {
        "simulator": Param(str, "cosmology_cl", msg="Simulator name (cosmology_cl)"),
    }

    def _spec(self) -> dict:
        return {"simulator": self.config["simulator"],
                "options": dict(self.config["simulator_options"]) | {"nz_path": os.path.abspath(self.input_path("nz"))}}


SBI_OPTIONS = {
    "method": Param(str, "npe", msg="npe (neural posterior), nle (likelihood + sampling) or nre (ratio + sampling)"),
    "model": Param(str, "nsf", msg="Flow for npe/nle (nsf, maf, mdn) or classifier for nre (resnet, mlp)"),
    "hidden_features": Param(int, 50, msg="Hidden units of the estimator"),
    "num_transforms": Param(int, 5, msg="Flow transforms (npe/nle)"),
    "training_batch_size": Param(int, 200, msg="Training batch size"),
    "learning_rate": Param(float, 5e-4, msg="Adam learning rate"),
    "validation_fraction": Param(float, 0.1, msg="Simulations held out for early stopping"),
    "stop_after_epochs": Param(int, 20, msg="Early stopping patience"),
    "max_num_epochs": Param(int, 1000, msg="Epoch cap"),
    "sampler": Param(str, "mcmc", msg="nle/nre posteriors: mcmc (slice sampling) or sir (importance resampling)"),
    "mcmc_chains": Param(int, 20, msg="Slice-sampling chains"),
    "mcmc_warmup": Param(int, 100, msg="Slice-sampling warm-up steps"),
    "sir_proposals": Param(int, 20000, msg="Prior draws per SIR sample call"),
}


class SBITrain(CalipersStage):
    """Train NPE / NLE / NRE on simulations; writes a model directory (JSON + state dict)."""

    name = "SBITrain"
    parallel = False
    inputs = [("simulations", SimulationFile)]
    outputs = [("sbi_model", ModelDir)]
    config_options = CalipersStage.config_options | SBI_OPTIONS | {
        "device": Param(str, "auto", msg="Torch device: auto (GPU if present), cpu, cuda"),
    }

    def process(self):
        from calipers.core.models import save_estimator
        from calipers.sbi import SBIConfig, train_estimator

        c = self.config
        theta, x, spec = read_simulations(self.input_path("simulations"))
        cfg = SBIConfig(**{k: c[k] for k in SBIConfig.__dataclass_fields__ if k in c})
        sim = simulator_from_spec(spec)
        device = self.torch_device()
        log.info("training %s on %d simulations (%d parameters, %d data) on %s", cfg.method.upper(), len(theta),
                 theta.shape[1], x.shape[1], device)
        t0 = time.time()
        net, summary = train_estimator(theta, x, sim.prior_torch(), cfg, device=device, progress=self.rank == 0)
        seconds = time.time() - t0
        log.info("trained in %.1f s, %d epochs, best validation loss %.4f", seconds, summary["epochs_trained"],
                 summary["best_validation_loss"])
        save_estimator(self.output_path("sbi_model"), net, cfg, theta, x,
                       extra={"simulator": spec, "n_simulations": len(theta), "train_seconds": round(seconds, 2),
                              "device": device, "summary": summary})
        write_provenance_json(self.output_path("sbi_model"), self.provenance())


def _posterior_factory(net, prior, cfg):
    from calipers.sbi import build_posterior

    if cfg.method == "npe":
        post = build_posterior(net, prior, cfg)
        return lambda x: post
    return lambda x: build_posterior(net, prior, cfg, x)


class SBIGate(GateStage):
    """Check a trained estimator's calibration on held-out simulations and stop if it fails.

    One set of ``num_posterior_samples`` draws per test simulation serves every check, computed
    with sbi's diagnostics (:mod:`calipers.sbi.diagnostics`). SBC: per-parameter KS test of the
    rank uniformity (p-values Bonferroni-corrected over the parameters unless
    ``bonferroni: false``); TARP: expected-coverage curve, |area to the diagonal| over the upper
    half of the credibility grid (sbi's ``check_tarp``) and the KS p-value of the coverage values;
    posterior contraction. Report: rank histograms and the TARP curve.
    """

    name = "SBIGate"
    parallel = False
    inputs = [("sbi_model", ModelDir), ("test_simulations", SimulationFile)]
    outputs = [("sbi_report", ReportDir)]
    report_tag = "sbi_report"
    config_options = CalipersStage.config_options | GATE_OPTIONS | {
        "n_tests": Param(int, 200, msg="Held-out simulations used (first rows)"),
        "num_posterior_samples": Param(int, 200, msg="Posterior samples per test simulation"),
        "min_sbc_pvalue": Param(float, 0.01, msg="Smallest allowed SBC rank KS p-value"),
        "bonferroni": Param(bool, True, msg="Multiply SBC p-values by the number of parameters"),
        "min_tarp_pvalue": Param(float, 0.01, msg="Smallest allowed TARP KS p-value"),
        "max_tarp_atc": Param(float, 0.05, msg="Largest allowed |TARP area to the diagonal| over credibility "
                                               "levels above 1/2 (sbi's check_tarp)"),
        "sampler": Param(str, "", msg="Override the model's nle/nre sampler (mcmc or sir); '' keeps it"),
        "c2st_observations": Param(int, 0, msg="Test simulations compared by C2ST with the simulator's reference "
                                               "posterior (needs one, e.g. gaussian_linear; 0 = off)"),
        "c2st_samples": Param(int, 1000, msg="Samples per side of each C2ST"),
        "max_c2st": Param(float, 0.6, msg="Largest allowed mean C2ST accuracy (0.5 = indistinguishable)"),
        "min_contraction": Param(float, 0.0, msg="Smallest allowed posterior contraction 1 - E[var_post]/var_prior "
                                                 "per parameter (SBC/TARP pass a posterior equal to the prior; 0 = off)"),
    }

    def _c2st(self, post_for, sim, xs):
        import torch

        from calipers.sbi import c2st_score

        if not hasattr(sim, "sample_true_posterior"):
            raise ConfigError(f"c2st_observations > 0 needs a simulator with a reference posterior; "
                              f"{getattr(sim, 'name', sim)!r} has none")
        rng = np.random.default_rng([self.config["seed"], 99])
        n = self.config["c2st_samples"]
        scores = []
        for x in xs[: self.config["c2st_observations"]]:
            ref = sim.sample_true_posterior(x, n, rng)
            xt = torch.as_tensor(np.atleast_2d(x), dtype=torch.float32)
            est = post_for(x).sample((n,), x=xt, show_progress_bars=False).numpy()
            scores.append(c2st_score(est, ref, seed=self.config["seed"]))
        return scores

    def process(self):
        from calipers.core.models import load_estimator
        from calipers.sbi import posterior_draws, sbc_from_draws, tarp_from_draws
        from calipers.validate.gate import Check
        from calipers.validate.plots import sbc_ranks_figure, tarp_figure

        c = self.config
        net, cfg, meta = load_estimator(self.input_path("sbi_model"))
        if c["sampler"]:
            cfg.sampler = c["sampler"]
        theta, x, spec = read_simulations(self.input_path("test_simulations"))
        if spec["simulator"] != meta["simulator"]["simulator"] or spec["options"] != meta["simulator"]["options"]:
            raise ValueError(f"{self.input_path('test_simulations')} comes from simulator {spec}, but the model was "
                             f"trained on {meta['simulator']}")
        theta, x = theta[: c["n_tests"]], x[: c["n_tests"]]
        prior = simulator_from_spec(spec).prior_torch()
        post_for = _posterior_factory(net, prior, cfg)
        t0 = time.time()
        draws = posterior_draws(post_for, x, c["num_posterior_samples"], seed=c["seed"])  # one set for all checks
        s = sbc_from_draws(theta, draws, seed=c["seed"])
        t = tarp_from_draws(theta, draws, seed=c["seed"] + 1)
        seconds = time.time() - t0
        names = spec["param_names"]
        factor = len(names) if c["bonferroni"] else 1
        checks = [Check(f"sbc_{n}", min(1.0, p * factor), ">=", c["min_sbc_pvalue"],
                        why=f"rank KS p-value{' x %d (Bonferroni)' % factor if factor > 1 else ''}")
                  for n, p in zip(names, s.ks_pvals)]
        checks += [Check("tarp_pvalue", t["ks_pvalue"], ">=", c["min_tarp_pvalue"], why="TARP coverage values uniform (KS)"),
                   Check("tarp_atc", abs(t["atc"]), "<=", c["max_tarp_atc"],
                         why="TARP |area to the diagonal| over credibility > 1/2")]
        sim = simulator_from_spec(spec)
        prior_var = sim.sample_prior(100_000, np.random.default_rng([c["seed"], 7])).var(axis=0)
        contraction = s.contraction(prior_var)
        if c["min_contraction"] > 0:
            checks += [Check(f"contraction_{n}", float(k), ">=", c["min_contraction"],
                             why="informativeness: 0 for an estimator that returns the prior")
                       for n, k in zip(names, contraction)]
        if c["c2st_observations"] > 0:
            scores = self._c2st(post_for, sim, x)
            checks.append(Check("c2st", float(np.mean(scores)), "<=", c["max_c2st"],
                                why=f"mean over {len(scores)} observations against the reference posterior"))
        summary = {"method": cfg.method, "n_tests": len(theta), "num_posterior_samples": c["num_posterior_samples"],
                   "n_train_simulations": meta.get("n_simulations"), "sbc_ks_pvalues": dict(zip(names, s.ks_pvals)),
                   "tarp_atc": t["atc"], "tarp_ks_pvalue": t["ks_pvalue"], "diagnostics_seconds": round(seconds, 1),
                   "posterior_contraction": dict(zip(names, contraction.tolist()))}
        if c["c2st_observations"] > 0:
            summary["c2st"] = scores
        self.conclude(f"SBI calibration gate: {cfg.method.upper()} on {spec['simulator']}", summary, checks,
                      {"sbc_ranks": sbc_ranks_figure(s.ranks, s.ks_pvals, s.num_posterior_samples, names),
                       "tarp": tarp_figure(t["alpha"], t["ecp"], t["atc"])})


class SBIPosterior(CalipersStage):
    """Sample the posterior of one observation (a row of a simulations file) and write the samples
    (``samples``, ``param_names``, ``log_prob``) plus a corner plot."""

    name = "SBIPosterior"
    parallel = False
    inputs = [("sbi_model", ModelDir), ("observation", SimulationFile)]
    outputs = [("posterior_samples", SamplesFile), ("posterior_report", ReportDir)]
    config_options = CalipersStage.config_options | {
        "row": Param(int, 0, msg="Row of the observation file to condition on"),
        "n_samples": Param(int, 5000, msg="Posterior samples to draw"),
    }

    def observation(self, meta: dict):
        """(simulator, observed x, true theta or NaNs, param names) of the observation input."""
        theta, x, spec = read_simulations(self.input_path("observation"))
        row = self.config["row"]
        if not 0 <= row < len(x):
            raise ConfigError(f"row {row} outside {self.input_path('observation')} ({len(x)} rows)")
        return simulator_from_spec(spec), x[row], theta[row], spec["param_names"]

    def process(self):
        import torch

        from calipers.core.models import load_estimator
        from calipers.core.report import write_report
        from calipers.sbi import build_posterior
        from calipers.validate.plots import corner_figure

        c = self.config
        net, cfg, meta = load_estimator(self.input_path("sbi_model"))
        sim, x_o, truth, names = self.observation(meta)
        dim = int(np.asarray(meta["x_rows"]).shape[-1]) if "x_rows" in meta else len(x_o)
        if len(x_o) != dim:
            raise ValueError(f"{self.input_path('observation')}: observed data vector has {len(x_o)} values but "
                             f"the estimator {self.input_path('sbi_model')} was trained on {dim}")
        prior = sim.prior_torch()
        torch.manual_seed(c["seed"])
        post = build_posterior(net, prior, cfg, x_o)
        xt = torch.as_tensor(np.atleast_2d(x_o), dtype=torch.float32)
        samples = post.sample((c["n_samples"],), x=xt, show_progress_bars=False)
        if cfg.method == "npe":
            logp = post.log_prob(samples, x=xt).numpy()
        else:  # unnormalised: learned potential
            logp = post.potential_fn(samples).numpy() if hasattr(post, "potential_fn") else np.full(len(samples), np.nan)
        samples = samples.numpy()
        write_posterior_samples(self.output_path("posterior_samples"), samples, names, logp, x_o, truth,
                                self.provenance())
        mean, sd = samples.mean(0), samples.std(0)
        inside95 = np.where(np.isfinite(truth), np.abs(truth - mean) <= 2 * sd, False)
        summary = {"param_names": names, "mean": mean.tolist(), "std": sd.tolist(), "theta_true": truth.tolist(),
                   "truth_within_2sd": inside95.tolist(), "method": cfg.method}
        write_report(self.output_path("posterior_report"), f"{cfg.method.upper()} posterior", summary, [],
                     {"corner": corner_figure(samples, names, truth)}, provenance=self.provenance())


class SBIPosteriorSacc(SBIPosterior):
    """SBIPosterior for an observed C_ell data vector in a sacc file (e.g. ``TheoryCl``'s
    ``cl_sacc`` of ``pipelines/photoz_to_cl.yml``).

    The simulator is rebuilt from the estimator's model file; its tracer pairs and ell bins pick
    the matching points out of the sacc file (which may hold more, e.g. 3x2pt when the simulator
    uses shear only) - a file whose binning does not match is a clear error. True parameters are
    taken from the sacc metadata when it names them (TheoryCl records its cosmology), else NaN.
    """

    name = "SBIPosteriorSacc"
    inputs = [("sbi_model", ModelDir), ("observation", SaccFile)]
    config_options = {k: v for k, v in SBIPosterior.config_options.items() if k != "row"}

    def observation(self, meta: dict):
        import sacc

        path = self.input_path("observation")
        spec = meta.get("simulator")
        if not spec:
            raise ValueError(f"{self.input_path('sbi_model')}: the model records no simulator to read {path} with")
        sim = simulator_from_spec(spec)
        if not hasattr(sim, "observation_from_sacc"):
            raise ValueError(f"simulator {spec['simulator']!r} does not describe a C_ell data vector; {path} "
                             "cannot be read as its observation")
        s = sacc.Sacc.load_fits(path)
        x_o = sim.observation_from_sacc(s, source=path)
        names = list(sim.param_names)
        truth = np.array([float(s.metadata.get(n, np.nan)) for n in names])
        return sim, x_o, truth, names
