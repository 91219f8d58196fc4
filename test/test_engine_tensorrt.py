"""The TensorRT backend: its clear errors everywhere; engine build, cache reuse and parity where it can run.

The engine tests need the ``tensorrt`` package and an NVIDIA GPU; elsewhere they are reported as
skipped with the reason (never as passed).
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from vpr_core import cli
from vpr_core.data.images import read_rgb
from vpr_core.engine import BackendUnavailable, EncoderConfig, create_encoder, trt_backend

HAS_TRT_GPU = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
needs_trt_gpu = pytest.mark.skipif(
    not HAS_TRT_GPU,
    reason=f"needs the tensorrt package and a CUDA GPU (tensorrt importable: "
           f"{importlib.util.find_spec('tensorrt') is not None}, CUDA GPU: {torch.cuda.is_available()})",
)


@pytest.fixture
def without_tensorrt(monkeypatch):
    """Makes ``import tensorrt`` fail as on a machine without it (the real state of CPU machines)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_missing_tensorrt_says_what_to_install(without_tensorrt):
    with pytest.raises(BackendUnavailable) as error:
        create_encoder(EncoderConfig(backend="tensorrt"))
    message = str(error.value)
    assert "pip install tensorrt" in message and "NVIDIA's index" in message
    assert "not available on this machine" in message


@pytest.mark.parametrize("fields, message", [
    ({"device": "cpu", "precision": "fp32"}, "runs on the GPU"),
    ({"precision": "bf16"}, "'fp16' or 'fp32'"),
])
def test_tensorrt_refuses_what_it_cannot_do(fields, message):
    with pytest.raises(ValueError, match=message):
        create_encoder(EncoderConfig(backend="tensorrt", **fields))


def test_export_with_trt_fails_at_once_without_tensorrt(without_tensorrt, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli.main(["export", "--preset", "lite0", "--out", str(out), "--trt"]) == 1
    assert "pip install tensorrt" in capsys.readouterr().err
    assert not out.exists(), "nothing is exported when the engine cannot be built"


@pytest.fixture(scope="module")
def images(data_dir):
    names = ("corridor/query/0000010.jpg", "nordland_tiny/summer/images-01000.png", "rtabmap_loop/images/0047.jpg")
    return [read_rgb(data_dir / name) for name in names]


@needs_trt_gpu
@pytest.mark.parametrize("precision, min_cosine", [("fp32", 0.999), ("fp16", 0.99)])
def test_engine_build_parity_and_reuse(tmp_path, images, caplog, precision, min_cosine):
    reference = create_encoder(EncoderConfig(preset="lite0", backend="torch", device="cuda"))
    codes_ref, desc_ref = reference.encode(images)
    config = EncoderConfig(preset="lite0", backend="tensorrt", precision=precision, max_batch=4,
                           cache_dir=str(tmp_path))
    with caplog.at_level("INFO", logger="vpr_core.engine"):
        encoder = trt_backend.create(config, model=reference.model)
    assert "building the engine" in caplog.text
    codes, desc = encoder.encode(images)
    assert encoder.fingerprint == reference.fingerprint
    assert (desc * desc_ref).sum(axis=1).min() >= min_cosine
    assert (np.unpackbits(codes, axis=1) == np.unpackbits(codes_ref, axis=1)).mean(axis=1).min() >= 0.99
    caplog.clear()
    with caplog.at_level("INFO", logger="vpr_core.engine"):
        again = trt_backend.create(config, model=reference.model)
    assert "reusing engine" in caplog.text and "building" not in caplog.text
    np.testing.assert_allclose(again.encode(images)[1], desc, atol=1e-6)
    caplog.clear()
    with caplog.at_level("INFO", logger="vpr_core.engine"):
        trt_backend.create(EncoderConfig(**{**config.__dict__, "force_rebuild": True}), model=reference.model)
    assert "force_rebuild is set" in caplog.text
