"""The ``vpr`` command.

Each sub-command lives in the module of its pipeline stage (hloc style), which exposes
``configure_parser(parser)`` and ``run(args) -> int``; this file only maps names to modules, so a
stage stays usable as a function, as ``python -m <module>`` and from here. Modules are imported only
when their sub-command is chosen, which keeps ``vpr --version`` fast and free of torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Sequence

from vpr_core import __version__
from vpr_core.options import REFUSALS, OneLineParser, refuse

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "build-map": ("vpr_core.build_map", "build a map database from images or a bag"),
    "replay": ("vpr_core.replay", "run the node's pipeline over a bag offline"),
    "eval": ("vpr_core.eval.evaluate", "Recall@N of float-only vs two-stage search on a benchmark, latency, report PNG"),
    "info": ("vpr_core.info", "parameters per part, sizes and fingerprint of model presets or a checkpoint"),
    "eval-loops": ("vpr_core.eval.loops", "loop-closure precision/recall on a sequence with ground truth: PR curve, recall at 100% precision"),
    "export": ("vpr_core.export", "the encoder as ONNX (+ JSON description), and a TensorRT engine with --trt"),
    "train": ("vpr_core.train.command", "train the heads on cached backbone features (SelaVPR++ losses, SAGE batches)"),
    "add-local": ("vpr_core.add_local", "store FoL++ local features in an existing map (local re-ranking)"),
    "train-local": ("vpr_core.train.local_train", "train the FoL++ local branch on cached backbone features"),
    "select": ("vpr_core.eval.select_default", "score candidate models on every real set (Corridor, rtabmap_loop retrieval + loops, Nordland val) and pick the default by the cross-domain rule"),
    "fuse": ("vpr_core.fuse", "a trained mix checkpoint plus a frozen GeM branch as one fused checkpoint (the default model)"),
    "import": ("vpr_core.import_released", "a released SelaVPR++ or SAGE training checkpoint + official DINOv2 weights as a checkpoint directory"),
    "map": ("vpr_core.mapstore.command", "push/pull a map between a directory and a Milvus collection, info, serve a Milvus Lite file"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="vpr",
        description="Visual place recognition: build maps, replay bags, evaluate, export, train.",
    )
    parser.add_argument("--version", action="version", version=f"vpr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text.replace("%", "%%"), add_help=False)  # help is %-formatted
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name, rest = argv[0], argv[1:]
    return run_module(importlib.import_module(COMMANDS[name][0]), f"vpr {name}", rest, COMMANDS[name][1])


def run_module(module: ModuleType, prog: str, argv: Sequence[str] | None = None,
               description: str | None = None) -> int:
    """A stage module's command line: its `configure_parser` and `run`. The same for `vpr COMMAND`
    and for `python -m vpr_core.<module>`, so the two never drift apart.

    Every refusal of every command ends here: a bad argument (argparse), or one of the package's
    errors from `run` (a missing file, an unusable map, a backend that is not installed) becomes
    one line ``<prog>: error: <reason>`` and exit code 2, instead of a traceback.
    """
    parser = OneLineParser(prog=prog, description=description or (module.__doc__ or "").splitlines()[0])
    module.configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return int(module.run(args) or 0)
    except REFUSALS as exc:
        return refuse(prog, exc)


if __name__ == "__main__":
    sys.exit(main())
