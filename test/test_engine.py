"""The Encoder contract, the ONNX export and its cache, and ONNX Runtime vs torch parity on real images.

Real images from the three data sets (different sizes, so the shared preprocessing is exercised),
the real EfficientNet-Lite0 weights, and the random-weight ViT-S/14 test preset. Each model is built
once per module and shared by its torch and ONNX Runtime encoders to keep the suite short.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vpr_core import cli
from vpr_core.data.images import read_rgb
from vpr_core.engine import EncoderConfig, create_encoder, ort_backend
from vpr_core.engine.onnx_description import INPUT_NAME, OUTPUT_NAMES, description_path
from vpr_core.engine.onnx_export import export_onnx, stale_reason

PRESETS = ("lite0", "lite0-mix", "vits14-test")
IMAGE_FILES = (
    "corridor/query/0000010.jpg", "corridor/ref/0000060.jpg",
    "nordland_tiny/summer/images-01000.png", "nordland_tiny/winter/images-20000.png",
    "rtabmap_loop/images/0005.jpg", "rtabmap_loop/images/0047.jpg",
)


@pytest.fixture(scope="module")
def real_images(data_dir) -> list[np.ndarray]:
    return [read_rgb(data_dir / name) for name in IMAGE_FILES]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_cache")


pytestmark = pytest.mark.usefixtures("module_torch_threads")  # model building too, not only the tests


@pytest.fixture(scope="module")
def lite0_torch(cache_dir):
    return create_encoder(EncoderConfig(preset="lite0", backend="torch", device="cpu", max_batch=4, threads=1,
                                        cache_dir=str(cache_dir)))


@pytest.fixture(scope="module")
def lite0_ort(cache_dir, lite0_torch):
    config = EncoderConfig(preset="lite0", backend="onnxruntime", device="cpu", max_batch=4, threads=1,
                           cache_dir=str(cache_dir))
    return ort_backend.create(config, model=lite0_torch.model)


@pytest.fixture(scope="module", params=PRESETS)
def encoders(request, cache_dir, lite0_torch, lite0_ort):
    """(torch encoder, ONNX Runtime encoder) of one preset, both fp32 on the CPU, sharing one model."""
    if request.param == "lite0":
        return lite0_torch, lite0_ort
    reference = create_encoder(EncoderConfig(preset=request.param, backend="torch", device="cpu", max_batch=4,
                                             threads=1, cache_dir=str(cache_dir)))
    onnx_config = EncoderConfig(preset=request.param, backend="onnxruntime", device="cpu", max_batch=4, threads=1,
                                cache_dir=str(cache_dir))
    return reference, ort_backend.create(onnx_config, model=reference.model)


def bit_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of equal bits per row of two packed code arrays."""
    return (np.unpackbits(a, axis=1) == np.unpackbits(b, axis=1)).mean(axis=1)


def test_onnxruntime_matches_torch_on_real_images(encoders, real_images):
    reference, onnx_encoder = encoders
    codes_t, desc_t = reference.encode(real_images)
    codes_o, desc_o = onnx_encoder.encode(real_images)
    n, bits, dim = len(real_images), reference.bits, reference.dim
    assert codes_o.shape == codes_t.shape == (n, bits // 8) and codes_o.dtype == np.uint8
    assert desc_o.shape == desc_t.shape == (n, dim) and desc_o.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc_o, axis=1), 1.0, atol=1e-5)
    cosine = (desc_o * desc_t).sum(axis=1)
    assert cosine.min() >= 0.999, f"{reference.model_config.preset}: cosine per image {cosine}"
    agreement = bit_agreement(codes_o, codes_t)
    assert agreement.min() >= 0.99, f"{reference.model_config.preset}: bit agreement per image {agreement}"
    # Different places must not collapse to one descriptor (a constant output would pass the above).
    assert (desc_t @ desc_t.T)[~np.eye(n, dtype=bool)].max() < 0.9999


def test_encoders_expose_the_contract(encoders):
    reference, onnx_encoder = encoders
    model_config = reference.model.config
    for encoder in encoders:
        assert encoder.fingerprint == model_config.fingerprint()
        assert len(encoder.fingerprint) == 64
        assert (encoder.bits, encoder.dim) == (model_config.bits, model_config.dim)
        assert encoder.batch_dependent is False
    assert onnx_encoder.backend == "onnxruntime" and reference.backend == "torch"
    assert onnx_encoder.providers == ["CPUExecutionProvider"]


def test_split_batches_and_input_forms_give_the_same_result(lite0_ort, real_images):
    onnx_encoder = lite0_ort
    codes_all, desc_all = onnx_encoder.encode(real_images)  # 6 images, max_batch 4: split 4 + 2
    single = [onnx_encoder.encode([image]) for image in real_images]
    np.testing.assert_allclose(desc_all, np.concatenate([d for _, d in single]), atol=1e-5)
    assert bit_agreement(codes_all, np.concatenate([c for c, _ in single])).min() >= 0.99
    same_size = real_images[4:6]
    codes_list, desc_list = onnx_encoder.encode(same_size)
    codes_stack, desc_stack = onnx_encoder.encode(np.stack(same_size))
    np.testing.assert_array_equal(codes_list, codes_stack)
    np.testing.assert_array_equal(desc_list, desc_stack)


def test_exported_graph_is_plain_onnx_with_dynamic_batch(encoders):
    reference, onnx_encoder = encoders
    model = onnx.load(onnx_encoder.onnx_path)
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"Resize", "Upsample"}, "the graph interpolates (positional embeddings must be fixed)"
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}, "custom-domain operators"
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    h, w = reference.model_config.image_size
    assert graph_input.name == INPUT_NAME and dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [3, h, w]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    description = json.loads(description_path(onnx_encoder.onnx_path).read_text())
    assert description["fingerprint"] == reference.fingerprint
    assert description["inputs"][0]["shape"] == ["batch", 3, h, w]
    assert description["preprocessing"]["mean"] == list(reference.model_config.mean)
    assert description["check"]["min_descriptor_cosine"] >= 0.999
    # Exporting must leave the shared model in inference mode (the exporter restores the training flag
    # of what it is given; lite0-mix has dropout, so a model left training would change its output).
    assert not any(module.training for module in reference.model.modules())


def test_second_encoder_reuses_the_export_and_a_stale_one_is_refused(lite0_torch, lite0_ort, cache_dir, caplog):
    path = lite0_ort.onnx_path
    stamp = path.stat().st_mtime_ns
    config = EncoderConfig(preset="lite0", backend="onnxruntime", device="cpu", cache_dir=str(cache_dir))
    with caplog.at_level("INFO", logger="vpr_core.engine"):
        again = ort_backend.create(config, model=lite0_torch.model)
    assert again.onnx_path == path and path.stat().st_mtime_ns == stamp
    assert "reusing the ONNX export" in caplog.text
    model_config = lite0_torch.model_config
    assert stale_reason(path, model_config, "fp32") is None
    assert "graph_precision" in stale_reason(path, model_config, "fp16")
    assert "fingerprint" in stale_reason(path, dataclasses.replace(model_config, seed=1), "fp32")
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-100])
        assert "checksum" in stale_reason(path, model_config, "fp32")
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
    (np.zeros((2, 32, 32, 4), np.uint8), "3 channels"),
    (np.zeros((32, 32, 3), np.uint8), r"images\[None\]"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    ([], "empty"),
    ([np.zeros((32, 32, 3), np.uint8), "frame.jpg"], r"images\[1\] is a str"),
    ([np.zeros((32, 32), np.uint8)], r"images\[0\] must be \[H, W, 3\]"),
    ([np.zeros((0, 32, 3), np.uint8)], "no pixels"),
    ("frame.jpg", "numpy array or a list"),
])
def test_bad_input_is_refused_with_what_is_wrong(lite0_torch, images, message):
    before = [np.copy(a) for a in images] if isinstance(images, list) else np.copy(images)
    with pytest.raises(ValueError, match=message):
        lite0_torch.encode(images)
    if isinstance(images, np.ndarray):
        np.testing.assert_array_equal(images, before)


def test_fp16_graph_keeps_the_fp16_contract(encoders, real_images, tmp_path):
    """The graph behind the GPU backends' fp16, run here by ONNX Runtime's CPU fp16 kernels."""
    reference, _ = encoders
    path = tmp_path / "model-fp16.onnx"
    description = export_onnx(reference.model, path, precision="fp16")
    assert description["graph_precision"] == "fp16" and description["fingerprint"] == reference.fingerprint
    model = onnx.load(path)
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in model.graph.initializer}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # callers unchanged
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = real_images[::2]  # one per data set: ONNX Runtime's CPU fp16 kernels are slow
    logits, desc = session.run(list(OUTPUT_NAMES), {INPUT_NAME: reference.preprocess(images)})
    codes_t, desc_t = reference.encode(images)
    # The contract for fp16 backends: cosine > 0.99, < 1% of bits differ.
    assert (desc * desc_t).sum(axis=1).min() > 0.99
    assert bit_agreement(np.packbits(logits >= 0, axis=1), codes_t).min() >= 0.99


def test_export_from_the_command_line(tmp_path, lite0_torch, capsys):
    out = tmp_path / "export"
    assert cli.main(["export", "--preset", "lite0", "--out", str(out)]) == 0
    onnx_path = out / "model-fp32.onnx"
    printed = capsys.readouterr().out
    assert str(onnx_path) in printed and lite0_torch.fingerprint in printed
    description = json.loads((out / "model-fp32.json").read_text())
    assert description["fingerprint"] == lite0_torch.fingerprint and description["onnx_file"] == onnx_path.name
    assert description["model_config"]["preset"] == "lite0"
    onnx.checker.check_model(onnx.load(onnx_path), full_check=True)


def test_export_refuses_a_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "no_such_checkpoint"
    assert cli.main(["export", "--checkpoint", str(missing), "--out", str(tmp_path / "out")]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
