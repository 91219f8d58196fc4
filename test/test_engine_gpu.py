"""GPU paths of the torch and ONNX Runtime backends against the CPU fp32 reference.

They run only where torch sees a CUDA GPU (and, for ONNX Runtime, where it has its CUDA provider);
elsewhere they are reported as skipped with the reason.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vpr_core.data.images import read_rgb
from vpr_core.engine import EncoderConfig, create_encoder, ort_backend, torch_backend

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason=f"needs a CUDA GPU (torch {torch.__version__} sees none)")
needs_ort_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason=f"needs a CUDA GPU and onnxruntime-gpu (providers here: {ort.get_available_providers()})")

MIN_COSINE = {"fp32": 0.999, "fp16": 0.99, "bf16": 0.99}


@pytest.fixture(scope="module")
def reference(data_dir):
    names = ("corridor/query/0000010.jpg", "nordland_tiny/winter/images-20000.png", "rtabmap_loop/images/0005.jpg",
             "rtabmap_loop/images/0047.jpg")
    images = [read_rgb(data_dir / name) for name in names]
    encoder = create_encoder(EncoderConfig(preset="lite0", backend="torch", device="cpu"))
    return images, encoder.encode(images)


def check_against(reference, codes, desc, precision):
    _, (codes_ref, desc_ref) = reference
    assert (desc * desc_ref).sum(axis=1).min() >= MIN_COSINE[precision]
    assert (np.unpackbits(codes, axis=1) == np.unpackbits(codes_ref, axis=1)).mean(axis=1).min() >= 0.99


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_torch_cuda_matches_cpu(reference, precision, cuda_graphs):
    images = reference[0]
    encoder = torch_backend.create(EncoderConfig(preset="lite0", backend="torch", device="cuda",
                                                 precision=precision, cuda_graphs=cuda_graphs, max_batch=4))
    codes, desc = encoder.encode(images)
    check_against(reference, codes, desc, precision)
    codes_again, desc_again = encoder.encode(images)  # a replayed graph gives the same result
    np.testing.assert_allclose(desc_again, desc, atol=1e-6)


@needs_ort_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnxruntime_cuda_matches_cpu(reference, tmp_path, precision):
    encoder = ort_backend.create(EncoderConfig(preset="lite0", backend="onnxruntime", device="cuda",
                                               precision=precision, cache_dir=str(tmp_path)))
    assert encoder.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    check_against(reference, *encoder.encode(reference[0]), precision)
