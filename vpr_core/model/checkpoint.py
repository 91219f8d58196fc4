"""Model checkpoints: a directory with the heads' weights (safetensors) and a JSON description.

The backbone is referenced (path or package id, plus the digest of its tensors), never copied: it
is frozen, large and shared by every head trained on it. Loading rebuilds the model from the JSON,
checks that the backbone found is the one the heads were trained on, checks names and shapes of the
heads' tensors and their digest, and refuses with a message naming the first problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from vpr_core.fsio import atomic_write, atomic_write_json
from vpr_core.model.config import ModelConfig
from vpr_core.model.state import WeightsError, check_state_dict, read_state_dict, tensor_digest
from vpr_core.model.vpr_model import VPRModel, build_model

FORMAT = "vpr_ros.model_checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
HEADS_FILE = "heads.safetensors"


class CheckpointError(WeightsError):
    """A checkpoint that cannot be loaded: missing, corrupted, or not matching its model or backbone."""


def save_checkpoint(model: VPRModel, path: str | Path) -> None:
    """Writes ``path/heads.safetensors`` then ``path/config.json``, each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.update_weights_digest()
    heads = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    description = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "fingerprint": config.fingerprint(),
        "config": config.to_dict(),
        "backbone": {"weights": model.backbone_source, "digest": model.backbone_digest()},
        "heads": {"file": HEADS_FILE, "digest": tensor_digest(heads)},
    }
    atomic_write(path / HEADS_FILE, lambda tmp: save_file(heads, tmp))
    atomic_write_json(path / CONFIG_FILE, description, indent=2, sort_keys=True)


def read_checkpoint_config(path: str | Path) -> tuple[ModelConfig, dict]:
    """The model config and the full JSON description of a checkpoint, without loading weights."""
    root = _checkpoint_dir(path)
    config_path = root / CONFIG_FILE
    try:
        description = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{config_path} is not readable JSON: {exc}") from exc
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not a {FORMAT} description (its 'format' field is "
                              f"{description.get('format') if isinstance(description, dict) else None!r})")
    if description.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path} has format version {description.get('version')!r}; "
                              f"this code reads version {FORMAT_VERSION}")
    for key in ("config", "backbone", "heads", "fingerprint"):
        if key not in description:
            raise CheckpointError(f"{config_path} lacks the {key!r} section")
    try:
        config = ModelConfig.from_dict(description["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc
    if config.fingerprint() != description["fingerprint"]:
        raise CheckpointError(f"{config_path}: the recorded fingerprint does not match its config "
                              f"(edited by hand or corrupted)")
    return config, description


def load_checkpoint(path: str | Path, *, backbone_weights: str | Path | None = None,
                    device: str | None = None) -> VPRModel:
    """The model saved at ``path``; ``backbone_weights`` overrides the recorded backbone location
    (e.g. on another machine) but must hold the same tensors."""
    root = _checkpoint_dir(path)
    config, description = read_checkpoint_config(root)
    source = backbone_weights if backbone_weights is not None else description["backbone"].get("weights")
    model = build_model(config, backbone_weights=source)
    recorded = description["backbone"].get("digest")
    if model.backbone_digest() != recorded:
        raise CheckpointError(f"the backbone weights at {source} are not the ones the heads in {root} were trained "
                              f"on (tensor digest {model.backbone_digest()[:12]}..., recorded {str(recorded)[:12]}...)")
    heads_path = root / description["heads"].get("file", HEADS_FILE)
    try:
        state = read_state_dict(heads_path)
        check_state_dict(model.head.state_dict(), state, f"heads of model {config.preset!r}", heads_path)
    except (WeightsError, FileNotFoundError) as exc:
        raise CheckpointError(str(exc)) from exc
    if tensor_digest(state) != description["heads"].get("digest"):
        raise CheckpointError(f"{heads_path} does not hold the tensors recorded in {root / CONFIG_FILE} "
                              f"(digest mismatch: corrupted or replaced)")
    model.head.load_state_dict(state, strict=True)
    if model.update_weights_digest() != config:
        raise CheckpointError(f"{root}: the loaded weights do not give the recorded fingerprint")
    if device is not None:
        model.to(device)
    return model


def _checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name == CONFIG_FILE:
        path = path.parent
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path} is not a model checkpoint: {CONFIG_FILE} not found there "
                              f"(a checkpoint is the directory written by save_checkpoint)")
    return path
