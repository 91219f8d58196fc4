"""The registry of frozen backbones, chosen by name.

Every backbone is frozen: its parameters never require grad, it stays in eval mode whatever
``train()`` is called on the model, and ``VPRModel.backbone_features`` runs it under ``no_grad``.
A backbone exposes ``kind`` ("vit" or "cnn"), ``feature_shape`` (one image's features),
``load_weights(path)`` and ``forward(x) -> features``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from vpr_core.model.config import ModelConfig
from vpr_core.model.dinov2 import DinoVisionTransformer, ViTArch
from vpr_core.model.efficientnet_lite import LITE_VARIANTS, PACKAGE_WEIGHTS, EfficientNetLite, package_weights_path

_VIT = {
    "vits14": ViTArch(embed_dim=384, depth=12, num_heads=6),
    "vitb14": ViTArch(embed_dim=768, depth=12, num_heads=12),
    "vitl14": ViTArch(embed_dim=1024, depth=24, num_heads=16),
    "vitg14": ViTArch(embed_dim=1536, depth=40, num_heads=24, swiglu=True),
}

# name -> architecture; the "_reg" variants have 4 register tokens and, as in the official models,
# resample their positional embeddings with antialiasing.
VIT_BACKBONES: dict[str, ViTArch] = {}
for _size, _arch in _VIT.items():
    VIT_BACKBONES[f"dinov2_{_size}"] = _arch
    VIT_BACKBONES[f"dinov2_{_size}_reg"] = ViTArch(
        _arch.embed_dim, _arch.depth, _arch.num_heads, _arch.swiglu, num_register_tokens=4, pos_interp="antialias")

CNN_BACKBONES: tuple[str, ...] = tuple(LITE_VARIANTS)
BACKBONES: tuple[str, ...] = (*VIT_BACKBONES, *CNN_BACKBONES)

# Where a backbone's weights come from when the caller names none.
DEFAULT_WEIGHTS = {name: variant.weights_id for name, variant in LITE_VARIANTS.items()}


def vit_taps(config: ModelConfig, depth: int) -> tuple[int, ...]:
    """The token maps the heads of ``config`` read (k = output after k blocks)."""
    if config.side is not None:
        if config.side.last_n > depth or config.side.last_n % config.side.every:
            raise ValueError(f"model config {config.preset!r}: the side network covers last_n={config.side.last_n} "
                             f"blocks every {config.side.every}; the backbone has {depth} blocks and last_n must "
                             f"be a multiple of every")
        return config.side.taps(depth)
    if config.recalib_blocks > depth:
        raise ValueError(f"model config {config.preset!r}: recalib_blocks {config.recalib_blocks} > depth {depth}")
    return (depth - config.recalib_blocks,)


def build_backbone(config: ModelConfig) -> nn.Module:
    """The backbone of ``config``, with uninitialised (zero or default) weights, frozen."""
    if config.backbone in VIT_BACKBONES:
        if config.head == "cnn":
            raise ValueError(f"model config {config.preset!r}: head 'cnn' needs a CNN backbone, not {config.backbone}")
        arch = VIT_BACKBONES[config.backbone]
        backbone = DinoVisionTransformer(arch, config.image_size, vit_taps(config, arch.depth), config.pos_interp)
    elif config.backbone in LITE_VARIANTS:
        if config.head != "cnn":
            raise ValueError(f"model config {config.preset!r}: {config.backbone} takes head 'cnn', not {config.head!r}")
        backbone = EfficientNetLite(config.backbone, config.image_size, config.cnn_tap)
    else:
        raise ValueError(f"unknown backbone {config.backbone!r}; known: {', '.join(BACKBONES)}")
    backbone.requires_grad_(False)
    return backbone.eval()


def resolve_weights(source: str) -> Path:
    """A weights reference (a path, or a package id) as a file path."""
    if source in PACKAGE_WEIGHTS:
        return package_weights_path(source)
    return Path(source)
