"""TensorRT backend: an engine built from our ONNX export, cached, and run on torch CUDA buffers.

``tensorrt`` is imported only when this backend is chosen: it exists only on NVIDIA machines, and
everything else in the package must work without it.

Precision lives in the ONNX graph (the fp16 export keeps normalisation layers in fp32), and the
network is built strongly typed where TensorRT offers it. TensorRT 11 removed the FP16 builder flag
that older code relied on, so a graph with explicit types is the one way that works on 8.6 to 11.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import numpy as np

from vpr_core.choices import TENSORRT
from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.encoder import Encoder
from vpr_core.engine.engine_cache import EngineCache, EngineKey, Lookup, build_lock, file_sha256
from vpr_core.engine.errors import BackendUnavailable, ExportError
from vpr_core.engine.model_source import load_model_config
from vpr_core.engine.onnx_description import INPUT_NAME, OUTPUT_NAMES
from vpr_core.engine.onnx_export import cached_onnx
from vpr_core.model import ModelConfig, VPRModel

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30
# The optimisation profile is tuned for batch 1, the node's case (one frame per camera at a time);
# larger batches up to max_batch run with the same engine.
OPT_BATCH = 1

INSTALL_HINT = (
    "the tensorrt backend needs NVIDIA TensorRT >= 8.6 and a CUDA build of torch: "
    "pip install tensorrt --extra-index-url https://pypi.nvidia.com (wheels from NVIDIA's index; on "
    "Jetson it comes with JetPack); not available on this machine"
)


def import_tensorrt() -> ModuleType:
    """The tensorrt module, or BackendUnavailable saying what to install."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(f"{INSTALL_HINT} (import tensorrt failed: {exc})") from exc
    if not hasattr(tensorrt, "IExecutionContext") or not hasattr(tensorrt.IExecutionContext, "execute_async_v3"):
        raise BackendUnavailable(f"tensorrt {getattr(tensorrt, '__version__', '?')} is too old: {INSTALL_HINT}")
    return tensorrt


def require_cuda() -> ModuleType:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"the tensorrt backend needs an NVIDIA GPU visible to torch; torch {torch.__version__} "
            f"(CUDA {torch.version.cuda}) sees none"
        )
    return torch


def engine_key(trt: ModuleType, onnx_path: Path, precision: str, input_chw: tuple[int, int, int],
               max_batch: int, device_index: int = 0) -> EngineKey:
    """The key of an engine for this ONNX file on this GPU with this TensorRT."""
    import torch

    props = torch.cuda.get_device_properties(device_index)
    return EngineKey(
        onnx_sha256=file_sha256(onnx_path),
        tensorrt_version=trt.__version__,
        gpu_name=props.name,
        compute_capability=f"{props.major}.{props.minor}",
        precision=precision,
        input_chw=tuple(input_chw),
        min_batch=1,
        opt_batch=min(OPT_BATCH, max_batch),
        max_batch=max_batch,
        workspace_bytes=WORKSPACE_BYTES,
    )


def build_engine(trt: ModuleType, onnx_path: Path, key: EngineKey) -> bytes:
    """A serialized engine for ``key``; takes minutes for a ViT, which is why engines are cached."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag_type = trt.NetworkDefinitionCreationFlag
    strongly_typed = hasattr(flag_type, "STRONGLY_TYPED")
    if strongly_typed:
        flags = 1 << int(flag_type.STRONGLY_TYPED)
    else:  # TensorRT 8.6: explicit batch must be asked for; fp16 kernels need the builder flag
        flags = 1 << int(flag_type.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}")
    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, key.workspace_bytes)
    if key.precision == "fp16" and not strongly_typed:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    c, h, w = key.input_chw
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (key.min_batch, c, h, w), (key.opt_batch, c, h, w), (key.max_batch, c, h, w))
    builder_config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} "
                          "(its log above says why)")
    return bytes(serialized)


def cached_engine(trt: ModuleType, cache: EngineCache, name: str, onnx_path: Path, key: EngineKey,
                  force_rebuild: bool = False) -> tuple[bytes, Path]:
    """The engine for ``key`` from ``cache``, built and stored there first when missing or stale."""
    with build_lock(cache.directory, name):
        found = Lookup(None, "force_rebuild is set") if force_rebuild else cache.lookup(name, key)
        if found.hit:
            log.info("TensorRT: %s", found.reason)
            return found.engine, cache.engine_path(name)
        log.warning("TensorRT: building the engine %s (%s); this takes minutes once",
                    cache.engine_path(name), found.reason)
        engine = build_engine(trt, onnx_path, key)
        return engine, cache.store(name, key, engine)


class TrtRunner:
    """Runs a deserialized engine on preallocated device buffers in its own CUDA stream.

    The preprocessed batch is copied to the GPU once through pinned memory; nothing goes back to the
    host until the outputs are ready. Output buffers are sized from the engine (batch first), so the
    same runner serves the global graph and the one with local outputs.
    """

    def __init__(self, engine: bytes, trt: ModuleType, output_names: tuple[str, ...], max_batch: int,
                 input_hw: tuple[int, int]) -> None:
        torch = require_cuda()
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine)
        if self._engine is None:
            raise BackendUnavailable(f"TensorRT {trt.__version__} could not load the engine (see its log); "
                                     "rebuild it with force_rebuild")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self.output_names = output_names
        h, w = input_hw
        self._input_host = torch.empty((max_batch, 3, h, w), dtype=torch.float32, pin_memory=True)
        self._input_device = torch.empty((max_batch, 3, h, w), dtype=torch.float32, device="cuda")
        self._outputs_device, self._outputs_host = {}, {}
        for name in output_names:
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            shape = (max_batch, *tuple(self._engine.get_tensor_shape(name))[1:])
            self._outputs_device[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self._outputs_host[name] = torch.empty(shape, dtype=dtype, pin_memory=True)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The outputs for a preprocessed batch, float32, in ``output_names`` order."""
        torch, n = self._torch, len(batch)
        with torch.cuda.stream(self._stream):
            self._input_host[:n].copy_(torch.from_numpy(batch))
            self._input_device[:n].copy_(self._input_host[:n], non_blocking=True)
            self._context.set_input_shape(INPUT_NAME, tuple(self._input_device[:n].shape))
            self._context.set_tensor_address(INPUT_NAME, self._input_device.data_ptr())
            for name in self.output_names:
                self._context.set_tensor_address(name, self._outputs_device[name].data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see its log)")
            for name in self.output_names:
                self._outputs_host[name][:n].copy_(self._outputs_device[name][:n], non_blocking=True)
        self._stream.synchronize()
        # Copies: the pinned buffers are overwritten by the next batch of the same encode() call.
        return [self._outputs_host[name][:n].float().numpy().copy() for name in self.output_names]


class TrtEncoder(Encoder):
    backend = TENSORRT

    def __init__(self, config: EncoderConfig, model_config: ModelConfig, engine: bytes, trt: ModuleType) -> None:
        super().__init__(config, model_config)
        self._runner = TrtRunner(engine, trt, OUTPUT_NAMES, config.max_batch, self.input_hw)

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, desc = self._runner.run(batch)
        return logits, desc


def check_config(config: EncoderConfig) -> None:
    if config.device == "cpu":
        raise ValueError("backend 'tensorrt' runs on the GPU; device 'cpu' is not possible with it")
    if config.precision not in ("fp32", "fp16"):
        raise ValueError(f"backend 'tensorrt' supports precision 'fp16' or 'fp32', not {config.precision!r}")


def create(config: EncoderConfig, model: VPRModel | None = None) -> TrtEncoder:
    """An encoder on the cached engine of the configured model (ONNX export and engine build on first use).

    ``model``: an already built model; the config's preset and checkpoint are then not read.
    """
    check_config(config)
    trt = import_tensorrt()
    require_cuda()
    model_config, model = (model.config, model) if model is not None else load_model_config(config)
    onnx_path = cached_onnx(config, model_config, model)
    h, w = model_config.image_size
    key = engine_key(trt, onnx_path, config.precision, (3, h, w), config.max_batch)
    cache = EngineCache(config.resolved_cache_dir() / "tensorrt")
    engine, _ = cached_engine(trt, cache, f"{model_config.fingerprint()}-{config.precision}", onnx_path, key,
                              force_rebuild=config.force_rebuild)
    return TrtEncoder(config, model_config, engine, trt)
