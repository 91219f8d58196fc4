"""Option groups that several `vpr` commands share, and the values they turn into.

Here rather than in one command's module, so that a command takes the model options without
importing another command (and everything that one needs), and so that the options of the same
meaning read the same in every command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vpr_core.adapt import ADAPT_METHODS, AdaptConfig
from vpr_core.choices import BACKEND_CHOICES, PRECISIONS
from vpr_core.engine.config import EncoderConfig
from vpr_core.keyframes import KeyframeConfig
from vpr_core.options import COSINE, COUNT, NON_NEGATIVE, THREADS, argument

_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
# The default model of the CLI, the node and the demo: frozen Lite0 GeM fused with the Nordland-trained
# mixing heads, chosen across domains by `vpr select` (README "Choosing the default model").
DEFAULT_CHECKPOINT = _CHECKPOINTS / "lite0-fused"
# The Nordland-trained mixing heads alone: for routes driven again along the same track.
NORDLAND_CHECKPOINT = _CHECKPOINTS / "lite0-nordland"


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options every offline command shares."""
    group = parser.add_argument_group("model (default: checkpoints/lite0-fused, frozen Lite0 GeM fused with the Nordland-trained heads)")
    group.add_argument("--preset", default="", help="model preset with its untrained heads, e.g. lite0")
    group.add_argument("--checkpoint", default="", help="head checkpoint directory written by `vpr train`")
    group.add_argument("--backbone-weights", default="", help="local path of the backbone weights")
    group.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    group.add_argument("--threads", type=argument(int, THREADS), default=0, help="inference threads (0: library default)")
    group.add_argument("--precision", default="fp32", choices=PRECISIONS,
                       help="fp32; int8: the graph quantized for ONNX Runtime on the CPU (needs --calibration; its "
                            "maps are its own); fp16/bf16 on a GPU")
    group.add_argument("--calibration", default="", metavar="SOURCE",
                       help="int8 calibration frame sources separated by ';', e.g. the frames the map is built from")
    group.add_argument("--calibration-frames", type=argument(int, COUNT), default=32,
                       help="int8 calibration frames spread evenly over the sources (default 32)")


def encoder_config(args: argparse.Namespace) -> EncoderConfig:
    """The model the options name; neither --preset nor --checkpoint means the node's default model,
    so a map built without model options is one the node's default configuration can localize in."""
    checkpoint = args.checkpoint
    if not checkpoint and not args.preset:
        if not DEFAULT_CHECKPOINT.is_dir():
            raise FileNotFoundError(f"the default model {DEFAULT_CHECKPOINT} is missing (it ships with the "
                                    "source tree); pass --checkpoint DIR or --preset NAME")
        checkpoint = str(DEFAULT_CHECKPOINT)
    return EncoderConfig(preset=args.preset, checkpoint=checkpoint, backbone_weights=args.backbone_weights,
                         backend=args.backend, threads=args.threads, precision=args.precision,
                         calibration=args.calibration, calibration_frames=args.calibration_frames)


def add_keyframe_arguments(parser: argparse.ArgumentParser) -> None:
    """When a frame becomes a place (the selector of the node's slam mode)."""
    group = parser.add_argument_group("keyframes (default: every frame)")
    group.add_argument("--min-interval-s", type=argument(float, NON_NEGATIVE), default=0.0,
                       help="least time between places")
    group.add_argument("--min-distance-m", type=argument(float, NON_NEGATIVE), default=0.0,
                       help="least travel between places (needs poses)")
    group.add_argument("--max-similarity", type=argument(float, COSINE), default=1.0,
                       help="skip frames whose cosine to the last place is above this (appearance change)")


def keyframe_config(args: argparse.Namespace) -> KeyframeConfig:
    return KeyframeConfig(args.min_interval_s, args.min_distance_m, args.max_similarity)


def add_adapt_arguments(parser: argparse.ArgumentParser, default: str | None, default_note: str) -> None:
    """The map adaptation (vpr_core.adapt): whitening and ITQ codes fitted on the map, no labels.
    ``default`` None leaves the choice to the command (``default_note`` says what it picks)."""
    group = parser.add_argument_group("map adaptation (fitted on the map's own descriptors, no labels)")
    group.add_argument("--adapt", default=default, choices=ADAPT_METHODS,
                       help="none: the model's outputs; whiten: PCA-whitened descriptors; itq: whitened descriptors "
                            f"and ITQ binary codes (Gong & Lazebnik 2011) instead of the model's ({default_note})")
    group.add_argument("--adapt-shrinkage", type=argument(float, NON_NEGATIVE), default=AdaptConfig.shrinkage,
                       help="ridge added to the eigenvalues before whitening, relative to their mean "
                            f"(default {AdaptConfig.shrinkage})")


def adapt_config(args: argparse.Namespace, method: str | None = None) -> AdaptConfig:
    """The adaptation the options ask for; ``method`` replaces --adapt (a command's resolved default)."""
    return AdaptConfig(method=method or args.adapt, shrinkage=args.adapt_shrinkage)
