"""Encoder configuration, the backend registry and its ``auto`` rule, ONNX Runtime session settings.

The ``auto`` rule is checked against this machine's real probes, and (with the probes replaced) for
the GPU machines it is written for. No model is built here.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from vpr_core.engine import BACKENDS, EncoderConfig, create_encoder, registry, resolve_backend
from vpr_core.engine.errors import BackendUnavailable
from vpr_core.engine.ort_backend import execution_providers
from vpr_core.engine.ort_session import CPU, CUDA, TENSORRT, session_options


@pytest.mark.parametrize("fields, message", [
    ({"backend": "openvino"}, "backend must be one of"),
    ({"device": "gpu"}, "device must be one of"),
    ({"precision": "int4"}, "precision must be one of"),
    ({"max_batch": 0}, "max_batch must be >= 1"),
    ({"max_batch": 2.5}, "max_batch must be an integer"),
    ({"threads": -1}, "threads must be >= 0"),
    ({"preset": "", "checkpoint": ""}, "give a preset or a checkpoint"),
    ({"precision": "fp16", "device": "cpu", "backend": "onnxruntime"}, "needs a GPU backend"),
])
def test_bad_config_is_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**fields)


def test_config_defaults_are_the_contract():
    config = EncoderConfig()
    assert (config.preset, config.backend, config.device, config.precision) == ("lite0", "auto", "auto", "fp32")
    assert config.max_batch == 8 and config.threads == 0 and not config.cuda_graphs and not config.force_rebuild


def test_cache_dir_from_field_then_environment_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("VPR_CACHE_DIR", raising=False)
    assert EncoderConfig().resolved_cache_dir() == Path.home() / ".cache" / "vpr_ros"
    monkeypatch.setenv("VPR_CACHE_DIR", str(tmp_path / "env"))
    assert EncoderConfig().resolved_cache_dir() == tmp_path / "env"
    assert EncoderConfig(cache_dir=str(tmp_path / "field")).resolved_cache_dir() == tmp_path / "field"


def test_registry_names_the_three_backends():
    assert set(BACKENDS) == {"torch", "onnxruntime", "tensorrt"}


def test_auto_on_this_machine_follows_its_real_probes():
    import importlib.util

    import torch

    has_trt = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
    expected = "tensorrt" if has_trt else "onnxruntime"
    assert resolve_backend(EncoderConfig()) == expected
    assert resolve_backend(EncoderConfig(device="cpu")) == "onnxruntime"


@pytest.mark.parametrize("trt, cuda, ort_cuda, precision, expected", [
    (True, True, True, "fp16", "tensorrt"),
    (True, False, False, "fp32", "onnxruntime"),   # tensorrt without a GPU
    (False, True, True, "fp16", "onnxruntime"),    # onnxruntime-gpu runs the fp16 graph
    (False, True, False, "fp16", "torch"),         # only torch can do fp16 here
    (False, False, False, "fp32", "onnxruntime"),
    (True, True, True, "bf16", "torch"),           # bf16 is torch-only
])
def test_auto_rule(monkeypatch, trt, cuda, ort_cuda, precision, expected):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *rest):
        if name == "tensorrt":
            return object() if trt else None
        return real_find_spec(name, *rest)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(registry, "cuda_available", lambda: cuda)
    monkeypatch.setattr(registry, "ort_has_cuda", lambda: ort_cuda)
    assert resolve_backend(EncoderConfig(precision=precision)) == expected


def test_session_options_are_set_for_latency():
    options = session_options(threads=3)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert session_options().intra_op_num_threads == 0  # library default


def test_providers_cpu_only(tmp_path):
    assert execution_providers(EncoderConfig(), (224, 224), tmp_path, [CPU]) == [CPU]
    assert execution_providers(EncoderConfig(device="cpu"), (224, 224), tmp_path, [CUDA, CPU]) == [CPU]
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime-gpu"):
        execution_providers(EncoderConfig(device="cuda"), (224, 224), tmp_path, [CPU])
    with pytest.raises(ValueError, match="needs a GPU"):
        execution_providers(EncoderConfig(precision="fp16"), (224, 224), tmp_path, [CPU])
    with pytest.raises(ValueError, match="bf16"):
        execution_providers(EncoderConfig(precision="bf16", device="cuda"), (224, 224), tmp_path, [CUDA, CPU])


def test_providers_gpu_chain_with_tensorrt_profile(tmp_path):
    assert execution_providers(EncoderConfig(), (322, 322), tmp_path, [CUDA, CPU]) == [CUDA, CPU]
    chain = execution_providers(EncoderConfig(precision="fp16", max_batch=6), (322, 322), tmp_path,
                                [TENSORRT, CUDA, CPU])
    (name, options), *rest = chain
    assert name == TENSORRT and rest == [CUDA, CPU]
    assert options["trt_fp16_enable"] is True
    assert options["trt_profile_max_shapes"] == "images:6x3x322x322"
    assert options["trt_profile_min_shapes"] == "images:1x3x322x322"
    assert options["trt_engine_cache_path"] == str(tmp_path / "ort_tensorrt")


def test_cuda_device_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the error path cannot occur")
    with pytest.raises(BackendUnavailable, match="sees no CUDA GPU"):
        create_encoder(EncoderConfig(backend="torch", device="cuda"))
