"""ONNX Runtime backend: the exported graph on the CPU, CUDA or TensorRT execution provider.

This is the default backend wherever TensorRT is not installed, so its session is set for the node's
case: one small batch at a time, as little latency per call as the library allows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vpr_core.choices import ONNXRUNTIME
from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.encoder import Encoder
from vpr_core.engine.errors import BackendUnavailable
from vpr_core.engine.int8 import cached_int8_onnx, load_calibration
from vpr_core.engine.model_source import load_model_config
from vpr_core.engine.onnx_description import INPUT_NAME, OUTPUT_NAMES
from vpr_core.engine.onnx_export import cached_onnx
from vpr_core.engine.ort_session import CPU, CUDA, TENSORRT, session_options
from vpr_core.model import ModelConfig, VPRModel

log = logging.getLogger(__name__)

# TensorRT execution provider build workspace; the same limit as our own TensorRT backend uses.
TRT_WORKSPACE_BYTES = 4 << 30



def execution_providers(config: EncoderConfig, input_hw: tuple[int, int], cache_dir: Path,
                        available: list[str] | None = None) -> list[str | tuple[str, dict]]:
    """The provider chain for ``config``: TensorRT EP, CUDA EP, CPU, as far as installed and asked for."""
    available = ort.get_available_providers() if available is None else available
    if config.precision == "bf16":
        raise ValueError("precision 'bf16' is not supported by the onnxruntime backend; use 'fp32' or 'fp16'")
    if config.device == "cuda" and CUDA not in available:
        raise BackendUnavailable(
            "onnxruntime on device 'cuda' needs the CUDA execution provider: pip install onnxruntime-gpu "
            f"(this onnxruntime {ort.__version__} has only {', '.join(available)})"
        )
    if config.precision == "int8":  # the QDQ graph is for ONNX Runtime's CPU int8 kernels
        return [CPU]
    if config.device == "cpu" or CUDA not in available:
        if config.precision != "fp32":
            raise ValueError(f"precision {config.precision!r} needs a GPU; onnxruntime on the CPU runs 'fp32'")
        return [CPU]
    chain: list[str | tuple[str, dict]] = []
    if TENSORRT in available:
        h, w = input_hw
        engines = cache_dir / "ort_tensorrt"
        chain.append((TENSORRT, {
            "trt_fp16_enable": config.precision == "fp16",
            "trt_max_workspace_size": TRT_WORKSPACE_BYTES,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engines),
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x3x{h}x{w}",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:1x3x{h}x{w}",
            "trt_profile_max_shapes": f"{INPUT_NAME}:{config.max_batch}x3x{h}x{w}",
        }))
    chain += [CUDA, CPU]
    return chain


class OrtEncoder(Encoder):
    backend = ONNXRUNTIME

    def __init__(self, config: EncoderConfig, model_config: ModelConfig, onnx_path: Path,
                 fingerprint: str | None = None) -> None:
        super().__init__(config, model_config)
        if fingerprint is not None:  # an INT8 graph: another encoder than the model's fp32 one
            self.fingerprint = fingerprint
        cache_dir = config.resolved_cache_dir()
        providers = execution_providers(config, self.input_hw, cache_dir)
        if any(isinstance(p, tuple) and p[0] == TENSORRT for p in providers):
            (cache_dir / "ort_tensorrt").mkdir(parents=True, exist_ok=True)
        self.onnx_path = onnx_path
        self.session = ort.InferenceSession(str(onnx_path), sess_options=session_options(config.threads),
                                            providers=providers)
        used = self.session.get_providers()
        # ONNX Runtime silently falls back to the CPU when a GPU provider fails to load (missing CUDA
        # or cuDNN libraries); a user who asked for the GPU must hear about it.
        if config.device == "cuda" and CUDA not in used and TENSORRT not in used:
            raise BackendUnavailable(
                f"onnxruntime could not start its CUDA provider (session runs on {used}); check that the "
                "CUDA and cuDNN libraries matching onnxruntime-gpu are installed"
            )
        log.info("onnxruntime %s session for %s on %s", ort.__version__, onnx_path.name, ", ".join(used))
        self.providers = used

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, desc = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return logits, desc


def create(config: EncoderConfig, model: VPRModel | None = None) -> OrtEncoder:
    """An encoder on the cached ONNX export of the configured model (exported on first use).

    ``model``: an already built model (a training loop's, or one shared with a torch encoder); the
    config's preset and checkpoint are then not read.
    """
    model_config, model = (model.config, model) if model is not None else load_model_config(config)
    onnx_path = cached_onnx(config, model_config, model)
    if config.precision != "int8":
        return OrtEncoder(config, model_config, onnx_path)
    calibration = load_calibration(config.calibration, config.calibration_frames, model_config)
    int8_path, description = cached_int8_onnx(config, model_config, onnx_path, calibration)
    return OrtEncoder(config, model_config, int8_path, fingerprint=description["fingerprint"])
