"""The transit network: each physics term on exact cases, the loss's composition, and training
that learns, stops early on the held-out NLL and is deterministic under a seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calipers.transit.model import (SCALE, TransitNetConfig, TransitTrainConfig, band_windows, physics_terms, predict,
                                    train_transit_model, transit_features, transit_loss)
from calipers.transit.simulate import TransitSimConfig, airs_ch0_bins


def test_physics_terms_on_exact_cases():
    wavelength, _ = airs_ch0_bins(TransitSimConfig())
    windows = band_windows(wavelength)
    assert {w["molecule"] for w in windows} == {"H2O", "CH4", "CO2"}
    k = wavelength.size
    base = torch.full((1,), 0.01, dtype=torch.float64)
    line = torch.linspace(-1, 1, k, dtype=torch.float64)[None, :]
    t = physics_terms(3.0 * line, base, windows)
    assert float(t["smoothness"]) == pytest.approx(0.0, abs=1e-20)  # a straight line has no curvature
    assert float(t["positivity"]) == 0.0
    # a band that follows its own template (plus any constant) is coherent; a kink inside it is not
    w = windows[0]
    a = torch.zeros(1, k, dtype=torch.float64)
    a[0, w["bins"]] = torch.as_tensor(2.5 * w["template"] + 0.7)
    coherent = physics_terms(a, base, [w])["band_coherence"]
    assert float(coherent) == pytest.approx(0.0, abs=1e-20)
    a[0, w["bins"][len(w["bins"]) // 2]] += 1.0
    kinked = float(physics_terms(a, base, [w])["band_coherence"])
    n = len(w["bins"])
    # the residual of a unit spike after removing the mean and the template component
    spike = np.zeros(n)
    spike[n // 2] = 1.0
    spike -= spike.mean()
    spike -= (spike @ w["template"]) * w["template"]
    assert kinked == pytest.approx(np.mean(spike ** 2), rel=1e-10)
    # smoothness of a unit spike: second differences 1, -2, 1 -> 6 / (K - 2)
    spike_a = torch.zeros(1, k, dtype=torch.float64)
    spike_a[0, 100] = 1.0
    assert float(physics_terms(spike_a, base, [])["smoothness"]) == pytest.approx(6.0 / (k - 2))
    # positivity: a depth of -1e-3 (= -1 in SCALE units) below zero everywhere
    negative = torch.full((1, k), -0.011 / SCALE, dtype=torch.float64)
    assert float(physics_terms(negative, base, [])["positivity"]) == pytest.approx(1.0)
    # seam: a jump of 2 at bin 50 on a straight line
    jump = 3.0 * line.clone()
    jump[0, 50:] += 2.0
    assert float(physics_terms(jump, base, [], seams=[50])["seam"]) == pytest.approx(4.0, rel=1e-9)
    assert float(physics_terms(jump, base, [], seams=[])["seam"]) == 0.0


def test_loss_is_the_nll_plus_the_weighted_terms():
    torch.manual_seed(0)
    a = torch.randn(4, 30, dtype=torch.float64)
    sigma = torch.rand(4, 30, dtype=torch.float64) + 0.5
    y = torch.randn(4, 30, dtype=torch.float64)
    base = torch.full((4,), 0.01, dtype=torch.float64)
    plain, parts = transit_loss(a, sigma, y, base, {}, [])
    nll = torch.distributions.Normal(a, sigma).log_prob(y).mean().neg()
    assert float(plain) == pytest.approx(float(nll), rel=1e-12) and parts["nll"] == pytest.approx(float(nll))
    weighted, _ = transit_loss(a, sigma, y, base, {"smoothness": 2.0}, [])
    assert float(weighted) == pytest.approx(float(nll) + 2.0 * parts["smoothness"], rel=1e-12)


def toy(n, k, seed):
    """Spectra = base + a smooth feature; the 'extraction' = truth + noise of known sigma."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.005, 0.02, n)
    x = np.linspace(0, 1, k)
    depth = base[:, None] + 4e-4 * rng.normal(size=(n, 1)) * np.sin(2 * np.pi * x)[None, :]
    sigma = rng.uniform(1e-4, 4e-4, (n, 1)) * np.ones((1, k))
    d_hat = depth + sigma * rng.normal(size=(n, k))
    fit = {"d_hat": d_hat, "sigma_hat": sigma, "rms": sigma * 10, "beta": np.ones((n, k)),
           "white_depth": base, "white_sigma": np.full(n, 1e-4)}
    return (*transit_features(fit), depth), x


def test_training_learns_stops_on_the_held_out_nll_and_is_deterministic():
    torch.set_num_threads(1)
    k = 40
    train, wavelength = toy(300, k, 0)
    held, _ = toy(100, k, 1)
    net = TransitNetConfig(n_bins=k, channels=8, dilations=(1, 2), hidden=8)
    cfg = TransitTrainConfig(max_epochs=12, patience=3, batch_size=32)
    wl = 2.0 + 1.5 * wavelength
    state, hist = train_transit_model(train, held, net, cfg, wl, seed=5)
    again, _ = train_transit_model(train, held, net, cfg, wl, seed=5)
    assert all(torch.equal(state[key], again[key]) for key in state)
    assert hist["held_out_nll"][hist["best_epoch"]] == min(hist["held_out_nll"])
    assert len(hist["held_out_nll"]) <= 12 and set(hist["held_out_terms"][0]) == {"smoothness", "positivity",
                                                                                 "band_coherence", "seam"}
    mu, sigma = predict(state, net, *held[:3])
    truth = held[3]
    raw_rmse = np.sqrt(np.mean((held[2][:, None] + SCALE * held[0][:, 0] - truth) ** 2))
    assert np.sqrt(np.mean((mu - truth) ** 2)) < raw_rmse  # it denoises the extracted depths
    assert np.all(sigma > 0)
    with pytest.raises(ValueError, match="expects"):
        predict(state, net, held[0][:, :, :30], held[1], held[2])
    with pytest.raises(ValueError, match="unknown term"):
        TransitTrainConfig(loss_weights={"smooth": 1.0})


def test_audit_scores_smoothness_negatives_and_shares_exactly():
    from calipers.transit.audit import audit_spectra, audit_summary

    wavelength, _ = airs_ch0_bins(TransitSimConfig())
    k = wavelength.size
    smooth = np.full((1, k), 0.01) + 1e-4 * np.linspace(-1, 1, k)[None, :]  # a straight line
    sigma = np.full((1, k), 1e-4)
    spiky = smooth.copy()
    spiky[0, 40] += 2e-4  # second differences +-2 sigma, -4 sigma at bin 40
    negative = smooth.copy()
    negative[0, [5, 6]] = -1e-5
    recs = audit_spectra(np.vstack([smooth, spiky, negative]), np.vstack([sigma] * 3), wavelength)
    assert recs[0]["smoothness"]["score"] == pytest.approx(0.0, abs=1e-18) and not recs[0]["smoothness"]["violated"]
    assert recs[1]["smoothness"]["score"] == pytest.approx((4 + 16 + 4) / (k - 2))
    assert recs[1]["smoothness"]["worst_bins"][0] == {"bin": 40, "second_difference_sigma": pytest.approx(-4.0)}
    assert recs[2]["negative_depths"] == {"count": 2, "bins": [5, 6]}
    for r in recs:
        shares = r["loss_shares"]
        assert sum(shares.values()) == pytest.approx(1.0) or sum(shares.values()) == 0.0
    summary = audit_summary(recs)
    assert summary["negative_depth_fraction"] == pytest.approx(1 / 3) and summary["n_planets"] == 3


def test_ensemble_prediction_is_the_mixture_moments():
    from calipers.transit.model import predict_ensemble

    torch.set_num_threads(1)
    k = 20
    train, wavelength = toy(120, k, 0)
    held, _ = toy(40, k, 1)
    net = TransitNetConfig(n_bins=k, channels=4, dilations=(1,), hidden=4)
    cfg = TransitTrainConfig(max_epochs=2, patience=2, batch_size=32)
    states = [train_transit_model(train, held, net, cfg, 2.0 + wavelength, seed=s)[0] for s in (1, 2)]
    (m1, s1), (m2, s2) = (predict(s, net, *held[:3]) for s in states)
    mu, sigma = predict_ensemble(states, net, *held[:3])
    np.testing.assert_allclose(mu, (m1 + m2) / 2, rtol=1e-12)
    # two equal-weight Gaussians: variance = (s1^2 + s2^2) / 2 + ((m1 - m2) / 2)^2
    np.testing.assert_allclose(sigma ** 2, (s1 ** 2 + s2 ** 2) / 2 + ((m1 - m2) / 2) ** 2, rtol=1e-10)
    one_mu, one_sigma = predict_ensemble(states[:1], net, *held[:3])
    np.testing.assert_array_equal(one_mu, m1)
    np.testing.assert_allclose(one_sigma, s1, rtol=1e-12)
