"""Released SelaVPR++ and SAGE training checkpoints as our models: safe reading and key mappings.

Both releases are training checkpoints (``{"model_state_dict": ..., "epoch_num": ...}``, keys prefixed
``module.``) holding the whole network, frozen backbone included, next to what the training script
tracked (numpy recall arrays, best scores). They are read with PyTorch's weights-only unpickler and an
allow-list of exactly the numpy globals such files hold, so a file that pickles anything else (an
arbitrary class or function, i.e. code) is refused instead of run.

Our modules compute the same functions under names that differ only by prefix, so a mapping is a
list of prefix renames. The backbone part is not taken from these files: the model is built on the
official DINOv2 weights the caller names, and the file's backbone tensors are checked to be those
(SelaVPR++ and SAGE froze them).
"""

from __future__ import annotations

import importlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpr_core.model.checkpoint import CheckpointError
from vpr_core.model.config import PRESETS, ModelConfig, preset_config
from vpr_core.model.state import WeightsError, check_state_dict
from vpr_core.model.vpr_model import VPRModel, build_model

KINDS = ("selavpr++", "sage")
_HEAD_OF_KIND = {"selavpr++": "selavpr", "sage": "sage"}
# The released models by token width, for a file given without a preset.
_PRESET_BY_WIDTH = {"selavpr++": {768: "selavpr++-b", 1024: "selavpr++-l"}, "sage": {768: "sage-b"}}

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
# Names only one release has (after 'module.'), to tell them apart.
_MARKERS = {"selavpr++": re.compile(r"backbone\.adapters\.|linear1\."),
            "sage": re.compile(r"backbone\.gpn_norms\.|backbone\.model\.|aggregator\.")}

SAGE_HASH_NOTE = (
    "SAGE's release has no hashing branch: this checkpoint's hash branch is untrained (the sign of a seeded "
    "orthonormal projection of GeM-pooled tokens, an LSH of them). `vpr build-map` fits a map-adaptive ITQ "
    "binarisation on the map's own descriptors by default (--adapt itq) and the binary stage then uses that; "
    "with --adapt none or whiten it uses the untrained branch's codes.")


def _numpy_multiarray():
    # numpy >= 2 pickles its functions under numpy._core, numpy 1 under numpy.core
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


def numpy_safe_globals() -> list:
    """What a training script's numpy values pickle to: arrays (``_reconstruct``, ``ndarray``),
    scalars (``scalar``) and numeric dtypes (``dtype`` and the class of each numeric dtype, which the
    unpickler checks before restoring a dtype's state). Files written under numpy 1 name the functions
    ``numpy.core.multiarray.*``, under numpy 2 ``numpy._core.multiarray.*``: both names are allowed.
    Object, string and structured dtypes are left out: none of the releases hold them."""
    multiarray = _numpy_multiarray()
    functions = [(getattr(multiarray, name), f"{prefix}.multiarray.{name}")
                 for name in ("_reconstruct", "scalar") for prefix in ("numpy.core", "numpy._core")]
    dtype_classes = {type(np.dtype(code)) for code in "?" + np.typecodes["AllInteger"] + np.typecodes["Float"]}
    return [*functions, np.ndarray, np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__)]


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict a released training script saved, read without running code from the file.

    ``torch.load(weights_only=True)`` with :func:`numpy_safe_globals` allowed; any other global
    (a class or function of the authors' code, or anything else) is refused with a
    CheckpointError that names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    with torch.serialization.safe_globals(numpy_safe_globals()):
        try:
            foreign = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except ValueError:   # not a zip checkpoint (legacy format or no checkpoint): torch.load decides
            foreign = []
        except Exception as exc:  # the zip reader raises several types for truncated files
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
        if foreign:
            raise CheckpointError(_refusal(path, foreign[0], len(foreign)))
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            # the legacy format is not pre-scanned: the weights-only unpickler names what it refused
            found = re.search(r"GLOBAL (\S+)|got <class '([^']+)'>", str(exc))
            if isinstance(exc, pickle.UnpicklingError) and found:
                raise CheckpointError(_refusal(path, next(g for g in found.groups() if g), 1)) from None
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a checkpoint dict "
                              f"(expected a dict with 'model_state_dict')")
    return data


def _refusal(path: Path, name: str, count: int) -> str:
    more = f" (and {count - 1} other global(s))" if count > 1 else ""
    return (f"refusing {path}: it pickles {name}{more}, which is neither a tensor nor a numpy array, dtype or "
            f"scalar; unpickling it could run code from the file, so only weights, numpy values and plain "
            f"Python data are accepted")


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


def detect_kind(state: dict[str, Any]) -> str:
    """``"selavpr++"`` or ``"sage"``, from names only one of the releases has."""
    names = [k.removeprefix("module.") for k in state]
    found = [kind for kind, marker in _MARKERS.items() if any(marker.match(n) for n in names)]
    if len(found) != 1:
        sample = ", ".join(names[:3]) or "no tensors"
        raise CheckpointError(f"cannot tell whether this is a SelaVPR++ or a SAGE checkpoint (keys: {sample}, ...); "
                              f"it has {'names of both' if found else 'names of neither'}")
    return found[0]


def default_preset(kind: str, state: dict[str, Any]) -> str:
    """The released preset of ``kind`` whose backbone has the file's token width."""
    widths = {v.shape[-1] for k, v in state.items() if k.endswith("cls_token") and torch.is_tensor(v)}
    width = widths.pop() if len(widths) == 1 else None
    try:
        return _PRESET_BY_WIDTH[kind][width]
    except KeyError:
        raise CheckpointError(f"no released {kind} preset has token width {width}; pass the preset "
                              f"(one of {', '.join(presets_of(kind))})") from None


def presets_of(kind: str) -> list[str]:
    return [name for name, config in PRESETS.items() if config.head == _HEAD_OF_KIND[kind]]


@dataclass(frozen=True)
class ImportedModel:
    model: VPRModel
    kind: str                     # "selavpr++" | "sage"
    epoch: int | None             # the training script's epoch_num, when the file has one
    notes: tuple[str, ...]        # what differs from the authors' model, for the user


def import_released(path: str | Path, config: ModelConfig | str | None = None, *,
                    backbone_weights: str | Path, kind: str | None = None) -> ImportedModel:
    """A model from a released SelaVPR++ (two-branch ``*_rerank.pth``) or SAGE checkpoint.

    ``kind`` is checked against the file's keys (detected when None); ``config`` is the matching
    preset (``selavpr++-b``/``-l``, ``sage-b``, or a config of the same head), chosen from the
    backbone width when None; ``backbone_weights`` the official DINOv2 weights it was trained on.
    """
    path = Path(path)
    data = read_training_checkpoint(path)
    state = data.get("model_state_dict", data)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no state dict (expected a dict with 'model_state_dict')")
    found = detect_kind(state)
    if kind is not None and kind != found:
        raise CheckpointError(f"{path} is a {found} checkpoint, not {kind}")
    if not isinstance(config, ModelConfig):
        config = preset_config(config or default_preset(found, state))
    if config.head != _HEAD_OF_KIND[found]:
        raise CheckpointError(f"preset {config.preset!r} has a {config.head!r} head; a {found} checkpoint needs "
                              f"one of {', '.join(presets_of(found))}")
    mapper = map_sage_state_dict if found == "sage" else map_selavpr_state_dict
    backbone_state, head_state = mapper(state)
    model = build_model(config, backbone_weights=backbone_weights)
    expected = model.head.state_dict()
    notes: list[str] = []
    if found == "sage":
        head_state = {**{k: v for k, v in expected.items() if k.startswith("hash_branch.")}, **head_state}
        notes.append(SAGE_HASH_NOTE)
        dropped = [k for k in head_state if k.startswith("interact.")] if config.interact is None else []
        if dropped:
            head_state = {k: v for k, v in head_state.items() if k not in dropped}
            notes.append(f"the release's InteractHead ({len(dropped)} tensors) is left out: preset {config.preset!r} "
                         f"computes each descriptor from its own image, whereas the authors' evaluation mixes "
                         f"descriptors across a batch, so descriptors and recall differ from theirs")
    elif not any(k.startswith("hash_side.") for k in head_state):
        raise CheckpointError(f"{path} has no hashing branch (adapters_hashing, linear3, linear4): it is a "
                              f"float-only release; the two-branch files are SelaVPRplusplus_*_rerank.pth")
    if config.batch_dependent:
        notes.append(f"preset {config.preset!r} keeps the InteractHead: an image's descriptor depends on the other "
                     f"images of its batch (the node refuses such a model unless model.allow_batch_dependent is set)")
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
    epoch = data.get("epoch_num")
    return ImportedModel(model, found, int(epoch) if isinstance(epoch, (int, np.integer)) else None, tuple(notes))
