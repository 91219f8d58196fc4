"""What a model is made of, in words: the text ``vpr info`` (``vpr_core.info``) prints per model.

Models are built on the meta device, so even ViT-L presets are described in a second and without
their weights.
"""

from __future__ import annotations

from vpr_core.model.config import ModelConfig
from vpr_core.model.vpr_model import build_model, parameter_report


def describe(config: ModelConfig) -> str:
    """A header line and a table of parameters per part."""
    model = build_model(config, device="meta")
    h, w = config.image_size
    dependence = "batch-dependent (InteractHead)" if config.batch_dependent else "per-frame"
    lines = [f"{config.preset}: {config.backbone} @ {h}x{w}, {config.bits}-bit code + {config.dim}-D "
             f"float descriptor, head {config.head}/{config.aggregation}, {dependence}",
             f"  {'part':<14}{'parameters':>14}{'trainable':>14}"]
    for part, total, trainable in parameter_report(model):
        lines.append(f"  {part:<14}{total:>14,}{trainable:>14,}")
    return "\n".join(lines)
