"""The fused model (``ModelConfig.fusion``): trained mix branches plus a frozen GeM branch.

Its float descriptor must be normalize([sqrt(w) g, sqrt(1 - w) m]) of preset ``lite0``'s descriptor g
and the trained mix descriptor m, and its code the mix checkpoint's, on real images, through torch
and through the ONNX Runtime export; the GeM branch must never train; old presets and checkpoints
must keep their fingerprints.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from vpr_core.data.images import read_rgb
from vpr_core.engine import EncoderConfig, create_encoder, ort_backend
from vpr_core.model import build_model, load_checkpoint, preset_config, read_checkpoint_config
from vpr_core.model.config import FusionConfig, ModelConfig
from vpr_core.model.fuse import fuse_checkpoint
from vpr_core.train.trainer import trainable

from conftest import REPO

NORDLAND = REPO / "checkpoints" / "lite0-nordland"
FUSED = REPO / "checkpoints" / "lite0-fused"
W = 0.95
# Fingerprints of presets written before the fusion section existed (config only, no weights digest).
OLD_FINGERPRINTS = {
    "lite0": "3249a420ac8ef2fb7eb2d363a3c46ce6e39cf52b7b15b3ecc3fd089679bd786d",
    "lite0-mix": "13cdeaf16e4087ee8c809cdbbccebc8d2e7552dae679d94aee2de4b2b95dd9d6",
}

pytestmark = pytest.mark.usefixtures("module_torch_threads")  # model building too, not only the tests


def _fused(**changes) -> ModelConfig:
    return dataclasses.replace(preset_config("lite0-fused"), **changes)


@pytest.mark.parametrize("changes, message", [
    ({"fusion": FusionConfig(0.0)}, r"gem_weight must be in \(0, 1\)"),
    ({"fusion": FusionConfig(1.0)}, r"gem_weight must be in \(0, 1\)"),
    ({"aggregation": "gem", "mix": None}, r"fusion adds a GeM branch to head 'cnn' with aggregation 'mix'"),
])
def test_config_refuses_bad_fusion(changes, message):
    with pytest.raises(ValueError, match=message):
        _fused(**changes)


def test_dim_must_be_mix_width_plus_backbone_channels():
    assert preset_config("lite0-fused").dim == 1280 + 1280
    with pytest.raises(ValueError, match=r"dim is the mix float width plus the backbone map's 1280 channels"):
        build_model(_fused(dim=1284), device="meta")


def test_old_fingerprints_unchanged_and_fused_config_round_trips():
    for name, fingerprint in OLD_FINGERPRINTS.items():
        assert preset_config(name).fingerprint() == fingerprint
    read_checkpoint_config(NORDLAND)   # its recorded fingerprint still matches its config
    fused = preset_config("lite0-fused")
    assert ModelConfig.from_dict(json.loads(json.dumps(fused.to_dict()))) == fused
    assert fused.fingerprint() != _fused(fusion=FusionConfig(0.9)).fingerprint()


@pytest.fixture(scope="module")
def corridor_images(data_dir) -> list[np.ndarray]:
    return [read_rgb(path) for path in sorted((data_dir / "corridor" / "query").glob("*.jpg"))[:10]]


@pytest.fixture(scope="module")
def encodings(corridor_images, tmp_path_factory):
    """(codes, descriptors) of the frozen lite0 preset, the Nordland mix heads and the fused checkpoint
    (torch), and of the fused checkpoint's ONNX export (ONNX Runtime)."""
    cache = str(tmp_path_factory.mktemp("fusion_engine_cache"))
    out = {}
    for name, source in (("gem", {"preset": "lite0"}), ("mix", {"checkpoint": str(NORDLAND)}),
                         ("fused", {"checkpoint": str(FUSED)})):
        encoder = create_encoder(EncoderConfig(backend="torch", device="cpu", threads=1, cache_dir=cache, **source))
        out[name] = encoder.encode(corridor_images)
    ort_config = EncoderConfig(checkpoint=str(FUSED), backend="onnxruntime", device="cpu", threads=1, cache_dir=cache)
    out["fused-ort"] = ort_backend.create(ort_config, model=encoder.model).encode(corridor_images)
    return out


def _expected(encodings) -> np.ndarray:
    fused = np.concatenate([np.sqrt(W) * encodings["gem"][1], np.sqrt(1 - W) * encodings["mix"][1]], axis=1)
    return fused / np.linalg.norm(fused, axis=1, keepdims=True)


def test_fused_descriptor_is_weighted_concatenation(encodings):
    codes, desc = encodings["fused"]
    assert desc.shape == (10, 2560)
    assert np.abs(desc - _expected(encodings)).max() < 1e-5
    assert np.array_equal(codes, encodings["mix"][0])


def test_onnx_export_of_fused_model_matches(encodings):
    codes, desc = encodings["fused-ort"]
    assert np.abs(desc - _expected(encodings)).max() < 1e-4
    # A logit within rounding of zero may flip between runtimes; allow one bit in a code.
    agreement = (np.unpackbits(codes, axis=1) == np.unpackbits(encodings["mix"][0], axis=1)).mean(axis=1)
    assert agreement.min() >= 1 - 1 / 512


def test_gem_branch_stays_frozen_in_training():
    model = build_model("lite0-fused").train()
    gem_before = {k: v.clone() for k, v in model.head.fusion.state_dict().items()}
    mix_before = model.head.float_branch.proj.weight.clone()
    params = trainable(model)
    assert {id(p) for p in params}.isdisjoint(id(p) for p in model.head.fusion.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    features = torch.rand(4, 1280, 8, 10, generator=torch.Generator().manual_seed(0))
    _, desc = model.heads(features)
    (desc @ desc.T).triu(1).sum().backward()
    optimizer.step()
    for name, tensor in model.head.fusion.state_dict().items():
        assert torch.equal(tensor, gem_before[name]), name
    assert all(p.grad is None for p in model.head.fusion.parameters())
    assert not torch.equal(model.head.float_branch.proj.weight, mix_before)


def test_fuse_reproduces_the_shipped_checkpoint_and_round_trips(tmp_path):
    out = tmp_path / "fused"
    made = fuse_checkpoint(NORDLAND, W, out)
    loaded = load_checkpoint(out)
    shipped = load_checkpoint(FUSED)
    assert loaded.fingerprint() == made.fingerprint()
    assert dataclasses.replace(loaded.config, weights_digest=None) == preset_config("lite0-fused")
    assert loaded.config.weights_digest and shipped.config.preset == "lite0-fused"
    nordland = load_checkpoint(NORDLAND).head.state_dict()
    lite0_float = build_model("lite0").head.float_branch.state_dict()
    for name, tensor in loaded.head.state_dict().items():
        if name.startswith("fusion.branch."):
            # the GeM branch: lite0's seeded initialisation, a float32 QR. On this machine it is the
            # same as lite0's to rounding; the shipped file was made on another CPU, whose MKL code
            # path may round the QR differently (up to 1.5e-6 per weight, measured on an AMD EPYC).
            assert torch.allclose(tensor, lite0_float[name.removeprefix("fusion.branch.")], atol=1e-6), name
            assert torch.allclose(tensor, shipped.head.state_dict()[name], atol=1e-5), name
        else:
            assert torch.equal(tensor, nordland[name]) and torch.equal(tensor, shipped.head.state_dict()[name]), name
    fc = loaded.head.state_dict()["fusion.branch.fc.weight"].double()  # an isometry on any machine
    assert torch.allclose(fc @ fc.T, torch.eye(fc.shape[0], dtype=torch.float64), atol=1e-5)
    with pytest.raises(ValueError, match="already fused"):
        fuse_checkpoint(out, W, tmp_path / "twice")
