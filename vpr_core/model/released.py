"""Key mappings from the released SelaVPR++ and SAGE checkpoints onto our models.

Both releases are training checkpoints (``{"model_state_dict": ..., "epoch_num": ...}``, keys prefixed
``module.``) holding the whole network, frozen backbone included. Our modules compute the same
functions under names that differ only by prefix, so a mapping is a list of prefix renames. The
backbone part is not taken from these files: the model is built on the official DINOv2 weights the
caller names, and the file's backbone tensors are checked to be those (SelaVPR++ and SAGE froze them).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from vpr_core.model.checkpoint import CheckpointError
from vpr_core.model.config import ModelConfig, preset_config
from vpr_core.model.state import WeightsError, check_state_dict
from vpr_core.model.vpr_model import VPRModel, build_model

# (released name pattern after 'module.', our name, 'backbone' | 'head' | None to drop)
_SELAVPR_RULES = [
    (r"backbone\.adapters\.(\d+)\.(.+)", r"float_side.adapters.\1.\2", "head"),
    (r"backbone\.adapters_hashing\.(\d+)\.(.+)", r"hash_side.adapters.\1.\2", "head"),
    (r"linear1\.(weight|bias)", r"float_branch.proj.\1", "head"),
    (r"aggregation\.1\.p", "float_branch.gem.p", "head"),
    (r"linear2\.(weight|bias)", r"float_branch.fc.\1", "head"),
    (r"linear3\.(weight|bias)", r"hash_branch.proj.\1", "head"),
    (r"aggregation_hashing\.1\.p", "hash_branch.gem.p", "head"),
    (r"linear4\.(weight|bias)", r"hash_branch.fc.\1", "head"),
    (r"backbone\.(.+)", r"\1", "backbone"),
]
_SAGE_RULES = [
    (r"backbone\.gpn_norms\.(\d+)\.(.+)", r"recalib.dpn.\1.\2", "head"),
    (r"backbone\.model\.norm\.(weight|bias)", r"norm.\1", "head"),   # SAGE trains the final norm
    (r"backbone\.model\.(.+)", r"\1", "backbone"),
    (r"aggregator\.single_branch\..+", "", None),                   # built but unused by the released model
    (r"aggregator\.(.+)", r"float_branch.\1", "head"),
    (r"encoder\.(.+)", r"interact.encoder.\1", "head"),
]


def _map(state: dict[str, torch.Tensor], rules, what: str) -> tuple[dict, dict]:
    compiled = [(re.compile(p), t, part) for p, t, part in rules]
    out: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "head": {}}
    for key, value in state.items():
        name = key.removeprefix("module.")
        for pattern, target, part in compiled:
            match = pattern.fullmatch(name)
            if match:
                if part is not None:
                    out[part][match.expand(target)] = value
                break
        else:
            raise WeightsError(f"{what} checkpoint: no equivalent for {key!r}")
    return out["backbone"], out["head"]


def map_selavpr_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Released SelaVPR++ tensors -> (backbone tensors, head tensors) under our names."""
    return _map(state, _SELAVPR_RULES, "SelaVPR++")


def map_sage_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Released SAGE tensors -> (backbone tensors, head tensors). SAGE has no hash branch: the
    ``hash_branch`` of the result is not in the file and keeps its initialisation."""
    return _map(state, _SAGE_RULES, "SAGE")


def import_released(path: str | Path, config: ModelConfig | str, *, backbone_weights: str | Path) -> VPRModel:
    """A model from a released SelaVPR++ (two-branch ``*_rerank.pth``) or SAGE checkpoint.

    ``config`` is the matching preset (``selavpr++-b``/``-l`` or a SAGE config); ``backbone_weights``
    the official DINOv2 weights it was trained on.
    """
    config = preset_config(config) if isinstance(config, str) else config
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
    state = data.get("model_state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict (expected a dict with 'model_state_dict')")
    mapper = map_sage_state_dict if config.head == "sage" else map_selavpr_state_dict
    backbone_state, head_state = mapper(state)
    model = build_model(config, backbone_weights=backbone_weights)
    expected = model.head.state_dict()
    if config.head == "sage":
        head_state = {**{k: v for k, v in expected.items() if k.startswith("hash_branch.")}, **head_state}
    elif not any(k.startswith("hash_side.") for k in head_state):
        raise CheckpointError(f"{path} has no hashing branch (adapters_hashing, linear3, linear4): it is a "
                              f"float-only release; the two-branch files are SelaVPRplusplus_*_rerank.pth")
    check_state_dict(expected, head_state, f"heads of {config.preset!r}", path)
    own = model.backbone.state_dict()
    for key, tensor in backbone_state.items():
        if key not in own:
            raise CheckpointError(f"{path}: backbone tensor {key!r} has no place in {config.backbone}")
        if own[key].shape != tensor.shape or not torch.equal(own[key], tensor.to(own[key].dtype)):
            raise CheckpointError(f"{path}: backbone tensor {key!r} differs from {backbone_weights}; "
                                  f"pass the DINOv2 weights this model was trained on")
    model.head.load_state_dict(head_state, strict=True)
    model.update_weights_digest()
    return model
