"""torch backend: the model itself, eager, under inference_mode; autocast and CUDA graphs on the GPU.

It is the reference every other backend is compared with, and the backend for training machines.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from vpr_core.choices import TORCH
from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.encoder import Encoder
from vpr_core.engine.errors import BackendUnavailable
from vpr_core.engine.model_source import load_model
from vpr_core.model import VPRModel

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
GRAPH_WARMUP_RUNS = 3


def resolve_device(device: str) -> torch.device:
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"device 'cuda' asked for, but torch {torch.__version__} sees no CUDA GPU "
            f"(a CPU-only build, or no driver); use device 'cpu' or 'auto'"
        )
    return torch.device("cuda")


class TorchEncoder(Encoder):
    backend = TORCH

    def __init__(self, config: EncoderConfig, model: VPRModel) -> None:
        super().__init__(config, model.config)
        self.device = resolve_device(config.device)
        if self.device.type == "cpu" and config.precision == "fp16":
            raise ValueError("precision 'fp16' with backend 'torch' needs a GPU; on the CPU use 'fp32' or 'bf16'")
        if config.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs a CUDA device; set cuda_graphs false on the CPU")
        if config.threads:
            # torch has one intra-op pool per process, so this also applies to other torch work here.
            torch.set_num_threads(config.threads)
        self.model = model.eval().to(self.device)
        self._autocast_dtype = AUTOCAST_DTYPES[config.precision]
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
        log.info("torch %s encoder on %s, %s%s", torch.__version__, self.device, config.precision,
                 ", CUDA graphs" if config.cuda_graphs else "")

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The autocast weight cache must be off while graphs are captured: cached casts made during
        # capture would be freed memory at replay.
        with torch.autocast(self.device.type, dtype=self._autocast_dtype, enabled=self._autocast_dtype is not None,
                            cache_enabled=not self.config.cuda_graphs):
            return self.model(x)

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            logits, desc = self._replay(x) if self.config.cuda_graphs else self._forward(x)
            return logits.float().cpu().numpy(), desc.float().cpu().numpy()

    def _replay(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model as a CUDA graph captured for this batch size (one graph per size seen)."""
        n = x.shape[0]
        if n not in self._graphs:
            self._graphs[n] = self._capture(x)
        graph, static_input, static_output = self._graphs[n]
        static_input.copy_(x)
        graph.replay()
        return static_output

    def _capture(self, x: torch.Tensor):
        static_input = x.clone()
        # Warm-up on a side stream, as capture requires: lazy initialisation and cuDNN autotuning
        # must not happen inside the capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_RUNS):
                self._forward(static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = self._forward(static_input)
        log.info("captured a CUDA graph for batch %d", x.shape[0])
        return graph, static_input, static_output


def create(config: EncoderConfig, model: VPRModel | None = None) -> TorchEncoder:
    """An encoder on ``model``, or on the model the config names."""
    resolve_device(config.device)  # a missing GPU is reported before the model is loaded
    return TorchEncoder(config, model if model is not None else load_model(config))
