"""The encoder configuration shared by the node, the offline tools and the ``vpr`` command."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vpr_core.choices import BACKEND_CHOICES, DEVICE_CHOICES, INT8_BACKEND_CHOICES, PRECISIONS

CACHE_ENV = "VPR_CACHE_DIR"


@dataclass
class EncoderConfig:
    """How to build an encoder: which model, which backend, where exported artefacts are cached.

    One dataclass for every backend so that a launch file or a CLI can switch backends by changing one
    string; fields a backend does not use (``cuda_graphs`` outside torch) are ignored by it.
    """

    preset: str = "lite0"
    checkpoint: str = ""  # head checkpoint directory; empty = the preset's own weights
    backbone_weights: str = ""
    backend: str = "auto"  # "auto" | "torch" | "onnxruntime" | "tensorrt"
    device: str = "auto"  # "cpu" | "cuda" | "auto"
    precision: str = "fp32"  # "fp32" | "fp16" (| "bf16" for torch | "int8" for onnxruntime on the CPU)
    calibration: str = ""  # int8: frame sources of the calibration images, ';' between them (vpr_core/engine/int8.py)
    calibration_frames: int = 32
    max_batch: int = 8
    threads: int = 0  # 0 = the library's default
    cache_dir: str = ""  # ONNX files and TensorRT engines; empty = $VPR_CACHE_DIR or ~/.cache/vpr_ros
    cuda_graphs: bool = False
    force_rebuild: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuses values no backend can use, naming the field, so a bad launch parameter fails at start."""
        _choice("backend", self.backend, BACKEND_CHOICES)
        _choice("device", self.device, DEVICE_CHOICES)
        _choice("precision", self.precision, PRECISIONS)
        if not self.preset and not self.checkpoint:
            raise ValueError("EncoderConfig: give a preset or a checkpoint directory (both are empty)")
        for name in ("max_batch", "threads", "calibration_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"EncoderConfig.{name} must be an integer, got {value!r}")
        if self.max_batch < 1:
            raise ValueError(f"EncoderConfig.max_batch must be >= 1, got {self.max_batch}")
        if self.threads < 0:
            raise ValueError(f"EncoderConfig.threads must be >= 0 (0 = library default), got {self.threads}")
        if self.calibration_frames < 1:
            raise ValueError(f"EncoderConfig.calibration_frames must be >= 1, got {self.calibration_frames}")
        if self.precision == "int8":
            self._validate_int8()
        elif self.precision != "fp32" and self.device == "cpu" and self.backend != "torch":
            raise ValueError(
                f"EncoderConfig.precision={self.precision!r} needs a GPU backend; on device 'cpu' "
                "use precision 'fp32' (or backend 'torch' with 'bf16')"
            )

    def _validate_int8(self) -> None:
        if self.backend not in INT8_BACKEND_CHOICES or self.device == "cuda":
            raise ValueError(f"EncoderConfig.precision='int8' runs on backend 'onnxruntime' on the CPU; got backend "
                             f"{self.backend!r} on device {self.device!r}: set backend 'onnxruntime' (or 'auto') "
                             "and device 'cpu' (or 'auto')")
        if not self.calibration:
            raise ValueError("EncoderConfig.precision='int8' needs calibration images: set the calibration source "
                             "(model.calibration / --calibration) to a folder of images or a frame source from the "
                             "place the robot runs, e.g. the frames its map was built from")

    @property
    def model_name(self) -> str:
        """What reports and plots call the model: the checkpoint folder's name (never a machine path)
        or the preset."""
        return Path(self.checkpoint).name if self.checkpoint else self.preset

    def resolved_cache_dir(self) -> Path:
        """Where ONNX files and engines live: the field, else $VPR_CACHE_DIR, else ~/.cache/vpr_ros."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        if os.environ.get(CACHE_ENV):
            return Path(os.environ[CACHE_ENV]).expanduser()
        return Path.home() / ".cache" / "vpr_ros"


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"EncoderConfig.{name} must be one of {', '.join(choices)}; got {value!r}")
