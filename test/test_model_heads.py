"""Heads: frozen backbone gets no gradient while adapters do, STE, SelaVPR++ adapter semantics, SAGE
recalibration and batch dependence, feature mixing, determinism, codes and preprocessing."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json

import cv2
import numpy as np
import pytest
import torch

from vpr_core.model import (InteractConfig, MixConfig, SoftPConfig, build_model, pack_codes, preset_config,
                            sign_ste)
from vpr_core.model.adapters import MulConvAdapter
from vpr_core.model.aggregation import GeM, GeMBranch, MixBranch
from vpr_core.model.config import SideConfig
from vpr_core.model.preprocess import preprocess


pytestmark = pytest.mark.usefixtures("module_torch_threads")  # model building too, not only the tests


SIZE = 112   # 8x8 patches: these tests check structure, so a quarter of the preset's tokens suffices


def _small_vits_config():
    return dataclasses.replace(preset_config("vits14-test"), image_size=(SIZE, SIZE))


def _sage_test_config(interact: bool):
    """SAGE layout on the small random ViT-S: recalibrated last 2 blocks, SoftP, optional InteractHead."""
    softp = SoftPConfig(num_clusters=8, cluster_dim=16, token_dim=64)
    return dataclasses.replace(
        _small_vits_config(), preset="sage-test", head="sage", side=None, aggregation="softp", softp=softp,
        dim=softp.dim, recalib_blocks=2,
        interact=InteractConfig(layers=1, d_model=64, heads=4, ff_dim=128) if interact else None)


@pytest.fixture(scope="module")
def vits():
    return build_model(_small_vits_config())


@pytest.fixture(scope="module")
def sage_interact():
    return build_model(_sage_test_config(interact=True), backbone_weights="random")


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _assert_only_heads_learn(model, x):
    model.train()
    assert not model.backbone.training, "train() must leave the frozen backbone in eval mode"
    logits, desc = model(x)
    gen = torch.Generator().manual_seed(5)
    loss = (desc * torch.randn(desc.shape, generator=gen)).sum() + \
        (sign_ste(logits) * torch.randn(logits.shape, generator=gen)).sum()
    loss.backward()
    for name, p in model.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for name, p in model.head.named_parameters():
        assert p.requires_grad and p.grad is not None, name
        # A conv bias followed by batch-statistics BN (training mode) cancels out: zero gradient by design.
        if not name.endswith(".conv.bias"):
            assert p.grad.abs().sum() > 0, name


def test_no_gradient_reaches_the_backbone_while_every_adapter_weight_gets_one(vits):
    model = copy.deepcopy(vits)
    features = model.backbone_features(_images(2, 0))
    assert not features.requires_grad and features.shape == (2, 13, 65, 384)
    with torch.no_grad():   # SelaVPR++ starts with D_fc2 = 0, which blocks gradients into the rest of an adapter
        for side in (model.head.float_side, model.head.hash_side):
            for adapter in side.adapters:
                adapter.D_fc2.weight.normal_(0, 0.02)
    _assert_only_heads_learn(model, _images(2, 0))


def test_sage_recalibration_dpns_and_softp_learn_while_the_backbone_does_not(sage_interact):
    _assert_only_heads_learn(copy.deepcopy(sage_interact), _images(3, 1))


def test_straight_through_estimator():
    logits = torch.tensor([[-2.0, -0.0, 0.0, 1e-9, -1e-9, 3.0]], requires_grad=True)
    codes = sign_ste(logits)
    assert codes.tolist() == [[-1.0, 1.0, 1.0, 1.0, -1.0, 1.0]]   # >= 0 -> +1, as released
    upstream = torch.tensor([[0.5, -1.0, 2.0, 3.0, -4.0, 0.25]])
    (codes * upstream).sum().backward()
    assert torch.equal(logits.grad, upstream)   # identity gradient


def test_side_chain_starts_as_identity_and_reads_the_tapped_maps(vits):
    features = vits.backbone_features(_images(1, 2))
    with torch.no_grad():
        assert torch.equal(vits.head.float_side(features), features[:, 0])   # D_fc2 = 0 at initialisation
        assert vits.backbone.taps == tuple(range(13))
    large = SideConfig.for_width(1024, last_n=16)
    assert large.taps(24) == tuple(range(8, 25)) and (large.hidden, large.ch1x1, large.ch3x3red) == (512, 256, 32)
    assert SideConfig.for_width(768, last_n=12, every=3).taps(12) == (0, 3, 6, 9, 12)


def test_multiconv_adapter_doubles_prefix_tokens_and_convolves_the_patch_grid():
    torch.manual_seed(0)
    adapter = MulConvAdapter(256, SideConfig.for_width(256, last_n=1), num_prefix_tokens=1, grid=(6, 5)).eval()
    x = torch.randn(1, 31, 256)
    with torch.no_grad():
        out = adapter(x)
        h = torch.relu(adapter.D_fc1(x[:, :1]))
        assert torch.allclose(out[:, 0], adapter.D_fc2(2 * h)[:, 0], atol=1e-5)   # class token: skip + itself
        y = x.clone()
        y[:, 1 + 1 * 5 + 4] += 3.0   # patch at row 1, col 4 of the row-major 6x5 grid
        changed = (adapter(y) - out).abs().amax(-1)[0, 1:].reshape(6, 5) > 0
    window = torch.zeros(6, 5, dtype=torch.bool)
    window[0:4, 2:5] = True          # what a 5x5 convolution around (1, 4) reaches
    assert changed[window].any() and not changed[~window].any()
    assert changed[3].any() or changed[:, 2].any()   # the 5x5 path reaches distance 2


def test_gem_is_the_generalised_mean():
    x = torch.rand(2, 4, 3, 5) + 0.1
    gem = GeM()
    with torch.no_grad():
        gem.p.fill_(1.0)
        assert torch.allclose(gem(x), x.mean(dim=(2, 3)), atol=1e-6)
        gem.p.fill_(3.0)
        assert torch.allclose(gem(x), x.pow(3).mean(dim=(2, 3)).pow(1 / 3), atol=1e-6)


def test_per_frame_model_is_batch_independent_and_interact_head_is_not(vits, sage_interact):
    a, b, c = _images(3, 3).split(1)
    with torch.no_grad():
        _, d1 = vits(torch.cat([a, b]))
        _, d2 = vits(torch.cat([a, c]))
        assert not vits.config.batch_dependent
        assert (d1[0] - d2[0]).abs().max() < 1e-5
        sage = sage_interact.eval()
        _, s1 = sage(torch.cat([a, b]))
        _, s2 = sage(torch.cat([a, c]))
    assert sage.config.batch_dependent and sage.config.to_dict()["batch_dependent"] is True
    assert (s1[0] - s2[0]).abs().max() > 1e-3
    assert s1.shape == (2, 192) and torch.allclose(s1.norm(dim=1), torch.ones(2), atol=1e-5)


def test_sage_recalibration_runs_the_last_backbone_blocks():
    model = build_model(_sage_test_config(interact=False), backbone_weights="random").eval()
    x = _images(1, 4)
    features = model.backbone_features(x)
    assert features.shape == (1, 1, 65, 384) and model.backbone.taps == (10,)
    model.head.recalib.dpn = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    with torch.no_grad():
        tokens = model.head.norm(model.head.recalib(features[:, 0], model.backbone))
        assert torch.allclose(tokens, model.backbone.final_tokens(x), atol=1e-5)


def test_mixing_keeps_the_spatial_layout_that_gem_averages_away():
    """The reason for the mix aggregation: two maps with the same features in other places are the
    same to GeM and different to the mixer; and the mixer learns (every weight gets a gradient)."""
    torch.manual_seed(0)
    grid = torch.rand(2, 8, 10, 64)
    moved = grid.flatten(1, 2)[:, torch.randperm(80)].reshape(2, 8, 10, 64)
    gem, mix = GeMBranch(64, 64), MixBranch(64, (8, 10), 64, MixConfig(proj_dim=32, rows=4, dropout=0.0))
    gem.reset_parameters()
    mix.reset_parameters()
    with torch.no_grad():
        assert torch.allclose(gem(grid), gem(moved), atol=1e-5)
        cosine = (mix(grid) * mix(moved)).sum(-1)
    assert cosine.max() < 0.999
    out = mix(grid)
    assert out.shape == (2, 64) and torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mix.parameters())


def test_lite0_mix_preset_mixes_both_branches_and_checks_its_rows():
    config = preset_config("lite0-mix")
    model = build_model(config)
    assert isinstance(model.head.float_branch, MixBranch) and isinstance(model.head.hash_branch, MixBranch)
    assert model.head.float_branch.row_proj.out_features == config.mix.rows
    assert model.head.float_branch.channel_proj.out_features * config.mix.rows == config.dim
    assert model.head.hash_branch.channel_proj.out_features * config.mix.rows == config.bits
    with torch.no_grad():
        logits, desc = model.heads(torch.rand(2, 1280, 8, 10))
    assert logits.shape == (2, 512) and desc.shape == (2, 1280)
    with pytest.raises(ValueError, match="must divide both dim 1280 and bits 512"):
        dataclasses.replace(config, mix=MixConfig(rows=3))
    with pytest.raises(ValueError, match="needs a mix section"):
        dataclasses.replace(config, mix=None)
    assert type(config).from_dict(config.to_dict()) == config


def test_configs_without_a_mix_section_keep_the_fingerprint_they_had_before_it_existed():
    """Checkpoints and maps written before the mix section was added must still load."""
    config = preset_config("lite0")
    before = {k: v for k, v in config.to_dict().items() if k not in ("mix", "fusion")}
    expected = hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config.fingerprint() == expected
    assert type(config).from_dict(before).fingerprint() == expected
    assert preset_config("lite0-mix").fingerprint() != expected


def test_two_builds_are_identical_and_the_seed_and_weights_change_the_fingerprint():
    vits, again = build_model("vits14-test"), build_model("vits14-test")
    first, second = vits.state_dict(), again.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert again.fingerprint() == vits.fingerprint()
    other_seed = build_model(dataclasses.replace(vits.config, seed=1, weights_digest=None))
    assert other_seed.fingerprint() != vits.fingerprint()
    assert not torch.equal(other_seed.head.hash_branch.fc.weight, vits.head.hash_branch.fc.weight)
    changed = copy.deepcopy(vits)
    with torch.no_grad():
        changed.head.float_branch.gem.p.add_(0.1)
    assert changed.update_weights_digest().fingerprint() != vits.fingerprint()
    assert dataclasses.replace(vits.config, image_size=(322, 322)).fingerprint() != vits.config.fingerprint()


def test_model_config_round_trips_through_json_and_names_bad_fields():
    config = _sage_test_config(interact=True)
    assert type(config).from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        type(config).from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="batch_dependent"):
        type(config).from_dict({**config.to_dict(), "batch_dependent": False})
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        preset_config("nope")
    with pytest.raises(ValueError, match="multiple of 8"):
        dataclasses.replace(config, bits=500)


def test_dinov2_presets_need_weights_and_say_how_to_give_them():
    with pytest.raises(ValueError, match="backbone_weights=PATH"):
        build_model("selavpr++-b")


def test_pack_codes_packs_sign_bits_big_endian():
    logits = np.zeros((2, 16), dtype=np.float32) - 1
    logits[0, 0] = 0.0          # >= 0 is a 1 bit
    logits[0, 7] = 2.0
    logits[1, 8:] = 1.0
    codes = pack_codes(torch.from_numpy(logits))
    assert codes.dtype == np.uint8 and codes.tolist() == [[0b10000001, 0], [0, 0xFF]]
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_codes(np.zeros((1, 12)))
    logits[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in row\(s\) \[1\]"):
        pack_codes(logits)


def test_preprocess_resizes_without_crop_and_normalises():
    config = preset_config("lite0")                      # 240x320
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (1, 120, 160, 3), dtype=np.uint8)
    mean, std = np.array(config.mean, np.float32), np.array(config.std, np.float32)
    for images, interpolation in ((big, cv2.INTER_AREA), (small, cv2.INTER_LINEAR)):
        out = preprocess(images, config)
        assert out.dtype == np.float32 and out.shape == (len(images), 3, 240, 320) and out.flags.c_contiguous
        expected = cv2.resize(images[-1], (320, 240), interpolation=interpolation).astype(np.float32) / 255
        assert np.allclose(out[-1].transpose(1, 2, 0), (expected - mean) / std, atol=1e-5)
        resized = cv2.resize(images[0], (320, 240), interpolation=interpolation).astype(np.float32)
        per_pixel = (resized * np.float32(1 / 255) - mean) / std         # the formula the table replaces
        assert np.array_equal(out[0].transpose(1, 2, 0), per_pixel)
    grey = np.full((1, 240, 320, 3), 200, np.uint8)
    assert np.allclose(preprocess(grey, config)[0, :, 0, 0], (200 / 255 - mean) / std, atol=1e-6)
    with pytest.raises(ValueError, match=r"pass images\[None\]"):
        preprocess(grey[0], config)
    with pytest.raises(ValueError, match="dtype float32"):
        preprocess(grey.astype(np.float32), config)
