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
from typing import Sequence

from vpr_core import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpr",
        description="Visual place recognition: build maps, replay bags, evaluate, export, train.",
    )
    parser.add_argument("--version", action="version", version=f"vpr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        args = parser.parse_args(argv)
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"vpr {name}", description=COMMANDS[name][1])
    module.configure_parser(sub_parser)
    return int(module.run(sub_parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
