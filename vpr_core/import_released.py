"""``vpr import``: a released SelaVPR++ or SAGE training checkpoint as our checkpoint directory.

The authors' file plus the official DINOv2 weights it was trained on become a directory usable as
``--checkpoint DIR`` everywhere.

The file is read without running code from it (weights-only unpickling, numpy values allowed); the
heads are mapped by key, the file's frozen backbone is checked against the DINOv2 weights given, and
nothing is written unless all of that succeeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpr_core.cli import run_module
from vpr_core.model.checkpoint import save_checkpoint
from vpr_core.model.released import KINDS, import_released


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="FILE",
                        help="the released .pth (SelaVPR++: SelaVPRplusplus_*_rerank.pth; SAGE: its release)")
    parser.add_argument("--backbone-weights", required=True, type=Path, metavar="PATH",
                        help="official DINOv2 weights the model was trained on (.pth, .safetensors or a "
                             "Hugging Face directory); referenced by the checkpoint, not copied")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="checkpoint directory to write (must not exist or be empty)")
    parser.add_argument("--kind", choices=KINDS, help="what the file is; detected from its keys when omitted, "
                        "checked against them when given")
    parser.add_argument("--preset", help="model preset (selavpr++-b, selavpr++-l, sage-b); chosen from the "
                        "backbone width when omitted")


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise FileExistsError(f"--out {args.out} already exists and is not an empty directory; "
                              f"choose another or remove it")
    imported = import_released(args.checkpoint, args.preset, backbone_weights=args.backbone_weights.resolve(),
                               kind=args.kind)
    save_checkpoint(imported.model, args.out)
    epoch = f", epoch {imported.epoch}" if imported.epoch is not None else ""
    print(f"{args.out}  {imported.kind} as preset {imported.model.config.preset!r}{epoch}  "
          f"fingerprint {imported.model.fingerprint()[:12]}")
    for note in imported.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr import"))
