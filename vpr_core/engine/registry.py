"""Backends chosen by name, and the ``auto`` rule.

Backend modules are imported only when chosen: the tensorrt module needs NVIDIA's packages, and the
node should not pay for importing a backend it does not run.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging

from vpr_core.choices import AUTO, BACKEND_CHOICES, ONNXRUNTIME, TENSORRT, TORCH
from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.encoder import Encoder

log = logging.getLogger(__name__)

# name -> (module exposing create(config) -> Encoder, one-line help)
BACKENDS: dict[str, tuple[str, str]] = {
    TORCH: ("vpr_core.engine.torch_backend", "the torch model, eager; CPU or CUDA (autocast, CUDA graphs)"),
    ONNXRUNTIME: ("vpr_core.engine.ort_backend", "ONNX Runtime on the cached ONNX export; CPU, CUDA or TensorRT EP"),
    TENSORRT: ("vpr_core.engine.trt_backend", "a TensorRT engine built from the ONNX export, cached"),
}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def ort_has_cuda() -> bool:
    import onnxruntime

    from vpr_core.engine.ort_session import CUDA

    return CUDA in onnxruntime.get_available_providers()


def resolve_backend(config: EncoderConfig) -> str:
    """The backend ``config`` names, or for ``auto``: TensorRT when a GPU and the tensorrt package
    are present, else ONNX Runtime (which itself takes the CUDA provider when it has one, else the CPU).

    bf16 is a torch-only precision, so ``auto`` with bf16 is torch; int8 is ONNX Runtime's (CPU).
    """
    if config.backend != AUTO:
        return config.backend
    if config.precision == "bf16":
        return TORCH
    if config.precision == "int8":
        return ONNXRUNTIME
    if config.device != "cpu" and importlib.util.find_spec("tensorrt") is not None and cuda_available():
        return TENSORRT
    if config.device == "cpu" or config.precision == "fp32" or ort_has_cuda():
        return ONNXRUNTIME
    return TORCH


def create_encoder(config: EncoderConfig) -> Encoder:
    """The encoder ``config`` describes, on the backend it names (``auto`` resolved first)."""
    config.validate()
    name = resolve_backend(config)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKEND_CHOICES)}")
    resolved = dataclasses.replace(config, backend=name)
    encoder = importlib.import_module(BACKENDS[name][0]).create(resolved)
    log.info("encoder %s on backend %s (asked for %r)", encoder.fingerprint, name, config.backend)
    return encoder
