"""Checkpoints round-trip exactly and refuse corrupted or mismatched files (released SelaVPR++ and SAGE
checkpoints: test_import_released.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vpr_core.model import CheckpointError, build_model, load_checkpoint, preset_config, save_checkpoint

SIZE = 112


pytestmark = pytest.mark.usefixtures("module_torch_threads")  # model building too, not only the tests


def _config(**changes):
    return dataclasses.replace(preset_config("vits14-test"), image_size=(SIZE, SIZE), **changes)


@pytest.fixture(scope="module")
def trained():
    """A random-backbone model whose heads are no longer at their initialisation (as after training)."""
    model = build_model(_config())
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in model.head.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn(tensor.shape, generator=gen))
    model.update_weights_digest()
    return model


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(trained, path)
    return path


def _x(seed=0):
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_round_trip_gives_identical_outputs(trained, saved):
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "heads.safetensors"]
    description = json.loads((saved / "config.json").read_text())
    assert description["backbone"]["weights"] == "random"          # referenced, not copied
    assert (saved / "heads.safetensors").stat().st_size < 30e6     # heads only (the ViT-S alone is 88 MB)
    loaded = load_checkpoint(saved)
    assert loaded.fingerprint() == trained.fingerprint() == description["fingerprint"]
    with torch.no_grad():
        for a, b in zip(loaded(_x()), trained.eval()(_x())):
            assert torch.equal(a, b)


def _copy(saved, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for name in ("config.json", "heads.safetensors"):
        (target / name).write_bytes((saved / name).read_bytes())
    return target


def test_flipped_bytes_and_truncation_are_refused(saved, tmp_path):
    ckpt = _copy(saved, tmp_path)
    data = bytearray((ckpt / "heads.safetensors").read_bytes())
    data[-1000] ^= 0xFF                                          # inside the tensor data: parses, wrong values
    (ckpt / "heads.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="digest mismatch"):
        load_checkpoint(ckpt)
    (ckpt / "heads.safetensors").write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(ckpt)
    (ckpt / "heads.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weight file not found"):
        load_checkpoint(ckpt)


def test_config_edits_and_foreign_heads_are_refused(saved, tmp_path):
    ckpt = _copy(saved, tmp_path)
    description = json.loads((ckpt / "config.json").read_text())
    description["config"]["dim"] = 512
    (ckpt / "config.json").write_text(json.dumps(description))
    with pytest.raises(CheckpointError, match="fingerprint does not match its config"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_checkpoint(tmp_path / "nowhere")

    other = tmp_path / "other"
    save_checkpoint(build_model(_config(dim=512)), other)
    (other / "heads.safetensors").write_bytes((saved / "heads.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"'float_branch\.fc\.weight' has shape \(1024, 384\) in the file "
                                              r"but \(512, 384\) in the model"):
        load_checkpoint(other)


def test_heads_on_another_backbone_are_refused(trained, saved, tmp_path):
    state = {k: v.clone() for k, v in trained.backbone.state_dict().items()}
    torch.save(state, tmp_path / "same.pth")
    assert load_checkpoint(saved, backbone_weights=tmp_path / "same.pth").fingerprint() == trained.fingerprint()
    state["norm.bias"] += 0.5
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not the ones the heads"):
        load_checkpoint(saved, backbone_weights=tmp_path / "other.pth")

