"""``vpr info``: what a model preset or checkpoint is made of.

Prints, per preset (all of them by default) or for a checkpoint, the backbone, input size, code and
descriptor sizes, and the total and trainable parameters of each part. Models are built on the meta
device, so even ViT-L presets are described in a second and without their weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpr_core.cli import run_module
from vpr_core.model.checkpoint import CheckpointError, read_checkpoint_config
from vpr_core.model.config import PRESETS
from vpr_core.model.info import describe


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", action="append", choices=list(PRESETS), metavar="NAME",
                        help=f"a model preset (repeatable; default: all of {', '.join(PRESETS)})")
    parser.add_argument("--checkpoint", type=Path, metavar="DIR",
                        help="a checkpoint directory (written by save_checkpoint); also prints its fingerprint "
                             "and where its backbone weights are expected")


def run(args: argparse.Namespace) -> int:
    blocks = []
    if args.checkpoint is not None:
        try:
            config, description = read_checkpoint_config(args.checkpoint)
        except CheckpointError as exc:
            print(f"vpr info: {exc}", file=sys.stderr)
            return 1
        blocks.append(f"checkpoint {args.checkpoint}\n  fingerprint {description['fingerprint']}\n"
                      f"  backbone weights {description['backbone'].get('weights')}\n" + describe(config))
    if args.preset or args.checkpoint is None:
        blocks += [describe(PRESETS[name]) for name in (args.preset or PRESETS)]
    print("\n\n".join(blocks))
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr info"))
