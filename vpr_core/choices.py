"""The closed sets of names that configurations, `vpr` options and the node's parameters accept.

Each set is defined here once and imported wherever a value is checked or offered as a choice, so
the library, the CLI, the node and the launch file cannot disagree about which names exist. No
imports on purpose: `vpr_ros.parameters` and the launch file build their tables from these at import
time, without loading torch.
"""

from __future__ import annotations

AUTO = "auto"

# Inference backends (vpr_core.engine.registry maps each to its module).
TORCH, ONNXRUNTIME, TENSORRT = "torch", "onnxruntime", "tensorrt"
BACKENDS = (TORCH, ONNXRUNTIME, TENSORRT)
BACKEND_CHOICES = (AUTO, *BACKENDS)

DEVICE_CHOICES = (AUTO, "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# The float graphs an export writes (the int8 graph is quantized from the fp32 one).
GRAPH_PRECISIONS = ("fp32", "fp16")
# int8 is ONNX Runtime's CPU graph: the backends that run it.
INT8_BACKEND_CHOICES = (AUTO, ONNXRUNTIME)

# What the localizer does with each frame: match against a prebuilt map, build its own, or both.
MODES = ("localization", "slam", "both")

# Geometric verification of loop candidates.
GEOMETRIC_METHODS = ("none", "orb", "sift")


def spoken(names: tuple[str, ...]) -> str:
    """The names as a sentence lists them: "a, b or c"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
