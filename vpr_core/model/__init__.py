"""Encoder models: a frozen backbone (DINOv2 ViT or EfficientNet-Lite0/1/2) and trainable SelaVPR++ / SAGE
heads that turn an image into a 512-bit code and a float descriptor."""

from vpr_core.model.backbones import BACKBONES
from vpr_core.model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from vpr_core.model.config import (PRESETS, InteractConfig, MixConfig, ModelConfig, SideConfig, SoftPConfig,
                                   preset_config)
from vpr_core.model.heads import sign_ste
from vpr_core.model.state import WeightsError
from vpr_core.model.vpr_model import VPRModel, build_model, pack_codes, parameter_report

__all__ = [
    "BACKBONES", "PRESETS", "CheckpointError", "InteractConfig", "MixConfig", "ModelConfig", "SideConfig", "SoftPConfig",
    "VPRModel", "WeightsError", "build_model", "load_checkpoint", "pack_codes", "parameter_report",
    "preset_config", "read_checkpoint_config", "save_checkpoint", "sign_ste",
]
