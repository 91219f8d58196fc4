"""The exported graphs' tensor names and the JSON description written beside each graph.

A module of its own because the graph's readers (the backends, the INT8 quantizer, the local
encoders) need them as much as the exporter does: with them in the exporter, the ONNX Runtime
backend, the INT8 quantizer it uses and the exporter (which checks graphs on ONNX Runtime) imported
each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vpr_core.fsio import atomic_write_json

INPUT_NAME = "images"
OUTPUT_NAMES = ("binary_logits", "descriptor")
FORMAT = "vpr_ros.onnx_encoder"
FORMAT_VERSION = 1


def description_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".json")


def write_description(onnx_path: Path, description: dict[str, Any]) -> None:
    atomic_write_json(description_path(onnx_path), description, indent=2)


def read_description(onnx_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(description_path(onnx_path).read_text())
    except (OSError, ValueError):
        return None
