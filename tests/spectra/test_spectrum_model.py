"""The log g network: inputs, the Gaussian head, training on a toy linear spectrum, determinism,
the ridge residual form, the mixture moments against their closed form."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from calipers.spectra.model import (SpectrumNetConfig, SpectrumShapeError, SpectrumTrainConfig, mixture_moments,
                                    predict_members, ridge_fit, spectrum_features, train_member)

N_PIX = 256


def toy_spectra(n, seed=0):
    """Continuum 1 with one absorption line whose depth is linear in the label."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(1.0, 5.0, n)
    pix = np.arange(N_PIX)
    line = np.exp(-0.5 * ((pix - 128) / 3.0) ** 2)
    return 1.0 - 0.1 * y[:, None] * line[None, :], y


def toy_noise(clean, snr, rng):
    sigma = clean / snr[:, None]
    noisy = clean + sigma * rng.normal(size=clean.shape)
    return noisy, 1.0 / (np.abs(noisy) / snr[:, None]) ** 2  # ivar from the noisy flux


SMALL = SpectrumNetConfig(n_pix=N_PIX, channels=(4, 8), kernel_size=5, stem_stride=2, hidden=16, dropout=0.0)
FAST = SpectrumTrainConfig(max_epochs=6, patience=6, batch_size=32, learning_rate=5e-3, snr_range=(20.0, 50.0))


def test_features_and_their_errors():
    clean, _ = toy_spectra(4)
    f, i = toy_noise(clean, np.full(4, 10.0), np.random.default_rng(1))
    x = spectrum_features(2.0 * f, i / 4.0)  # the scale of the flux drops out of both channels
    np.testing.assert_allclose(x, spectrum_features(f, i), rtol=1e-6)
    np.testing.assert_allclose(np.median(x[:, 0], axis=1), 1.0)
    i_bad = i.copy()
    i_bad[2, 7] = 0.0
    with pytest.raises(ValueError, match="ivar.*row 2, pixel 7"):
        spectrum_features(f, i_bad)
    with pytest.raises(SpectrumShapeError):
        spectrum_features(f, i[:, :10])


def test_ridge_matches_its_normal_equations_in_both_forms():
    rng = np.random.default_rng(2)
    for n, p in ((50, 10), (10, 50)):  # primal and dual solves
        x, y = rng.normal(size=(n, p)), rng.normal(size=n)
        w, b = ridge_fit(x, y, alpha=0.7)
        xc = x - x.mean(0)
        grad = xc.T @ (xc @ w - (y - y.mean())) + 0.7 * w  # stationarity of the penalised loss
        np.testing.assert_allclose(grad, 0.0, atol=1e-9)
        assert b == pytest.approx(y.mean() - x.mean(0) @ w)


def test_mixture_moments_closed_form():
    means = np.array([[0.0, 1.0], [2.0, 1.0]])
    sigmas = np.array([[1.0, 0.5], [1.0, 0.5]])
    m, s = mixture_moments(means, sigmas)
    np.testing.assert_allclose(m, [1.0, 1.0])
    np.testing.assert_allclose(s, [np.sqrt(2.0), 0.5])  # 1 + (0 + 4) / 2 - 1 = 2


@pytest.mark.parametrize("residual", [False, True])
def test_member_learns_a_linear_line_depth_and_is_deterministic(residual):
    torch.set_num_threads(1)
    clean, y = toy_spectra(400)
    net = SpectrumNetConfig(**{**SMALL.to_dict(), "residual_on_linear": residual})
    state, hist = train_member(clean, y, toy_noise, net, FAST, seed=3)
    again, _ = train_member(clean, y, toy_noise, net, FAST, seed=3)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert hist.best_epoch >= 0 and len(hist.val_nll) == len(hist.train_loss) >= 1
    test_clean, y_test = toy_spectra(200, seed=9)
    f, i = toy_noise(test_clean, np.full(200, 30.0), np.random.default_rng(4))
    means, sigmas = predict_members([state], net, f, i)
    assert means.shape == sigmas.shape == (1, 200) and np.all(sigmas > 0)
    rmse = np.sqrt(np.mean((means[0] - y_test) ** 2))
    assert rmse < 0.5 * y_test.std(), rmse  # it learnt the label (an untrained net is at ~1 std)
    if residual:
        assert float(state["ridge_w"].abs().sum()) > 0
    with pytest.raises(SpectrumShapeError, match="pixels"):
        predict_members([state], net, f[:, :100], i[:, :100])


def test_width_model_recovers_a_known_noise_law_exactly_in_expectation():
    from calipers.spectra.baselines import LOG_CHI2_1_MEAN, LogResidualWidth

    assert LOG_CHI2_1_MEAN == pytest.approx(-1.2703628454614782, rel=1e-12)  # psi(1/2) + log 2
    rng = np.random.default_rng(5)
    snr = np.exp(rng.uniform(np.log(3), np.log(30), 200_000))
    sigma = 2.0 / snr  # sigma = 2 snr^-1: c0 = log 4, c1 = -2
    width = LogResidualWidth().fit(sigma * rng.normal(size=snr.size), snr)
    assert width.coef[1] == pytest.approx(-2.0, abs=0.02)
    np.testing.assert_allclose(width.predict([5.0, 20.0]), [0.4, 0.1], rtol=0.03)


@pytest.mark.parametrize("name", ["ridge", "gbm"])
def test_baselines_give_a_mean_and_a_width(name):
    from calipers.spectra.baselines import GBMLogg, RidgeLogg

    clean, y = toy_spectra(600)
    rng = np.random.default_rng(6)
    f, i = toy_noise(clean, np.exp(rng.uniform(np.log(10), np.log(40), 600)), rng)
    model = RidgeLogg(alpha=1e-2) if name == "ridge" else GBMLogg(rebin=4, n_estimators=100, n_jobs=1)
    model.fit(f, i, y)
    tc, ty = toy_spectra(300, seed=7)
    for snr in (10.0, 40.0):
        tf, ti = toy_noise(tc, np.full(300, snr), np.random.default_rng(8))
        mean, sigma = model.predict(tf, ti)
        rmse = np.sqrt(np.mean((mean - ty) ** 2))
        assert rmse < 0.5 * ty.std()
        # the width model's sigma is the right size for the residuals it describes
        assert 0.6 < np.median(sigma) / rmse < 1.6, (snr, np.median(sigma), rmse)
    # the state round trip (plain arrays and numbers, the booster as text) gives the same predictions
    if name == "ridge":
        params, arrays = model.state()
        again = RidgeLogg.from_state(params, arrays)
    else:
        params, text = model.state()
        assert isinstance(text, str) and text.startswith("tree")
        again = GBMLogg.from_state(params, text)
    for got, want in zip(again.predict(tf, ti), model.predict(tf, ti)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(RuntimeError, match="before fit"):
        (RidgeLogg() if name == "ridge" else GBMLogg()).predict(tf, ti)
    with pytest.raises(RuntimeError, match="before fit"):
        (RidgeLogg() if name == "ridge" else GBMLogg()).state()


def test_configs_round_trip_through_plain_dicts():
    net = SpectrumNetConfig(n_pix=512, channels=(4, 8), residual_on_linear=True)
    train = SpectrumTrainConfig(max_epochs=3, snr_range=(5, 50))
    assert SpectrumNetConfig.from_dict(net.to_dict()) == net
    assert SpectrumTrainConfig.from_dict(train.to_dict()) == train
    assert train.to_dict()["snr_range"] == [5.0, 50.0] and net.to_dict()["channels"] == [4, 8]
    with pytest.raises(ValueError, match="unknown option.*'epochs'"):
        SpectrumTrainConfig.from_dict({"epochs": 3})


def test_member_with_dropout_depends_on_its_seed_alone():
    torch.set_num_threads(1)
    clean, y = toy_spectra(120)
    net = SpectrumNetConfig(**{**SMALL.to_dict(), "dropout": 0.3})
    train = SpectrumTrainConfig(max_epochs=2, patience=2, batch_size=32, snr_range=(20.0, 50.0))
    torch.manual_seed(1)
    state, _ = train_member(clean, y, toy_noise, net, train, seed=3)
    after = torch.random.get_rng_state()
    torch.manual_seed(2)  # another global generator state: the member must not see it
    again, _ = train_member(clean, y, toy_noise, net, train, seed=3)
    assert all(torch.equal(state[k], again[k]) for k in state)
    torch.manual_seed(1)
    assert torch.equal(torch.random.get_rng_state(), after)  # and the caller's generator is left alone


def toy_two_lines(n, seed=0):
    """Two absorption lines: the first's depth follows the label, the second's an auxiliary label."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(1.0, 5.0, n)
    a = rng.uniform(-1.0, 1.0, n)
    pix = np.arange(N_PIX)
    line1 = np.exp(-0.5 * ((pix - 64) / 3.0) ** 2)
    line2 = np.exp(-0.5 * ((pix - 192) / 3.0) ** 2)
    return 1.0 - 0.1 * y[:, None] * line1 - 0.2 * (a[:, None] + 1.0) * line2, np.column_stack([y, a])


def test_auxiliary_heads_learn_their_label_and_leave_the_main_output_alone():
    torch.set_num_threads(1)
    clean, labels = toy_two_lines(400)
    net = SpectrumNetConfig(**{**SMALL.to_dict(), "n_aux": 1})
    state, _ = train_member(clean, labels, toy_noise, net, FAST, seed=3)
    assert state["aux_mean"].shape == (1,) and state["head.weight"].shape[0] == 4
    test_clean, test_labels = toy_two_lines(200, seed=9)
    f, i = toy_noise(test_clean, np.full(200, 30.0), np.random.default_rng(4))
    means, sigmas, aux = predict_members([state], net, f, i, aux=True)
    assert means.shape == sigmas.shape == (1, 200) and aux.shape == (1, 200, 1)
    for pred, truth in ((means[0], test_labels[:, 0]), (aux[0, :, 0], test_labels[:, 1])):
        assert np.sqrt(np.mean((pred - truth) ** 2)) < 0.5 * truth.std()  # both labels learnt, in label units
    plain = predict_members([state], net, f, i)  # the two-output form is the main label's alone
    np.testing.assert_array_equal(plain[0], means)
    with pytest.raises(SpectrumShapeError, match="labels have shape"):
        train_member(clean, labels[:, 0], toy_noise, net, FAST, seed=3)
    with pytest.raises(ValueError, match="row 5, column 1"):
        bad = labels.copy()
        bad[5, 1] = np.nan
        train_member(clean, bad, toy_noise, net, FAST, seed=3)
    with pytest.raises(ValueError, match="n_aux"):
        SpectrumNetConfig(n_pix=N_PIX, n_aux=-1)
