import numpy as np
import pytest
import torch

from calipers.shear.model import (ShearNetConfig, ShearTrainConfig, _augment, build_network, gaussian_head,
                                  gaussian_nll_2d, network_inputs, predict, train_shear_model)
from calipers.shear.simulate import ShearSimConfig, psf_image, render, simulate_shear

SIM = ShearSimConfig(stamp_size=21, block_size=16)
NET = ShearNetConfig(stamp_size=21, channels=(2, 4))


def _rot(v, degrees):
    a = np.deg2rad(2 * degrees)  # spin 2
    c, s = np.cos(a), np.sin(a)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def _renders(angles, e=(0.3, 0.1)):
    psf = psf_image(SIM, 0.7)
    ims = np.stack([render(SIM, 1.5, 0.5, e[0], e[1], 0.0, 0.0, 0.7, rotate_deg=a) for a in angles])
    return network_inputs(ims, np.full(len(angles), 1e-3), psf)


def test_equivariant_net_is_exact_under_quarter_turns_and_follows_galsims_orientation():
    torch.manual_seed(0)
    net = build_network(NET).eval()
    x = _renders([0.0, 90.0, 45.0])
    with torch.no_grad():
        out = net(torch.from_numpy(x))
        eps, cov, _ = gaussian_head(out)
        q = gaussian_head(net(torch.from_numpy(np.ascontiguousarray(np.rot90(x[:1], 1, axes=(2, 3))))))
    eps, cov = eps.numpy(), cov.numpy()
    # a quarter turn of the pixels: eps -> -eps exactly, the covariance unchanged (its axes turn by 90 deg)
    assert np.abs(q[0].numpy()[0] + eps[0]).max() < 1e-5
    assert np.abs(q[1].numpy()[0] - cov[0]).max() < 1e-5 * np.abs(cov[0]).max()
    # GalSim's own 90-degree render is the same pixels
    assert np.abs(eps[1] + eps[0]).max() < 1e-5
    # 45 degrees counter-clockwise on the sky turns (eps1, eps2) by +90 degrees; the mirrored convention
    # (what the network would give without the y flip) is much further off
    right = np.abs(eps[2] - _rot(eps[0], 45.0)).max()
    mirrored = np.abs(eps[2] * [1, -1] - _rot(eps[0] * [1, -1], 45.0)).max()
    assert right < 0.3 * mirrored


def test_heads_bound_the_mean_and_give_positive_definite_spin2_covariances():
    out = torch.tensor([[30.0, -40.0, 0.2, 0.1, -3.0], [0.01, 0.0, 0.0, 0.0, 0.0]])
    eps, cov, norm = gaussian_head(out)
    assert torch.all(torch.linalg.norm(eps, dim=1) < 1.0)
    assert torch.all(torch.linalg.eigvalsh(cov) > 0)
    assert norm[0] == pytest.approx(50.0)
    # the anisotropic part lies along u: eigenvector of the largest eigenvalue is u's direction
    w, v = torch.linalg.eigh(cov[0])
    u = out[0, 2:4] / torch.linalg.norm(out[0, 2:4])
    assert abs(float(torch.dot(v[:, 1], u))) == pytest.approx(1.0, abs=1e-6)
    # the 2-D NLL against scipy's
    from scipy.stats import multivariate_normal

    c = np.array([[[0.04, 0.01], [0.01, 0.02]]])
    mu, y = np.array([[0.1, -0.2]]), np.array([[0.15, -0.1]])
    ours = gaussian_nll_2d(torch.tensor(mu), torch.tensor(c), torch.tensor(y))
    assert float(ours[0]) == pytest.approx(-multivariate_normal(mu[0], c[0]).logpdf(y[0]), rel=1e-10)


def test_augmentation_turns_targets_with_the_images():
    # unweighted-moment chi of network-frame stamps: a known-equivariant estimator
    def chi(x):
        img = x[:, 0]
        n = img.shape[-1]
        row, col = torch.meshgrid(torch.arange(n, dtype=img.dtype), torch.arange(n, dtype=img.dtype), indexing="ij")
        xs, ys = col - (n - 1) / 2, (n - 1) / 2 - row  # network frame: rows run down, y up
        q11, q22, q12 = [(img * w).sum((1, 2)) for w in (xs * xs, ys * ys, xs * ys)]
        return torch.stack([q11 - q22, 2 * q12], 1) / (q11 + q22)[:, None]

    x = torch.from_numpy(_renders([0.0, 0.0], e=(0.3, 0.2)))
    y = chi(x)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        xa, ya = _augment(x, y, gen)
        assert torch.allclose(chi(xa), ya, atol=1e-6)


def test_training_learns_ellipticity_and_is_deterministic():
    data = simulate_shear(SIM, 640, seed=1)
    x = network_inputs(data.images, data.params["noise_sigma"], data.psf_images[data.psf_index])
    y = np.stack([data.params["eps1"], data.params["eps2"]], 1)
    cfg = ShearTrainConfig(max_epochs=3, batch_size=32)
    torch.set_num_threads(1)
    s1, h1 = train_shear_model(x[:512], y[:512], x[512:], y[512:], NET, cfg, seed=5)
    s2, _ = train_shear_model(x[:512], y[:512], x[512:], y[512:], NET, cfg, seed=5)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    from calipers.shear.model import load_network

    eps, cov = predict(load_network(s1, NET), x[512:])
    assert eps.shape == (128, 2) and cov.shape == (128, 2, 2)
    # three epochs on 512 stamps already track the ellipticity (0.67 and 0.79 when written)
    assert np.corrcoef(eps[:, 0], y[512:, 0])[0, 1] > 0.4 and np.corrcoef(eps[:, 1], y[512:, 1])[0, 1] > 0.4
    assert np.all(np.hypot(eps[:, 0], eps[:, 1]) < 1) and np.all(np.linalg.eigvalsh(cov) > 0)


def test_bad_network_configurations_are_refused():
    with pytest.raises(ValueError, match="odd"):
        ShearNetConfig(stamp_size=32)
    with pytest.raises(ValueError, match="multiple of 4"):
        ShearNetConfig(rotation_order=6)
    with pytest.raises(ValueError, match="kind"):
        ShearNetConfig(kind="steerable")
    with pytest.raises(ValueError, match="plain_channels"):
        ShearNetConfig(kind="plain", channels=(4, 8, 8), plain_channels=(6, 12))


def test_plain_channels_set_the_baseline_widths_and_round_trip():
    # the default equivariant network and the matched plain CNN: within 3% in parameters
    equi = sum(p.numel() for p in build_network(ShearNetConfig()).parameters())
    small = ShearNetConfig(kind="plain", plain_channels=(6, 12, 12))
    plain = sum(p.numel() for p in build_network(small).parameters())
    wide = sum(p.numel() for p in build_network(ShearNetConfig(kind="plain")).parameters())
    assert abs(plain / equi - 1) < 0.03 and wide > 10 * equi
    # conv weights 2x6x25, 6x12x25, 12x12x25 and the 9x9 head 12x5x81 (+ biases and batch norms)
    assert plain == 2 * 6 * 25 + 6 * 12 * 25 + 12 * 12 * 25 + 12 * 5 * 81 + (6 + 12 + 12) * 3 + 5
    assert ShearNetConfig.from_dict(small.to_dict()) == small
