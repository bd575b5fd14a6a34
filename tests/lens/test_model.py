"""The lens-finder CNN ensemble (calipers.lens.model) on small synthetic images (no simulator)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calipers.lens.model import (ImageShapeError, LensCNNConfig, LensEnsemble, LensTrainConfig, dihedral_transforms,
                                 ensemble_diversity, fuse_members, matched_weights, preprocess_cutouts,
                                 score_members, specialisation_weights, train_ensemble, train_member)

N_PIX = 32
CNN = LensCNNConfig(n_pix=N_PIX, widths=(8, 8, 16, 16), head_hidden=16)


def ring_images(n, seed=0, amplitude=1.5, lens_fraction=0.3):
    """Noise images; the 'lenses' carry a faint ring of radius 6 px in all bands."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:N_PIX, :N_PIX] - (N_PIX - 1) / 2
    ring = np.exp(-0.5 * ((np.hypot(xx, yy) - 6.0) / 1.2) ** 2)
    labels = (rng.random(n) < lens_fraction).astype(int)
    data = rng.normal(size=(n, 3, N_PIX, N_PIX)) + amplitude * labels[:, None, None, None] * ring
    ivar = np.ones_like(data)
    meta = {"n_exposures": rng.integers(1, 11, n), "psf_fwhm_r": rng.uniform(0.6, 1.4, n)}
    return data.astype(np.float32), ivar.astype(np.float32), labels, meta


@pytest.fixture(scope="module")
def trained():
    data, ivar, labels, meta = ring_images(500)
    train = LensTrainConfig(n_members=2, max_epochs=4, patience=2, batch_size=64)
    ens = train_ensemble(data, ivar, labels, meta, CNN, train, seed=3)
    return ens, (data, ivar, labels, meta), train


def test_dihedral_transforms_are_the_eight_group_elements():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = dihedral_transforms(x)
    assert len(views) == 8
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    # closed under the group: rotating any view gives another view
    flat = {tuple(v.flatten().tolist()) for v in views}
    for v in views:
        assert tuple(torch.rot90(v, 1, dims=(-2, -1)).flatten().tolist()) in flat
        assert tuple(torch.flip(v, dims=(-1,)).flatten().tolist()) in flat


def test_score_is_invariant_to_rotations_and_flips(trained):
    ens, (data, ivar, _, _), _ = trained
    x, w = data[:40], ivar[:40]
    base = score_members(ens, x, w, mc_samples=2).deterministic
    for k in (1, 2, 3):
        rot = score_members(ens, np.rot90(x, k, axes=(2, 3)).copy(), w, mc_samples=2).deterministic
        np.testing.assert_allclose(rot, base, rtol=0, atol=1e-5 * max(1.0, np.abs(base).max()))
    flip = score_members(ens, x[..., ::-1].copy(), w, mc_samples=2).deterministic
    np.testing.assert_allclose(flip, base, rtol=0, atol=1e-5 * max(1.0, np.abs(base).max()))
    # a single view is not invariant (the check above is not vacuous)
    one = score_members(ens, x, w, mc_samples=2, dihedral=False).deterministic
    one_rot = score_members(ens, np.rot90(x, 1, axes=(2, 3)).copy(), w, mc_samples=2, dihedral=False).deterministic
    assert np.abs(one - one_rot).max() > 1e-4


def test_training_learns_and_is_deterministic(trained):
    ens, (data, ivar, labels, meta), train = trained
    assert all(h.best_val_auroc > 0.9 for h in ens.histories)
    again = train_ensemble(data, ivar, labels, meta, CNN, train, seed=3, members=[1])
    for key, value in ens.states[1].items():
        assert torch.equal(value, again.states[0][key]), key
    assert again.seeds == [ens.seeds[1]]


def test_logit_offset_undoes_the_class_weighting(trained):
    ens, (_, _, labels, _), train = trained
    # every member stores -log(n_neg / n_pos) of its own fitting split
    for state, seed in zip(ens.states, ens.seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(labels))
        fit = order[int(round(train.validation_fraction * len(labels))):]
        n_pos = labels[fit].sum()
        assert float(state["logit_offset"]) == pytest.approx(-math.log((len(fit) - n_pos) / n_pos), rel=1e-6)


def test_mc_dropout_is_seeded_and_has_variance(trained):
    ens, (data, ivar, _, _), _ = trained
    a = score_members(ens, data[:20], ivar[:20], mc_samples=8, seed=5)
    b = score_members(ens, data[:20], ivar[:20], mc_samples=8, seed=5)
    c = score_members(ens, data[:20], ivar[:20], mc_samples=8, seed=6)
    assert np.array_equal(a.logit, b.logit) and np.array_equal(a.variance, b.variance)
    assert not np.array_equal(a.logit, c.logit)
    assert np.all(a.variance > 0)


def test_no_dropout_means_no_mc_variance():
    data, ivar, labels, meta = ring_images(200, seed=1)
    cnn = LensCNNConfig(n_pix=N_PIX, widths=(8, 8, 16), head_hidden=8, dropout=0.0)
    ens = train_ensemble(data, ivar, labels, meta, cnn, LensTrainConfig(n_members=1, max_epochs=1), seed=0)
    s = score_members(ens, data[:10], ivar[:10], mc_samples=4)
    np.testing.assert_allclose(s.variance, 0.0, atol=1e-12)
    np.testing.assert_allclose(s.logit, s.deterministic, atol=1e-9)


def test_fusion_exact_cases():
    logits = np.array([[1.0, -2.0], [3.0, 0.0]])
    var = np.array([[1.0, 1.0], [4.0, 1.0]])
    np.testing.assert_allclose(fuse_members(logits), [2.0, -1.0])
    # weights 1/1 and 1/4 -> 0.8 and 0.2
    np.testing.assert_allclose(fuse_members(logits, var, "inverse_variance"), [0.8 * 1 + 0.2 * 3, -1.0])
    with pytest.raises(ValueError, match="variances"):
        fuse_members(logits, None, "inverse_variance")
    with pytest.raises(ValueError, match="fusion method"):
        fuse_members(logits, var, "median")


def test_diversity_exact_cases():
    z = np.array([[0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 4.0, 6.0]])  # perfectly correlated
    d = ensemble_diversity(z, threshold=1.5, window=1.0)
    assert d["mean_correlation"] == pytest.approx(1.0)
    # fused = 0, 1.5, 3, 4.5 -> near 1.5 +- 1: only the 2nd object; members say 1 (< 1.5) and 2 (> 1.5)
    assert d["n_near_threshold"] == 1 and d["disagreement_near_threshold"] == 1.0
    anti = ensemble_diversity(np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]))
    assert anti["mean_correlation"] == pytest.approx(-1.0)


def test_matched_weights_reproduce_the_positive_histogram():
    rng = np.random.default_rng(0)
    pos = rng.integers(1, 11, 3000)
    neg = np.minimum(rng.geometric(0.25, 9000), 10)  # skewed to few exposures
    values = np.concatenate([pos, neg])
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    edges = np.arange(0.5, 11.0)
    w = matched_weights(values, labels, edges)
    assert np.all(w[labels == 1] == 1.0)
    assert w[labels == 0].sum() == pytest.approx(len(neg))
    h_pos = np.histogram(pos, edges)[0] / len(pos)
    h_neg = np.histogram(neg, edges, weights=w[labels == 0])[0] / len(neg)
    np.testing.assert_allclose(h_neg, h_pos, atol=1e-12)


def test_specialisation_weights_split_into_quantile_strata():
    meta = {"psf_fwhm_r": np.linspace(0.6, 1.4, 400)}
    assert specialisation_weights(meta, 0, 5, "psf", 3.0) is None
    assert specialisation_weights(meta, 2, 5, None, 3.0) is None
    ws = [specialisation_weights(meta, k, 5, "psf", 3.0) for k in range(1, 5)]
    up = np.stack([w == 3.0 for w in ws])
    assert np.all(up.sum(axis=0) == 1)           # every image is some specialist's stratum
    assert all(abs(u.sum() - 100) <= 1 for u in up)  # quartiles
    with pytest.raises(KeyError, match="n_exposures"):
        specialisation_weights({}, 1, 5, "depth", 3.0)


def test_bad_inputs_are_named():
    data, ivar, labels, meta = ring_images(20)
    bad = data.copy()
    bad[7, 1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="row 107"):
        preprocess_cutouts(bad, ivar, row_offset=100)
    with pytest.raises(ImageShapeError, match="trained on 3 bands of 64x64"):
        preprocess_cutouts(data, ivar, expected_shape=(3, 64))
    with pytest.raises(ImageShapeError, match="ivar shape"):
        preprocess_cutouts(data, ivar[:, :2])
    with pytest.raises(ValueError, match="both lenses and non-lenses"):
        train_member(preprocess_cutouts(data, ivar), np.zeros(20), None, CNN, LensTrainConfig(), seed=0)
    with pytest.raises(ValueError, match="widths"):
        LensCNNConfig(widths=(8,))
    with pytest.raises(ValueError, match="specialise"):
        LensTrainConfig(specialise="colour")


def test_metadata_branch_needs_its_columns():
    data, ivar, labels, meta = ring_images(200, seed=2)
    cnn = LensCNNConfig(n_pix=N_PIX, widths=(8, 8, 16), head_hidden=8, meta_columns=("psf_fwhm_r", "n_exposures"))
    ens = train_ensemble(data, ivar, labels, meta, cnn, LensTrainConfig(n_members=1, max_epochs=1), seed=0)
    s = score_members(ens, data[:8], ivar[:8], meta={k: v[:8] for k, v in meta.items()}, mc_samples=2)
    assert s.logit.shape == (1, 8)
    with pytest.raises(KeyError, match="n_exposures"):
        score_members(ens, data[:8], ivar[:8], meta={"psf_fwhm_r": meta["psf_fwhm_r"][:8]})


def test_model_directory_round_trip_and_onnx(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from calipers.core.lens_models import export_member_onnx, read_lens_model, write_lens_model

    ens, (data, ivar, _, _), _ = trained
    write_lens_model(str(tmp_path / "m"), ens)
    back, meta = read_lens_model(str(tmp_path / "m"))
    assert isinstance(back, LensEnsemble) and meta["kind"] == "calipers.lens.ensemble"
    a = score_members(ens, data[:10], ivar[:10], mc_samples=3, seed=1)
    b = score_members(back, data[:10], ivar[:10], mc_samples=3, seed=1)
    assert np.array_equal(a.logit, b.logit)
    info = export_member_onnx(back, 1, str(tmp_path / "m1.onnx"))
    assert info["max_abs_diff"] < 1e-4
    # weights load without executing code
    states = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    assert set(states) == {"member_0", "member_1"}


def test_fused_batch_normalisation_is_the_same_function(trained):
    from calipers.lens.model import fused_for_inference

    ens, (data, ivar, _, _), _ = trained
    model = ens.member(0)
    x = torch.from_numpy(preprocess_cutouts(data[:16], ivar[:16]))
    with torch.inference_mode():
        want, got = model(x), fused_for_inference(model)(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    # the scores do not depend on how many views go through the network at once
    a = score_members(ens, data[:12], ivar[:12], mc_samples=2, view_batch=96)
    b = score_members(ens, data[:12], ivar[:12], mc_samples=2, view_batch=5)
    np.testing.assert_allclose(a.deterministic, b.deterministic, rtol=1e-5, atol=1e-5)
