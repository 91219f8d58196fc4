"""DINOv2 backbone: numerical parity with transformers' implementation, weight loading, fixed-size
positional embeddings."""

from __future__ import annotations

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from vpr_core.model import WeightsError
from vpr_core.model.backbones import VIT_BACKBONES
from vpr_core.model.dinov2 import DinoVisionTransformer, ViTArch, convert_hf_state_dict, resample_pos_embed


pytestmark = pytest.mark.usefixtures("module_torch_threads")  # model building too, not only the tests


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every tensor random and far from its default, norms and layer scales included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "lambda" in name):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def _hf_small(registers: bool, seed: int = 0) -> torch.nn.Module:
    """transformers' ViT-S/14 (518 pretraining grid), every tensor random."""
    common = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14)
    with torch.device("meta"):   # its own initialisation would be overwritten anyway
        if registers:
            model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **common))
        else:
            model = Dinov2Model(Dinov2Config(**common))
    model.to_empty(device="cpu")
    _randomise(model, seed)
    return model.eval()


@pytest.fixture(scope="module")
def hf_models() -> dict[bool, torch.nn.Module]:
    return {registers: _hf_small(registers) for registers in (False, True)}


@pytest.mark.parametrize("registers", [False, True], ids=["S14", "S14_reg"])
def test_final_tokens_match_transformers_at_224_and_322(registers, hf_models):
    hf = hf_models[registers]
    state = convert_hf_state_dict(hf.state_dict())
    arch = VIT_BACKBONES["dinov2_vits14_reg" if registers else "dinov2_vits14"]
    # transformers resamples the positional grid bicubically to the target size, with antialiasing
    # only in the register model (as the official register models do).
    mode = "antialias" if registers else "size"
    gen = torch.Generator().manual_seed(1)
    for size in (224, 322):
        ours = DinoVisionTransformer(arch, (size, size), taps=(12,), pos_interp=mode)
        ours.load_checked(state, source="transformers")
        x = torch.randn(1, 3, size, size, generator=gen)
        with torch.no_grad():
            expected = hf(pixel_values=x).last_hidden_state
            got = ours.final_tokens(x)
        assert got.shape == expected.shape == (1, 1 + 4 * registers + (size // 14) ** 2, 384)
        assert (got - expected).abs().max().item() <= 1e-4, size


def test_parity_check_detects_a_single_changed_weight(hf_models):
    hf = hf_models[False]
    state = {k: v.clone() for k, v in convert_hf_state_dict(hf.state_dict()).items()}
    state["blocks.5.attn.qkv.weight"][400, 5] += 0.5   # one value of one key projection
    ours = DinoVisionTransformer(VIT_BACKBONES["dinov2_vits14"], (224, 224), taps=(12,), pos_interp="size")
    ours.load_checked(state, source="transformers")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours.final_tokens(x) - hf(pixel_values=x).last_hidden_state).abs().max() > 1e-4


def test_hugging_face_directory_loads_through_the_key_conversion(tmp_path):
    config = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
    hf = Dinov2Model(config)
    _randomise(hf, 3)
    hf.eval().save_pretrained(tmp_path)
    arch = ViTArch(embed_dim=64, depth=2, num_heads=2, pos_interp="size", pretrain_size=56)
    for size in (56, 84):   # the saved grid itself, and a resampled one
        ours = DinoVisionTransformer(arch, (size, size), taps=(2,))
        ours.load_weights(tmp_path)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert (ours.final_tokens(x) - hf(pixel_values=x).last_hidden_state).abs().max() <= 1e-5


def test_official_names_load_strictly_and_mismatches_are_named(tmp_path):
    arch = VIT_BACKBONES["dinov2_vits14"]
    source = DinoVisionTransformer(arch, (224, 224), taps=(12,))
    source.init_random()
    state = source.state_dict()
    assert "pos_embed_fixed" not in state and state["pos_embed"].shape == (1, 1370, 384)
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    loaded = DinoVisionTransformer(arch, (224, 224), taps=(12,))
    loaded.load_weights(tmp_path / "dinov2_vits14_pretrain.pth")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))

    missing = {k: v for k, v in state.items() if k != "blocks.3.ls1.gamma"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"lacks 'blocks\.3\.ls1\.gamma'"):
        loaded.load_weights(tmp_path / "missing.pth")
    wrong = dict(state, **{"blocks.0.mlp.fc1.weight": torch.zeros(1536, 385)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match=r"'blocks\.0\.mlp\.fc1\.weight' has shape \(1536, 385\)"):
        loaded.load_weights(tmp_path / "wrong.pth")
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        loaded.load_weights(tmp_path / "absent.pth")


def test_positional_embeddings_are_resampled_once_for_the_fixed_size():
    arch = VIT_BACKBONES["dinov2_vits14"]
    model = DinoVisionTransformer(arch, (322, 224), taps=(12,))
    model.init_random()
    assert model.pos_embed_fixed.shape == (1, 1 + 23 * 16, 384)
    assert torch.equal(model.pos_embed_fixed, resample_pos_embed(model.pos_embed, (23, 16), "offset"))
    with torch.no_grad():
        model.pos_embed.add_(1.0)
    model.load_state_dict(model.state_dict())   # loading weights refreshes the resampled copy
    assert torch.equal(model.pos_embed_fixed, resample_pos_embed(model.pos_embed, (23, 16), "offset"))
    with pytest.raises(ValueError, match=r"\[N, 3, 322, 224\]"):
        model(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DinoVisionTransformer(arch, (320, 224), taps=(12,))


def test_the_three_resampling_modes_differ_and_the_pretrained_grid_is_kept():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    assert resample_pos_embed(pos, (37, 37), "offset") is pos
    out = {m: resample_pos_embed(pos, (16, 16), m) for m in ("offset", "antialias", "size")}
    assert all(o.shape == (1, 257, 8) for o in out.values())
    assert all(torch.equal(o[:, 0], pos[:, 0]) for o in out.values())   # the class token is not resampled
    assert not torch.allclose(out["offset"], out["size"]) and not torch.allclose(out["size"], out["antialias"])


def test_hf_conversion_refuses_unknown_or_incomplete_weights():
    hf = Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=56))
    state = hf.state_dict()
    with pytest.raises(WeightsError, match="no DINOv2 equivalent for 'pooler.dense.weight'"):
        convert_hf_state_dict({**state, "pooler.dense.weight": torch.zeros(2, 2)})
    incomplete = {k: v for k, v in state.items() if "k_proj" not in k}
    with pytest.raises(WeightsError, match="incomplete"):
        convert_hf_state_dict(incomplete)
