"""bench/encoder.py's roofline parts: the MAC counter against graphs counted by hand, the peak
micro-benchmark on a tiny matrix, and the thread-count argument.

Why: the fraction of peak the README reports is only as right as these two numbers; a counter that
missed grouped convolutions or a batch dimension would be off by factors without any bench noticing.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def roofline(monkeypatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # bench scripts import their siblings by plain name
    return importlib.import_module("roofline")


@pytest.fixture
def bench_encoder(monkeypatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("encoder")


def weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)


def graph_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                initializers: list[onnx.TensorProto], output: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_conv_macs_grouped_strided_and_depthwise(roofline):
    # x [batch, 4, 8, 8]
    # -> grouped conv: 6 out channels, 2 groups, 3x3, stride 2, pad 1 -> [1, 6, 4, 4]
    #    each output sums (4 / 2) * 3 * 3 = 18 products: 6 * 4 * 4 * 18 = 1728
    # -> depthwise conv: 6 groups, 3x3, pad 1 -> [1, 6, 4, 4], 9 products each: 6 * 16 * 9 = 864
    # -> pointwise conv: 6 -> 10 channels, 1x1 -> [1, 10, 4, 4], 6 products each: 10 * 16 * 6 = 960
    model = graph_model(
        [helper.make_node("Conv", ["x", "w1"], ["a"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["a", "w2"], ["b"], group=6, pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["b", "w3"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [weight("w1", 6, 2, 3, 3), weight("w2", 6, 1, 3, 3), weight("w3", 10, 6, 1, 1)], "y")
    assert roofline.count_macs(model) == 1728 + 864 + 960
    assert roofline.count_macs(model, batch=3) == 3 * (1728 + 864 + 960)


def test_matmul_and_gemm_macs(roofline):
    # MatMul x [batch, 5, 6] @ w [6, 7] -> [1, 5, 7]: 35 outputs of 6 products = 210
    # Gemm flat [5, 7] @ g [3, 7]^T (transB) -> [5, 3]: 15 outputs of 7 products = 105
    # Gemm t [7, 5]^T (transA) @ g2 [7, 2] -> [5, 2]: 10 outputs of 7 products = 70
    model = graph_model(
        [helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Reshape", ["m", "shape"], ["flat"]),
         helper.make_node("Gemm", ["flat", "g"], ["y1"], transB=1),
         helper.make_node("Gemm", ["t", "g2"], ["y"], transA=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 6]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [7, 5])],
        [weight("w", 6, 7), numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), "shape"),
         weight("g", 3, 7), weight("g2", 7, 2)], "y")
    assert roofline.count_macs(model) == 210 + 105 + 70


def test_unknown_shape_is_refused_not_undercounted(roofline):
    # Only the first (batch) dimension is fixed; a second dynamic one leaves the product unknown.
    model = graph_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 6])],
                        [weight("w", 6, 7)], "y")
    with pytest.raises(ValueError, match="no inferred shape"):
        roofline.count_macs(model)


@pytest.mark.parametrize("kind", ["fp32", "int8 u8s8", "int8 u8u8"])
def test_peak_graphs_run_and_compute_the_product(roofline, kind):
    model, feed = roofline.matmul_graph(kind, 16)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, feed)
    right = numpy_helper.to_array(model.graph.initializer[0])
    assert right.dtype == {"fp32": np.float32, "int8 u8s8": np.int8, "int8 u8u8": np.uint8}[kind]
    expected = feed["A"].astype(np.float64) @ right.astype(np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3)
    assert roofline.measure_peak(kind, threads=1, n=16, min_calls=2, budget_s=0.0) > 0


def test_peak_arguments_are_checked(roofline):
    with pytest.raises(ValueError, match="unknown peak kind"):
        roofline.matmul_graph("int4", 16)
    with pytest.raises(ValueError, match="threads >= 0"):
        roofline.measure_peak("fp32", threads=-1, n=16)
    with pytest.raises(ValueError, match="min_calls >= 1"):
        roofline.measure_peak("fp32", threads=1, n=16, min_calls=0)


def test_thread_counts_argument(bench_encoder):
    assert bench_encoder.parse_threads("1,2") == [1, 2]
    assert bench_encoder.parse_threads("2, 1,2,0") == [2, 1, 0]  # 0: the library default, as the node's
    for bad in ("", "1,-1", "one", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_encoder.parse_threads(bad)
    args = bench_encoder.build_parser().parse_args(["--quick", "--threads", "1,2", "--models", "lite0-mix"])
    assert args.threads == [1, 2] and args.quick and args.models == "lite0-mix"
    with pytest.raises(SystemExit):
        bench_encoder.build_parser().parse_args(["--threads", "-2"])


def test_fractions_ratios_and_scaling_from_call_times(bench_encoder):
    # 1 GMAC per image; per single-image call (b4 and b16 alike per image) at 1 thread: fp32 0.1 s,
    # INT8 0.05 s, torch 0.2 s; at 2 threads every call takes 0.8x as long.
    # fp32 10 GMAC/s of a 50 GMAC/s peak = 20 %, INT8 20 GMAC/s of a 400 GMAC/s peak = 5 %.
    calls = {"onnxruntime cpu fp32": 0.1, "onnxruntime cpu int8": 0.05, "torch cpu fp32": 0.2}
    times = {b: {(threads, name): [t * b * (1 if threads == 1 else 0.8)] * 3
                 for name, t in calls.items() for threads in (1, 2)} for b in bench_encoder.BATCHES}
    runs = {"m": {"macs": 10 ** 9, "times": times}}
    peaks = {"m": {1: {"fp32": 50.0, "int8 u8s8": 400.0, "int8 u8u8": 60.0},
                   2: {"fp32": 100.0, "int8 u8s8": 800.0, "int8 u8u8": 120.0}}}
    rows = {tuple(line.split(" | ")[1:3]): line for line in bench_encoder.speed_table(runs, peaks)[2:]}
    assert rows["1", "onnxruntime cpu fp32"].endswith("| 10.0 / 10.0 / 10.0 | 20.0 / 20.0 / 20.0 |")
    assert rows["1", "onnxruntime cpu int8"].endswith("| 20.0 / 20.0 / 20.0 | 5.0 / 5.0 / 5.0 |")
    assert rows["1", "torch cpu fp32"].endswith("| 5.0 / 5.0 / 5.0 | 10.0 / 10.0 / 10.0 |")
    assert rows["2", "onnxruntime cpu fp32"].endswith("| 12.5 / 12.5 / 12.5 | 12.5 / 12.5 / 12.5 |")
    assert bench_encoder.int8_table(runs, peaks, [1, 2])[3] == "| m | 1 | 1 | 10.0 | 20.0 | 2.00x | 20.0 | 5.0 |"
    scaling = bench_encoder.scaling_lines(runs, [1, 2])[1:]
    assert len(scaling) == 3 and all(line.endswith("images/s b1 1.25, b4 1.25, b16 1.25") for line in scaling)
    assert bench_encoder.torch_ratio_lines(runs)[1].endswith("images/s b1 2.00, b4 2.00, b16 2.00")
