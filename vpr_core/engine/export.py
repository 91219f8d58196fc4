"""The files that deploy an encoder, written into one directory: the ONNX graph and its JSON
description, a TensorRT engine, a statically quantized INT8 graph. ``vpr export`` (``vpr_core.export``)
is its command line.

The JSON says everything a user of the ONNX file needs without our code (tensor names and shapes,
preprocessing, how to read the bits, the fingerprint a map database checks). The engine is built
only where TensorRT and a GPU exist; elsewhere it fails at once with what to install.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vpr_core.engine import trt_backend
from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.engine_cache import EngineCache
from vpr_core.engine.int8 import export_int8, load_calibration
from vpr_core.engine.model_source import load_model
from vpr_core.engine.onnx_description import write_description
from vpr_core.engine.onnx_export import export_onnx, graph_precision

log = logging.getLogger(__name__)


def export(config: EncoderConfig, out: Path, opset: int = 17, trt: bool = False, int8: bool = False) -> dict:
    """Writes ``model-<precision>.onnx`` + ``.json`` into ``out`` (and ``engine-<precision>.engine``
    with its key record when ``trt``, ``model-int8.onnx`` from ``config.calibration`` when ``int8``);
    returns the description of the last graph written."""
    if int8 and not config.calibration:
        raise ValueError("--int8 needs --calibration SOURCE: a folder of images or a frame source from the place "
                         "the robot runs")
    if int8 and config.precision != "fp32":
        raise ValueError(f"--int8 quantizes the fp32 graph; drop --precision {config.precision}")
    if trt:  # before the export, which takes a while, so a missing TensorRT fails at once
        trt_backend.check_config(config)
        tensorrt = trt_backend.import_tensorrt()
        trt_backend.require_cuda()
    precision = graph_precision(config.precision)
    onnx_path = out / f"model-{precision}.onnx"
    model = load_model(config)
    description = export_onnx(model, onnx_path, precision, opset)
    log.info("wrote %s (fingerprint %s, min cosine to torch %.6f)", onnx_path, description["fingerprint"],
             description["check"]["min_descriptor_cosine"])
    if trt:
        h, w = description["inputs"][0]["shape"][2:]
        key = trt_backend.engine_key(tensorrt, onnx_path, config.precision, (3, h, w), config.max_batch)
        _, engine_path = trt_backend.cached_engine(tensorrt, EngineCache(out), f"engine-{config.precision}",
                                                   onnx_path, key, force_rebuild=config.force_rebuild)
        description["tensorrt"] = {"engine_file": engine_path.name, "key": key.as_dict()}
        write_description(onnx_path, description)
        log.info("wrote %s (TensorRT %s, %s)", engine_path, key.tensorrt_version, key.gpu_name)
    if int8:
        calibration = load_calibration(config.calibration, config.calibration_frames, model.config)
        description = export_int8(onnx_path, out / "model-int8.onnx", calibration, description)
    return description
