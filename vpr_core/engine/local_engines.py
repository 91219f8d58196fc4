"""The encoder with the FoL++ local branch on every backend: torch, ONNX Runtime and TensorRT.

Why not three more ``Encoder`` backends: the local encoder's contract is the global one plus the kept
patches (``LocalEncoder.encode_local``), and its preprocessing, batching, code packing and patch
selection live once in ``LocalEncoder``. A backend here only replaces ``_run`` (preprocessed batch in,
the four raw outputs of the local graph out), as ``Encoder`` backends replace ``_infer``.

The ONNX graph (global and local outputs, one backbone pass) is exported on first use into the
encoder cache, keyed by the model's and the branch's fingerprints, and checked against torch before
it is written (``export_local_onnx``); TensorRT engines are built from that graph and cached like the
global ones. The local graph is fp32: its reliability ranking decides which patches a map keeps, and
an fp16 graph would reorder near-equal patches between map and query.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from vpr_core.choices import BACKEND_CHOICES, BACKENDS, ONNXRUNTIME, TENSORRT, TORCH
from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.engine_cache import EngineCache, build_lock, file_sha256
from vpr_core.engine.local_export import LOCAL_OUTPUT_NAMES, export_local_onnx
from vpr_core.engine.model_source import load_model
from vpr_core.engine.onnx_description import INPUT_NAME, read_description
from vpr_core.engine.registry import resolve_backend
from vpr_core.model import VPRModel
from vpr_core.model.local_branch import LocalBranch, LocalEncoder, branch_fingerprint, load_local_branch

log = logging.getLogger(__name__)


def cached_local_onnx(config: EncoderConfig, model: VPRModel, branch: LocalBranch) -> tuple[Path, dict]:
    """The local graph of ``model`` + ``branch`` in the cache (exported first when missing or stale)
    and its description."""
    directory = config.resolved_cache_dir() / "onnx"
    path = directory / f"{model.fingerprint()}-local-{branch_fingerprint(branch)[:16]}-fp32.onnx"
    with build_lock(directory, path.stem):
        description = None if config.force_rebuild else read_description(path)
        if (description is not None and path.is_file()
                and description.get("fingerprint") == model.config.fingerprint()
                and description.get("local_branch", {}).get("fingerprint") == branch_fingerprint(branch)
                and "grid" in description.get("local_branch", {})
                and description.get("onnx_sha256") == file_sha256(path)):
            log.info("reusing the local ONNX export %s", path)
            return path, description
        log.info("exporting the model with its local branch to ONNX at %s", path)
        return path, export_local_onnx(model, branch, path)


class OrtLocalEncoder(LocalEncoder):
    backend = ONNXRUNTIME

    def __init__(self, config: EncoderConfig, model: VPRModel, branch: LocalBranch) -> None:
        import onnxruntime as ort

        from vpr_core.engine.ort_backend import execution_providers
        from vpr_core.engine.ort_session import session_options

        super().__init__(model, branch, max_batch=config.max_batch)
        path, description = cached_local_onnx(config, model, branch)
        self.grid = tuple(description["local_branch"]["grid"])
        self.session = ort.InferenceSession(
            str(path), sess_options=session_options(config.threads),
            providers=execution_providers(config, tuple(model.config.image_size), config.resolved_cache_dir()))
        self.providers = self.session.get_providers()

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        logits, desc, ldesc, rel = self.session.run(list(LOCAL_OUTPUT_NAMES), {INPUT_NAME: batch})
        return logits, desc, ldesc, rel


class TrtLocalEncoder(LocalEncoder):
    backend = TENSORRT

    def __init__(self, config: EncoderConfig, model: VPRModel, branch: LocalBranch) -> None:
        from vpr_core.engine import trt_backend

        super().__init__(model, branch, max_batch=config.max_batch)
        trt = trt_backend.import_tensorrt()
        trt_backend.require_cuda()
        path, description = cached_local_onnx(config, model, branch)
        self.grid = tuple(description["local_branch"]["grid"])
        h, w = model.config.image_size
        key = trt_backend.engine_key(trt, path, "fp32", (3, h, w), config.max_batch)
        cache = EngineCache(config.resolved_cache_dir() / "tensorrt")
        engine, _ = trt_backend.cached_engine(trt, cache, path.stem, path, key, force_rebuild=config.force_rebuild)
        self._runner = trt_backend.TrtRunner(engine, trt, LOCAL_OUTPUT_NAMES, config.max_batch, (h, w))

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        logits, desc, ldesc, rel = self._runner.run(batch)
        return logits, desc, ldesc, rel


def create_local_encoder(config: EncoderConfig, branch_path: str | Path) -> LocalEncoder:
    """The configured model with the local branch saved at ``branch_path``, on the backend the config
    names (``auto`` resolved as for the global encoder). The branch must have been trained on this
    model's backbone (checked when it loads)."""
    config.validate()
    name = resolve_backend(config)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKEND_CHOICES)}")
    if name != TORCH and config.precision != "fp32":
        raise ValueError(f"the local branch runs in fp32 on backend {name!r} (its reliability ranking picks the "
                         f"stored patches); set precision 'fp32', not {config.precision!r}")
    if name == TENSORRT:
        from vpr_core.engine.trt_backend import check_config

        check_config(config)
    model = load_model(config)
    branch = load_local_branch(branch_path, model)
    if name == TORCH:
        from vpr_core.engine.torch_backend import resolve_device

        device = resolve_device(config.device)
        encoder = LocalEncoder(model.to(device), branch.to(device), max_batch=config.max_batch)
    elif name == ONNXRUNTIME:
        encoder = OrtLocalEncoder(dataclasses.replace(config, backend=name), model, branch)
    else:
        encoder = TrtLocalEncoder(dataclasses.replace(config, backend=name), model, branch)
    log.info("local encoder %s + branch %s on backend %s", encoder.fingerprint, encoder.local_fingerprint[:12], name)
    return encoder


__all__ = ["OrtLocalEncoder", "TrtLocalEncoder", "cached_local_onnx", "create_local_encoder"]
