"""``vpr export``: the encoder as an ONNX file plus a JSON description, and a TensorRT engine with --trt
or a statically quantized INT8 graph for ONNX Runtime on the CPU with --int8.

The JSON says everything a user of the ONNX file needs without our code (tensor names and shapes,
preprocessing, how to read the bits, the fingerprint a map database checks). The engine is built
only where TensorRT and a GPU exist; elsewhere ``--trt`` fails at once with what to install.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vpr_core.choices import GRAPH_PRECISIONS
from vpr_core.cli import run_module
from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.errors import BackendUnavailable, ExportError
from vpr_core.engine.export import export
from vpr_core.engine.local_export import export_local_onnx
from vpr_core.engine.model_source import load_model
from vpr_core.model.local_branch import load_local_branch

LOCAL_ONNX = "model-local-fp32.onnx"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="model preset name (e.g. lite0)")
    source.add_argument("--checkpoint", help="checkpoint directory (safetensors weights + JSON config)")
    parser.add_argument("--backbone-weights", default="", help="local backbone weights file, if the preset needs one")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument("--precision", choices=GRAPH_PRECISIONS,
                        help="graph and engine precision (default: fp32, or fp16 with --trt)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
    parser.add_argument("--trt", action="store_true", help="also build a TensorRT engine (needs tensorrt and a GPU)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch of the engine's profile (default 8)")
    parser.add_argument("--force-rebuild", action="store_true", help="rebuild the engine even if one matches")
    parser.add_argument("--int8", action="store_true",
                        help="also write model-int8.onnx, quantized for the CPU and calibrated on --calibration")
    parser.add_argument("--calibration", default="", metavar="SOURCE",
                        help="--int8 calibration frame sources separated by ';', e.g. 'folder:map_images; "
                             "rosbag:winter_run.mcap': the frames the robot will see")
    parser.add_argument("--calibration-frames", type=int, default=32,
                        help="calibration frames, spread evenly over the sources (default 32)")
    parser.add_argument("--local", type=Path, help="local branch checkpoint: also write model-local-fp32.onnx, "
                        "the graph with global and FoL++ local outputs (fp32, parity-checked)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    precision = args.precision or ("fp16" if args.trt else "fp32")
    try:
        config = EncoderConfig(preset=args.preset or "", checkpoint=args.checkpoint or "",
                               backbone_weights=args.backbone_weights, precision=precision,
                               max_batch=args.max_batch, force_rebuild=args.force_rebuild,
                               calibration=args.calibration, calibration_frames=args.calibration_frames)
        description = export(config, args.out, opset=args.opset, trt=args.trt, int8=args.int8)
        if args.local is not None:
            model = load_model(config)
            local = export_local_onnx(model, load_local_branch(args.local, model), args.out / LOCAL_ONNX, args.opset)
            print(f"{args.out / LOCAL_ONNX}  local branch {local['local_branch']['fingerprint'][:12]}  "
                  f"checks {local['check']}")
    except (ValueError, OSError, ExportError, BackendUnavailable) as exc:  # checkpoint errors are ValueErrors
        print(f"vpr export: error: {exc}", file=sys.stderr)
        return 1
    check = description["check"]
    versus = (f"to fp32 on the calibration images: mean cosine {check['mean_descriptor_cosine']:.4f}, "
              f"code bits equal {100 * check['code_bits_equal']:.1f} %" if args.int8
              else f"min cosine to torch {check['min_descriptor_cosine']:.6f}")
    print(f"{args.out / description['onnx_file']}  fingerprint {description['fingerprint']}  "
          f"inputs {description['inputs'][0]['shape']}  {versus}")
    if "tensorrt" in description:
        print(args.out / description["tensorrt"]["engine_file"])
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr export"))
