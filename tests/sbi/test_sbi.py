"""calipers.sbi on the Gaussian-linear task (analytic posterior), library and stages."""
import json

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import leftovers, run_stage

from calipers.core.errors import GateFailed
from calipers.core.models import load_estimator, save_estimator
from calipers.sbi import GaussianLinear, SBIConfig, build_posterior, sbc, simulate, train_estimator

FAST = {"hidden_features": 32, "num_transforms": 2, "max_num_epochs": 60, "stop_after_epochs": 10,
        "training_batch_size": 100}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_gaussian_linear_posterior_is_analytic():
    sim = GaussianLinear(dim=3, prior_var=0.1, noise_var=0.1)
    mean, cov = sim.true_posterior(np.array([0.2, -0.4, 0.0]))
    np.testing.assert_allclose(mean, [0.1, -0.2, 0.0])
    np.testing.assert_allclose(cov, 0.05 * np.eye(3))
    # Monte Carlo: theta | x from joint draws near x = 0 has variance 0.05
    theta, x = simulate(sim, 200_000, seed=1, block_size=50_000)
    near = np.all(np.abs(x) < 0.05, axis=1)
    assert abs(theta[near].var(0).mean() - 0.05) < 0.01


def test_simulation_blocks_do_not_depend_on_the_split():
    sim = GaussianLinear(dim=2)
    theta, x = simulate(sim, 1050, seed=3, block_size=100)
    parts = [simulate(sim, 1050, seed=3, block_size=100, blocks=range(r, 11, 3)) for r in range(3)]
    order = sorted((b, r, i) for r in range(3) for i, b in enumerate(range(r, 11, 3)))
    rebuilt = np.concatenate([parts[r][0][i * 100:(i + 1) * 100] for b, r, i in order])
    np.testing.assert_array_equal(rebuilt, theta)
    assert theta.shape == (1050, 2) and x.shape == (1050, 2)


@pytest.fixture(scope="module")
def npe_model(tmp_path_factory):
    torch.set_num_threads(1)
    sim = GaussianLinear(dim=2)
    theta, x = simulate(sim, 3000, seed=0)
    cfg = SBIConfig(method="npe", **FAST)
    net, summary = train_estimator(theta, x, sim.prior_torch(), cfg)
    d = tmp_path_factory.mktemp("npe")
    save_estimator(str(d), net, cfg, theta, x, extra={"simulator": {"simulator": "gaussian_linear",
                                                                    "options": {"dim": 2}}})
    return sim, net, cfg, str(d), summary


def test_npe_posterior_matches_the_analytic_one(npe_model):
    sim, net, cfg, _, summary = npe_model
    assert summary["epochs_trained"] > 5
    x_o = np.array([0.3, -0.2])
    post = build_posterior(net, sim.prior_torch(), cfg)
    torch.manual_seed(0)
    s = post.sample((4000,), x=torch.tensor([x_o], dtype=torch.float32), show_progress_bars=False).numpy()
    mean, cov = sim.true_posterior(x_o)
    np.testing.assert_allclose(s.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(s.std(0), np.sqrt(np.diag(cov)), rtol=0.2)


def test_model_file_round_trip_without_pickle(npe_model):
    sim, net, cfg, d, _ = npe_model
    net2, cfg2, meta = load_estimator(d)
    assert cfg2 == cfg and meta["simulator"]["simulator"] == "gaussian_linear"
    th = torch.randn(20, 2) * 0.3
    xo = torch.zeros(20, 2)
    with torch.no_grad():
        a = net.log_prob(th.unsqueeze(1), xo)
        b = net2.log_prob(th.unsqueeze(1), xo)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="not a calipers SBI model"):
        load_estimator(str(d) + "_missing")


@pytest.mark.parametrize("method", ["npe", "nle", "nre"])
def test_sbc_passes_for_each_method(method, npe_model):
    sim = GaussianLinear(dim=2)
    prior = sim.prior_torch()
    if method == "npe":
        net, cfg = npe_model[1], npe_model[2]
    else:
        theta, x = simulate(sim, 3000, seed=0)
        cfg = SBIConfig(method=method, sampler="sir", sir_proposals=5000, **FAST)
        net, _ = train_estimator(theta, x, prior, cfg)
    tt, xx = simulate(sim, 150, seed=7)
    if method == "npe":
        post = build_posterior(net, prior, cfg)
        res = sbc(lambda x: post, tt, xx, 100)
    else:
        res = sbc(lambda x: build_posterior(net, prior, cfg, x), tt, xx, 100)
    assert min(res.ks_pvals) * 2 > 0.01, res.ks_pvals


def write_config(d, **sections):
    base = {"Simulate": {"simulator_options": {"dim": 2}, "n_simulations": 2000, "block_size": 500},
            "SBITrain": dict(FAST), "SBIGate": {"n_tests": 120, "num_posterior_samples": 100, "c2st_observations": 2,
                                                "c2st_samples": 500},
            "SBIPosterior": {"n_samples": 2000}}
    for k, v in sections.items():
        base[k].update(v)
    (d / "cfg.yml").write_text(yaml.safe_dump(base))
    return str(d / "cfg.yml")


def test_stages_end_to_end(tmp_path):
    cfg = write_config(tmp_path)
    sims, test, obs = (str(tmp_path / f) for f in ("sims.hdf5", "test.hdf5", "obs.hdf5"))
    run_stage("Simulate", cfg, simulations=sims)
    test_cfg = write_config(tmp_path, Simulate={"n_simulations": 120, "seed": 1})
    run_stage("Simulate", test_cfg, simulations=test)
    obs_cfg = write_config(tmp_path, Simulate={"n_simulations": 1, "seed": 2})
    run_stage("Simulate", obs_cfg, simulations=obs)
    cfg = write_config(tmp_path)
    model = str(tmp_path / "model")
    run_stage("SBITrain", cfg, simulations=sims, sbi_model=model)
    run_stage("SBIGate", cfg, sbi_model=model, test_simulations=test, sbi_report=str(tmp_path / "report"))
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    assert rep["passed"] is True and (tmp_path / "report" / "sbc_ranks.png").exists()
    run_stage("SBIPosterior", cfg, sbi_model=model, observation=obs, posterior_samples=str(tmp_path / "post.hdf5"),
              posterior_report=str(tmp_path / "post"))
    with h5py.File(tmp_path / "post.hdf5") as f:
        samples, names, logp = f["samples"][:], f["param_names"][:], f["log_prob"][:]
        truth, x_o = f["theta_true"][:], f["x_observed"][:]
    assert samples.shape == (2000, 2) and truth.shape == (2,) and [n.decode() for n in names] == ["theta_0", "theta_1"]
    assert np.all(np.isfinite(logp))
    mean, _ = GaussianLinear(dim=2).true_posterior(x_o)
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.5 * np.sqrt(0.05))  # half a posterior sd: 2000 sims
    assert (tmp_path / "post" / "corner.png").exists()
    assert not leftovers(tmp_path)


def test_gate_fails_an_undertrained_estimator(tmp_path):
    """SBC alone passes an estimator that returns (nearly) the prior; C2ST against the reference
    posterior does not."""
    gate = {"c2st_observations": 3, "c2st_samples": 500}
    cfg = write_config(tmp_path, Simulate={"n_simulations": 200},
                       SBITrain={"max_num_epochs": 1, "hidden_features": 8, "num_transforms": 1}, SBIGate=gate)
    sims, test = str(tmp_path / "sims.hdf5"), str(tmp_path / "test.hdf5")
    run_stage("Simulate", cfg, simulations=sims)
    run_stage("Simulate", write_config(tmp_path, Simulate={"n_simulations": 120, "seed": 1}), simulations=test)
    cfg = write_config(tmp_path, Simulate={"n_simulations": 200},
                       SBITrain={"max_num_epochs": 1, "hidden_features": 8, "num_transforms": 1}, SBIGate=gate)
    run_stage("SBITrain", cfg, simulations=sims, sbi_model=str(tmp_path / "model"))
    with pytest.raises(GateFailed) as err:
        run_stage("SBIGate", cfg, sbi_model=str(tmp_path / "model"), test_simulations=test,
                  sbi_report=str(tmp_path / "report"))
    assert any(f.startswith("c2st") for f in err.value.failures)
    assert (tmp_path / "report.FAILED" / "tarp.png").exists()


def test_contraction_check_catches_an_estimator_that_returns_the_prior(tmp_path):
    """Without a reference posterior (the cosmology case) SBC and TARP can pass a posterior equal
    to the prior; the contraction check fails it, and passes a trained estimator."""
    sims, test = str(tmp_path / "sims.hdf5"), str(tmp_path / "test.hdf5")
    run_stage("Simulate", write_config(tmp_path, Simulate={"n_simulations": 200}), simulations=sims)
    run_stage("Simulate", write_config(tmp_path, Simulate={"n_simulations": 120, "seed": 1}), simulations=test)
    gate = {"c2st_observations": 0, "min_contraction": 0.25}
    cfg = write_config(tmp_path, SBITrain={"max_num_epochs": 1, "hidden_features": 8, "num_transforms": 1,
                                           "learning_rate": 1e-6}, SBIGate=gate)
    run_stage("SBITrain", cfg, simulations=sims, sbi_model=str(tmp_path / "prior_like"))
    with pytest.raises(GateFailed) as err:
        run_stage("SBIGate", cfg, sbi_model=str(tmp_path / "prior_like"), test_simulations=test,
                  sbi_report=str(tmp_path / "report"))
    assert any(f.startswith("contraction_theta_0") for f in err.value.failures), err.value.failures
    cfg = write_config(tmp_path, SBIGate=gate)
    run_stage("Simulate", cfg, simulations=str(tmp_path / "sims2000.hdf5"))
    run_stage("SBITrain", cfg, simulations=str(tmp_path / "sims2000.hdf5"), sbi_model=str(tmp_path / "trained"))
    run_stage("SBIGate", cfg, sbi_model=str(tmp_path / "trained"), test_simulations=test,
              sbi_report=str(tmp_path / "ok"))
    rep = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert all(0.3 < v < 0.7 for v in rep["metrics"]["posterior_contraction"].values())  # exact: 0.5
