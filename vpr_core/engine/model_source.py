"""The torch model an ``EncoderConfig`` names: a checkpoint directory, or a preset with its weights."""

from __future__ import annotations

from vpr_core.engine.config import EncoderConfig
from vpr_core.model import ModelConfig, VPRModel, build_model, load_checkpoint, read_checkpoint_config


def load_model(config: EncoderConfig) -> VPRModel:
    """The model with its weights, on the CPU, in eval mode."""
    weights = config.backbone_weights or None
    if config.checkpoint:
        model = load_checkpoint(config.checkpoint, backbone_weights=weights)
    else:
        model = build_model(config.preset, backbone_weights=weights)
    return model.eval()


def load_model_config(config: EncoderConfig) -> tuple[ModelConfig, VPRModel | None]:
    """The model config with its weights digest, and the model when it had to be built to get it.

    A checkpoint records the digest, so its config is read without loading any weights (the cached
    ONNX file and engine then start the encoder alone); a preset's digest exists only once its
    weights are loaded, so the model is built and handed back for reuse.
    """
    if config.checkpoint:
        return read_checkpoint_config(config.checkpoint)[0], None
    model = load_model(config)
    return model.config, model
