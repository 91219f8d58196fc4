"""A trained mix checkpoint plus a frozen GeM branch, as one fused checkpoint (``ModelConfig.fusion``).

The trained mix heads are copied unchanged (their hash branch still gives the code); the GeM branch
gets its deterministic initialisation, an isometry of the frozen backbone's GeM feature, so the
fused float descriptor is normalize([sqrt(w) g, sqrt(1 - w) m]) of the frozen GeM descriptor g and
the trained mix descriptor m. Nothing is trained here; ``w`` is chosen by the cross-domain
selection (``vpr select``), never on a set it is then reported on.

    vpr fuse --checkpoint checkpoints/lite0-nordland --gem-weight 0.95 --out checkpoints/lite0-fused
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vpr_core.model.checkpoint import load_checkpoint, save_checkpoint
from vpr_core.model.config import PRESETS, FusionConfig, ModelConfig
from vpr_core.model.state import check_state_dict
from vpr_core.model.vpr_model import VPRModel, build_model


def fused_config(config: ModelConfig, channels: int, gem_weight: float) -> ModelConfig:
    """``config`` (a trained, unfused mix model) with a GeM part of ``channels`` fused in at ``gem_weight``.

    Named after the preset it equals when there is one (``lite0-mix`` at 0.95 -> ``lite0-fused``),
    otherwise ``<preset>-fused``.
    """
    if config.aggregation != "mix" or config.fusion is not None:
        raise ValueError(f"model {config.preset!r} has aggregation {config.aggregation!r}"
                         f"{' and is already fused' if config.fusion is not None else ''}: fusion adds a GeM branch "
                         f"to a trained, unfused mix model (e.g. checkpoints/lite0-nordland)")
    fused = dataclasses.replace(config, preset=f"{config.preset}-fused", dim=config.dim + channels,
                                fusion=FusionConfig(gem_weight=gem_weight), weights_digest=None)
    name = next((n for n, p in PRESETS.items() if dataclasses.replace(p, preset=fused.preset) == fused),
                f"{config.preset}-fused")
    return dataclasses.replace(fused, preset=name)


def fuse_model(trained: VPRModel, gem_weight: float) -> VPRModel:
    """The fused model of a loaded mix model: its heads copied, the GeM branch at its initialisation."""
    width = trained.backbone.out_channels if trained.backbone.kind == "cnn" else trained.backbone.embed_dim
    config = fused_config(trained.config, width, gem_weight)
    model = build_model(config, backbone_weights=trained.backbone_source)
    mix_state = trained.head.state_dict()
    fused_mix = {k: v for k, v in model.head.state_dict().items() if not k.startswith("fusion.")}
    check_state_dict(fused_mix, mix_state, f"mix branches of fused model {config.preset!r}", "the trained heads")
    model.head.load_state_dict({**model.head.state_dict(), **mix_state}, strict=True)
    model.update_weights_digest()
    return model


def fuse_checkpoint(checkpoint: str | Path, gem_weight: float, out: str | Path, *,
                    backbone_weights: str | Path | None = None) -> VPRModel:
    """Writes the fused model of the mix checkpoint at ``checkpoint`` to ``out`` (its config.json and
    heads.safetensors; other files there, such as a README, are kept) and returns it."""
    if Path(out).resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {out} is the source checkpoint; write the fused model to another directory")
    model = fuse_model(load_checkpoint(checkpoint, backbone_weights=backbone_weights), gem_weight)
    save_checkpoint(model, out)
    return model
