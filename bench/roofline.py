"""How close an encoder runs to this machine's limit: its multiply-accumulates per image, counted from
the ONNX graph, and the machine's measured matrix-multiply peak through the same runtime.

Why these two: images/s alone cannot say whether a model is slow because it does much work or because
the runtime uses the CPU badly. MACs per image times images/s is the work rate the encoder reaches
(GMAC/s); a large dense matrix multiply through ONNX Runtime, with the same session options and
thread count, is the best work rate the same kernels (MLAS) reach on this CPU. Their quotient is the
fraction of peak. It is a roofline in the compute-bound sense only: depthwise convolutions do few
MACs per byte they move (memory-bound), and normalisations, activations and the quantize/dequantize
steps do work that is not counted as MACs at all, so a fraction well below 1 is expected; it says
how much of the machine's arithmetic the encoder leaves unused.

The int8 peak is ``MatMulInteger`` with uint8 activations and int8 constant weights: that is the
pairing ONNX Runtime runs with its fast QGEMM kernels (AMX or VNNI where the CPU has them; measured on
this project's 2-core Xeon VM with AMX, one thread, load average 1.5: u8s8 about 720 GMAC/s, u8u8 68,
fp32 49), and the pairing a static QDQ quantization with int8 weights produces. uint8 weights are
measured too, because a model quantized that way can only reach that lower peak.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from vpr_core.engine.ort_session import session_options

# IR version of the micro-benchmark graphs: onnx.helper stamps its own (newer) one, which an older
# onnxruntime refuses; 8 is what opset 17 needs and every onnxruntime of this project reads.
IR_VERSION = 8
OPSET = 17
PEAK_KINDS = ("fp32", "int8 u8s8", "int8 u8u8")
# ISA extensions that decide the peaks (printed with them, since a figure means little without them).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def fixed_batch(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """A copy whose graph inputs have ``batch`` in place of a symbolic (or unknown) first dimension,
    so that shape inference gives every tensor a concrete shape."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return fixed


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor whose shape inference fully resolved.

    ONNX Runtime's symbolic shape inference rather than onnx.shape_inference alone: the exported
    EfficientNet graphs compute their "same" padding from Shape, ConstantOfShape, Slice and Transpose
    nodes, which onnx's data propagation does not follow, so every convolution after the stem would be
    left without shapes; the symbolic pass evaluates such constant sub-graphs (and runs onnx's
    inference for everything else).
    """
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=False)
    graph = inferred.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def count_macs(model: onnx.ModelProto, batch: int = 1) -> int:
    """Multiply-accumulates of one run of ``model`` at ``batch``: Conv (grouped and depthwise ones
    included: the weight's second dimension is already input channels per group), MatMul and Gemm.

    Raises ValueError when a counted node's shapes cannot be inferred, rather than undercount.
    """
    shapes = _shapes(fixed_batch(model, batch))
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        missing = [name for name in (node.input[0], node.input[1], node.output[0]) if name not in shapes]
        if missing:
            raise ValueError(f"no inferred shape for {missing} of {node.op_type} node {node.name!r}")
        a, b, out = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        if node.op_type == "Conv":  # weight [C_out, C_in / group, *kernel]: each output sums C_in/g * k MACs
            total += int(np.prod(out)) * int(np.prod(b[1:]))
        elif node.op_type == "MatMul":  # every output element is a dot product over A's last axis
            total += int(np.prod(out)) * a[-1]
        else:
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            total += int(np.prod(out)) * (a[0] if trans_a else a[1])
    return total


def count_macs_file(path: Path | str, batch: int = 1) -> int:
    """``count_macs`` of an ONNX file (the weights are read too: initializers carry the shapes)."""
    return count_macs(onnx.load(str(path)), batch)


def matmul_graph(kind: str, n: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """An [n, n] x [n, n] matrix multiply of ``kind`` (one of PEAK_KINDS) and its input feed.

    The right operand is a constant initializer, as a model's weights are, so ONNX Runtime prepacks it
    the same way.
    """
    if kind not in PEAK_KINDS:
        raise ValueError(f"unknown peak kind {kind!r}; choose from {', '.join(PEAK_KINDS)}")
    rng = np.random.default_rng(0)
    if kind == "fp32":
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        op, a_type, out_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    else:
        a = rng.integers(0, 256, (n, n), dtype=np.uint8)
        b = (rng.integers(-128, 128, (n, n), dtype=np.int8) if kind == "int8 u8s8"
             else rng.integers(0, 256, (n, n), dtype=np.uint8))
        op, a_type, out_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])], f"peak {kind}",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", out_type, [n, n])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model, {"A": a}


def measure_peak(kind: str, threads: int, n: int = 1024, min_calls: int = 5, budget_s: float = 2.0) -> float:
    """GMAC/s of ``matmul_graph(kind, n)`` on ONNX Runtime's CPU provider with the encoder's session
    options at ``threads`` intra-op threads: the median call after one warm-up call, over at least
    ``min_calls`` calls and ``budget_s`` seconds (the median, like the encoder figures, so that a
    shared machine's load spikes count alike on both sides of the fraction)."""
    if threads < 0 or n < 1 or min_calls < 1:
        raise ValueError(f"measure_peak needs threads >= 0, n >= 1, min_calls >= 1; got {threads}, {n}, {min_calls}")
    model, feed = matmul_graph(kind, n)
    session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"])
    session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return n ** 3 / float(np.median(times)) / 1e9


def isa_flags() -> str:
    """The ISA_FLAGS this CPU has, space-separated ("unknown" where /proc/cpuinfo is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in ISA_FLAGS if f in have) or "none of " + " ".join(ISA_FLAGS)
    except OSError:
        pass
    return "unknown"
