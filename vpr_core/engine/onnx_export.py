"""ONNX export of the whole encoder network, checked, described in JSON, and cached by fingerprint.

The graph takes the preprocessed float32 batch [N, 3, h, w] (dynamic N, fixed h and w) and returns
the pre-sign binary logits and the L2-normalised descriptor; preprocessing and bit packing stay in
Python (``Encoder``) so that every backend shares them. Positional embeddings are already sized for
(h, w) in the model, and attention is plain scaled-dot-product, so the graph has no interpolation and
no custom attention kernels, which is what TensorRT and every ONNX Runtime provider can run.

The TorchScript exporter is used (``dynamo=False``): the torch.export-based one needs ``onnxscript``,
which is not among the pinned packages, and the TorchScript one exports these models in full.

An fp16 graph (weights and activations in half precision, normalisation layers in fp32 as autocast
would run them, the descriptor renormalised in fp32 at the end) serves the GPU backends' fp16
precision; its input and outputs stay float32 so callers do not change.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vpr_core
from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.engine_cache import build_lock, file_sha256
from vpr_core.engine.errors import ExportError
from vpr_core.engine.model_source import load_model
from vpr_core.engine.onnx_description import (FORMAT, FORMAT_VERSION, INPUT_NAME, OUTPUT_NAMES, description_path,
                                              read_description, write_description)
from vpr_core.fsio import atomic_write_bytes
from vpr_core.model import ModelConfig
from vpr_core.model.preprocess import preprocess

log = logging.getLogger(__name__)

OPSET = 17
# Minimum descriptor cosine between the exported graph (ONNX Runtime, CPU) and the torch model on
# the check batch; every backend is held to the same thresholds.
MIN_COSINE = {"fp32": 0.999, "fp16": 0.99}
CHECK_BATCH = (1, 2)  # neither is the traced batch (3), so a batch size frozen into the graph is caught
# Module types run in fp32 inside the fp16 graph: their reductions overflow or lose precision in
# half (LayerNorm after attention is the known case in ViTs).
FP32_MODULES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)


def graph_precision(precision: str) -> str:
    """The ONNX graph a backend precision runs on: fp16 runs the fp16 graph, anything else fp32."""
    return "fp16" if precision == "fp16" else "fp32"


class _Exported(torch.nn.Module):
    """The model seen by the exporter: float32 in, the model's two outputs as float32 out."""

    def __init__(self, model: torch.nn.Module, half: bool) -> None:
        super().__init__()
        self.model = model
        self.half = half

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, desc = self.model(images.half() if self.half else images)
        return logits.float(), torch.nn.functional.normalize(desc.float(), dim=-1)


def _cast_input(module: torch.nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _cast_output(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.half()


def half_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A half-precision copy with normalisation layers kept in fp32 (the autocast policy for them)."""
    half = copy.deepcopy(model).half()
    for module in half.modules():
        if isinstance(module, FP32_MODULES):
            module.float()
            module.register_forward_pre_hook(_cast_input)
            module.register_forward_hook(_cast_output)
    return half


def export_onnx(model: torch.nn.Module, path: Path | str, precision: str = "fp32",
                opset: int = OPSET) -> dict[str, Any]:
    """Writes the ONNX graph of ``model`` to ``path`` (atomically) and its description beside it.

    The graph is checked with ``onnx.checker`` and run with ONNX Runtime against the torch model
    before it is written; a graph that does not compute the model raises ExportError and writes nothing.
    """
    if opset < 17:
        raise ValueError(f"opset {opset} is too old: LayerNormalization needs opset >= 17")
    path = Path(path)
    model = model.eval()
    config: ModelConfig = model.config
    h, w = config.image_size
    # In eval mode, like the model: torch.onnx.export afterwards restores the training flag of the
    # module it was given, recursively, so a wrapper left in training mode would switch the model's
    # dropout on for everything that runs it next (the parity check below included).
    net = _Exported(half_copy(model) if precision == "fp16" else model, half=precision == "fp16").eval()
    device = next(model.parameters()).device  # traced where the model lives (a GPU encoder's model)
    example = torch.zeros(3, 3, h, w, device=device)  # not 1: a traced size-1 batch could be folded into constants
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter's own deprecation notices, and tracer warnings about shape checks in the model:
        # the graph is run at batch sizes other than the traced one below, which is what they ask for.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        try:
            torch.onnx.export(
                net, (example,), buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            )
        except Exception as exc:  # the exporter raises many types; all mean "this model does not export"
            # Its messages embed whole graphs; the first lines name the failing node and why.
            first = " ".join(str(exc).split("\n")[:2])[:800]
            raise ExportError(f"torch.onnx.export failed for model {config.preset!r} "
                              f"({config.fingerprint()[:12]}): {type(exc).__name__}: {first}") from exc
    data = buffer.getvalue()
    import onnx  # here, not at the top: a node that finds its graph cached never pays onnx's import (~1 s)

    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph of {config.fingerprint()} fails onnx.checker: {exc}") from exc
    check = verify_graph(data, model, precision)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    description = describe(config, path, precision, opset, check)
    write_description(path, description)
    return description


def verify_graph(data: bytes, model: torch.nn.Module, precision: str) -> dict[str, float]:
    """Runs the graph with ONNX Runtime (CPU) next to the fp32 torch model on preprocessed noise images."""
    from vpr_core.engine.ort_session import cpu_session

    session = cpu_session(data)
    rng = np.random.default_rng(0)
    worst_cos, worst_logit = 1.0, 0.0
    for n in CHECK_BATCH:
        images = rng.integers(0, 256, size=(n, 96, 128, 3), dtype=np.uint8)
        batch = preprocess(images, model.config)
        logits, desc = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        with torch.no_grad():
            device = next(model.parameters()).device
            ref_logits, ref_desc = (t.float().cpu().numpy() for t in model(torch.from_numpy(batch).to(device)))
        if desc.shape != ref_desc.shape or logits.shape != ref_logits.shape:
            raise ExportError(f"the exported graph returns {logits.shape} and {desc.shape} at batch {n}; "
                              f"the model returns {ref_logits.shape} and {ref_desc.shape}")
        ref_desc = ref_desc / np.linalg.norm(ref_desc, axis=1, keepdims=True)
        worst_cos = min(worst_cos, float((desc * ref_desc).sum(axis=1).min()))
        worst_logit = max(worst_logit, float(np.abs(logits - ref_logits).max()))
    if not worst_cos >= MIN_COSINE[precision]:
        raise ExportError(f"the exported {precision} graph of {model.config.fingerprint()} does not compute the "
                          f"model: descriptor cosine {worst_cos:.6f} < {MIN_COSINE[precision]}")
    return {"min_descriptor_cosine": worst_cos, "max_logit_abs_diff": worst_logit}


def describe(config: ModelConfig, onnx_path: Path, precision: str, opset: int,
             check: dict[str, float]) -> dict[str, Any]:
    """What a user of the ONNX file needs without our code: tensors, preprocessing, fingerprint."""
    h, w = config.image_size
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": config.fingerprint(),
        "vpr_core_version": vpr_core.__version__,
        "onnx_file": onnx_path.name,
        "onnx_sha256": file_sha256(onnx_path),
        "graph_precision": precision,
        "opset": opset,
        "exporter": f"torch {torch.__version__} (TorchScript exporter), onnx {version('onnx')}",
        "batch_dependent": bool(config.batch_dependent),
        "inputs": [{
            "name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, h, w], "layout": "NCHW",
            "meaning": "RGB images after the preprocessing below",
        }],
        "outputs": [
            {"name": OUTPUT_NAMES[0], "dtype": "float32", "shape": ["batch", int(config.bits)],
             "meaning": "pre-sign hash logits; bit = logit >= 0, packed 8 per byte, first bit in the "
                        "most significant position (numpy.packbits)"},
            {"name": OUTPUT_NAMES[1], "dtype": "float32", "shape": ["batch", int(config.dim)],
             "meaning": "global descriptor, L2-normalised; compare by inner product"},
        ],
        "preprocessing": preprocessing_description(config),
        "check": check,
        "model_config": config.to_dict(),
    }


def preprocessing_description(config: ModelConfig) -> dict[str, Any]:
    h, w = config.image_size
    return {"input": "uint8 RGB [H, W, 3], any size", "output_size": [h, w],
            "mean": list(config.mean), "std": list(config.std),
            "function": "vpr_core.model.preprocess.preprocess"}



def cached_onnx(config: EncoderConfig, model_config: ModelConfig, model: torch.nn.Module | None = None) -> Path:
    """The ONNX file of the configured model in the cache, exported first if missing or stale.

    Keyed by the model fingerprint (which covers the weights) and the graph precision; the
    description's checksum must match the file, so a truncated or replaced file is exported again
    rather than handed to a backend. ``model`` is used when given, else loaded only if needed.
    """
    precision = graph_precision(config.precision)
    directory = config.resolved_cache_dir() / "onnx"
    path = directory / f"{model_config.fingerprint()}-{precision}.onnx"
    with build_lock(directory, path.stem):
        reason = "force_rebuild is set" if config.force_rebuild else stale_reason(path, model_config, precision)
        if reason is None:
            log.info("reusing the ONNX export %s", path)
            return path
        log.info("exporting the model to ONNX at %s (%s)", path, reason)
        export_onnx(model if model is not None else load_model(config), path, precision)
        return path


def stale_reason(path: Path, model_config: ModelConfig, precision: str) -> str | None:
    """Why the cached export at ``path`` cannot serve this model and precision, or None if it can."""
    if not path.is_file():
        return "no export yet"
    description = read_description(path)
    if description is None:
        return f"its description {description_path(path)} is missing or unreadable"
    # The fingerprint covers configuration and weights, not our code: a new release re-exports.
    expected = {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": model_config.fingerprint(),
                "graph_precision": precision, "vpr_core_version": vpr_core.__version__}
    wrong = [f"{k} {description.get(k)!r} != {v!r}" for k, v in expected.items() if description.get(k) != v]
    if wrong:
        return "its description differs: " + "; ".join(wrong)
    if description.get("onnx_sha256") != file_sha256(path):
        return "the file does not match the checksum in its description"
    return None
