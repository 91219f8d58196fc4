"""ONNX Runtime sessions as every user of an exported graph opens them: the backend, the export
checks and the INT8 quantizer's agreement check run the same settings."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

# Execution providers, as ONNX Runtime names them.
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Options for low latency on one request at a time.

    Sequential execution: the parallel executor only pays off for graphs with independent branches
    and costs scheduling time on every call. One inter-op thread for the same reason; intra-op threads
    (the ones doing the maths) follow ``threads`` (0 = one per physical core, ONNX Runtime's default).
    No spinning: idle pool threads that busy-wait for the next call take the CPU from everything else
    in the process (the node's callbacks and search) and, measured on a 2-core VM, made lite0 itself
    slower too: 37-53 calls/s with spinning, 60-77 without (batch 1, separate processes, 3 runs each).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def cpu_session(graph: bytes | Path) -> ort.InferenceSession:
    """A CPU session on a graph (serialized, or a file): the reference every export is checked on."""
    return ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), sess_options=session_options(),
                                providers=[CPU])
