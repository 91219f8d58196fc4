"""``vpr fuse``: a trained mix checkpoint plus a frozen GeM branch as one fused checkpoint.

The library function is ``vpr_core.model.fuse.fuse_checkpoint``; the default model
(checkpoints/lite0-fused) is made with

    vpr fuse --checkpoint checkpoints/lite0-nordland --gem-weight 0.95 --out checkpoints/lite0-fused
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpr_core.cli import run_module
from vpr_core.model.checkpoint import CONFIG_FILE, HEADS_FILE
from vpr_core.model.fuse import fuse_checkpoint


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="DIR",
                        help="trained mix checkpoint (e.g. checkpoints/lite0-nordland)")
    parser.add_argument("--gem-weight", required=True, type=float, metavar="W",
                        help="share of the frozen GeM cosine in the fused one, in (0, 1)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help=f"directory to write {CONFIG_FILE} and {HEADS_FILE} to (other files there are kept)")
    parser.add_argument("--backbone-weights", type=Path, metavar="PATH",
                        help="backbone weights, if not where the checkpoint says (same tensors, checked)")


def run(args: argparse.Namespace) -> int:
    model = fuse_checkpoint(args.checkpoint, args.gem_weight, args.out, backbone_weights=args.backbone_weights)
    print(f"{args.out}  preset {model.config.preset!r}, float {model.config.dim}-D, gem_weight "
          f"{model.config.fusion.gem_weight}  fingerprint {model.fingerprint()[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "python -m vpr_core.fuse"))
