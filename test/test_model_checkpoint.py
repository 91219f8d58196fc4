"""Checkpoints round-trip exactly and refuse corrupted or mismatched files; released SelaVPR++ and SAGE
checkpoints map onto our modules by renaming keys."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vpr_core.model import (CheckpointError, InteractConfig, SoftPConfig, build_model, load_checkpoint,
                            preset_config, save_checkpoint)
from vpr_core.model.released import import_released, map_sage_state_dict, map_selavpr_state_dict

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


# --- released checkpoints ------------------------------------------------------------------------

def _released_adapter(prefix: str, dim: int, hidden: int, c1: int, red: int, c3: int, c5: int) -> dict:
    """Names and shapes of one released MulConvAdapter, written from the released module tree."""
    shapes = {f"{prefix}.D_fc1.weight": (hidden, dim), f"{prefix}.D_fc1.bias": (hidden,),
              f"{prefix}.D_fc2.weight": (dim, hidden), f"{prefix}.D_fc2.bias": (dim,)}
    convs = {"branch1": (c1, hidden, 1), "branch2.0": (red, hidden, 1), "branch2.1": (c3, red, 3),
             "branch3.0": (red, hidden, 1), "branch3.1": (c5, red, 5)}
    for name, (cout, cin, k) in convs.items():
        shapes[f"{prefix}.{name}.conv.weight"] = (cout, cin, k, k)
        shapes[f"{prefix}.{name}.conv.bias"] = (cout,)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}.bn.{stat}"] = (cout,)
        shapes[f"{prefix}.{name}.bn.num_batches_tracked"] = ()
    return shapes


def _released_selavpr_file(backbone_state: dict, dim: int, out_dim: int, n: int) -> dict:
    hidden = dim // 2
    shapes = {}
    for branch in ("adapters", "adapters_hashing"):
        for i in range(n):
            shapes.update(_released_adapter(f"module.backbone.{branch}.{i}", dim, hidden, hidden // 2,
                                            hidden // 16, hidden // 4, hidden // 4))
    shapes.update({"module.linear1.weight": (dim, dim), "module.linear1.bias": (dim,), "module.aggregation.1.p": (1,),
                   "module.linear2.weight": (out_dim, dim), "module.linear2.bias": (out_dim,),
                   "module.linear3.weight": (dim, dim), "module.linear3.bias": (dim,),
                   "module.aggregation_hashing.1.p": (1,),
                   "module.linear4.weight": (512, dim), "module.linear4.bias": (512,)})
    gen = torch.Generator().manual_seed(11)
    state = {k: (torch.randint(0, 9, s, generator=gen) if k.endswith("num_batches_tracked")
                 else torch.rand(s, generator=gen) + 0.1) for k, s in shapes.items()}
    state.update({f"module.backbone.{k}": v.clone() for k, v in backbone_state.items()})
    return {"epoch_num": 3, "model_state_dict": state}


def test_released_selavpr_checkpoint_imports_by_key_mapping(trained, tmp_path):
    backbone = {k: v.clone() for k, v in trained.backbone.state_dict().items()}
    torch.save(backbone, tmp_path / "dinov2.pth")
    released = _released_selavpr_file(backbone, 384, 1024, 12)
    torch.save(released, tmp_path / "SelaVPRplusplus_small_rerank.pth")
    model = import_released(tmp_path / "SelaVPRplusplus_small_rerank.pth", _config(),
                            backbone_weights=tmp_path / "dinov2.pth")
    state = released["model_state_dict"]
    head = model.head.state_dict()
    assert torch.equal(head["float_side.adapters.3.branch2.1.conv.weight"],
                       state["module.backbone.adapters.3.branch2.1.conv.weight"])
    assert torch.equal(head["hash_side.adapters.11.D_fc2.weight"],
                       state["module.backbone.adapters_hashing.11.D_fc2.weight"])
    assert torch.equal(head["hash_branch.gem.p"], state["module.aggregation_hashing.1.p"])
    assert torch.equal(head["float_branch.fc.bias"], state["module.linear2.bias"])

    state["module.backbone.blocks.2.ls1.gamma"] = state["module.backbone.blocks.2.ls1.gamma"] + 1
    torch.save(released, tmp_path / "tampered.pth")
    with pytest.raises(CheckpointError, match=r"backbone tensor 'blocks\.2\.ls1\.gamma' differs"):
        import_released(tmp_path / "tampered.pth", _config(), backbone_weights=tmp_path / "dinov2.pth")
    float_only = {"model_state_dict": {k: v for k, v in state.items()
                                       if "hashing" not in k and "linear3" not in k and "linear4" not in k}}
    torch.save(float_only, tmp_path / "float_only.pth")
    with pytest.raises(CheckpointError, match="no hashing branch"):
        import_released(tmp_path / "float_only.pth", _config(), backbone_weights=tmp_path / "dinov2.pth")


def test_released_key_mappings_name_what_they_cannot_place():
    backbone, head = map_selavpr_state_dict({"module.backbone.blocks.0.norm1.weight": torch.ones(1),
                                             "module.linear4.bias": torch.ones(1)})
    assert list(backbone) == ["blocks.0.norm1.weight"] and list(head) == ["hash_branch.fc.bias"]
    with pytest.raises(ValueError, match="no equivalent for 'module.head.weight'"):
        map_selavpr_state_dict({"module.head.weight": torch.ones(1)})
    backbone, head = map_sage_state_dict({
        "module.backbone.model.norm.weight": torch.ones(1), "module.backbone.model.cls_token": torch.ones(1),
        "module.backbone.gpn_norms.2.projection.3.bias": torch.ones(1),
        "module.aggregator.single_branch.0.weight": torch.ones(1), "module.aggregator.score.3.weight": torch.ones(1),
        "module.encoder.layers.1.linear2.weight": torch.ones(1)})
    assert list(backbone) == ["cls_token"]
    assert sorted(head) == ["float_branch.score.3.weight", "interact.encoder.layers.1.linear2.weight",
                            "norm.weight", "recalib.dpn.2.projection.3.bias"]


def test_sage_checkpoint_keys_fit_our_sage_head():
    """Every released SAGE name (minus the unused single_branch) maps onto a tensor of our head."""
    softp = SoftPConfig(num_clusters=8, cluster_dim=16, token_dim=64)
    config = _config(preset="sage-test", head="sage", side=None, aggregation="softp", softp=softp, dim=softp.dim,
                     recalib_blocks=4, interact=InteractConfig(layers=2, d_model=64, heads=4, ff_dim=128))
    model = build_model(config, backbone_weights="random")
    ours = model.head.state_dict()
    released = {"module.backbone.model.norm.weight": 0, "module.backbone.model.norm.bias": 0}
    for i in range(4):
        for j in (0, 3):
            released.update({f"module.backbone.gpn_norms.{i}.projection.{j}.{t}": 0 for t in ("weight", "bias")})
    for name in ("soft_weighting.predictor.0", "soft_weighting.predictor.2", "token_features.0", "token_features.2",
                 "cluster_features.0", "cluster_features.3", "score.0", "score.3", "gpn.projection.0",
                 "gpn.projection.3", "single_branch.0", "single_branch.3"):
        released.update({f"module.aggregator.{name}.{t}": 0 for t in ("weight", "bias")})
    for i in range(2):
        for name in ("self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                     "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                     "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"):
            released[f"module.encoder.layers.{i}.{name}"] = 0
    _, head = map_sage_state_dict({k: torch.zeros(1) for k in released})
    assert set(head) == {k for k in ours if not k.startswith("hash_branch.")}
