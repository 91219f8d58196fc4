"""Rules for numeric options and the one way a refusal reaches the user.

The node's parameters (`vpr_ros.parameters`) and the `vpr` command's options take the same values
(top-k, score thresholds, batch sizes, threads), so they share these rules: a value the node refuses
at start is one the CLI refuses too, with the same words. ROS-free on purpose: vpr_core never imports
rclpy, and vpr_ros imports from here.

A refusal (a bad option, a missing file, an unusable map, a backend that is not installed) is one
line `<prog>: error: <what to change>` and exit code 2, never a traceback: `refusal_line` makes the
line from any of the package's errors and `REFUSALS` names the error families that are refusals.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable

# None when the value is acceptable, else the reason, worded to follow the value ("0 must be >= 1").
Rule = Callable[[Any], "str | None"]

# The package's own errors all derive from these (MapError, DataError, WeightsError, ParameterError:
# ValueError; BackendUnavailable, ExportError: RuntimeError; missing or unwritable files: OSError).
# Anything else (TypeError, KeyError, ...) is a bug and keeps its traceback.
REFUSALS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)

EXIT_REFUSED = 2  # argparse's own exit code for bad arguments, and the node's for a bad parameter


def one_of(choices: tuple[str, ...]) -> Rule:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def at_least(low: float) -> Rule:
    return lambda v: None if v >= low else f"must be >= {low}"


def between(low: float, high: float) -> Rule:
    return lambda v: None if (math.isfinite(v) and low <= v <= high) else f"must be in [{low}, {high}]"


# Shared by node parameters and CLI options of the same meaning.
COUNT = at_least(1)            # top-k, batch sizes, pool sizes: at least one
THREADS = at_least(0)          # 0 lets the library choose
NON_NEGATIVE = at_least(0.0)   # intervals and distances
COSINE = between(-1.0, 1.0)    # score thresholds on unit descriptors


def argument(kind: type, rule: Rule) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses ``kind`` and applies ``rule``, so that
    ``--top-k 0`` is refused as "argument --top-k: 0 must be >= 1" before anything is loaded."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        problem = rule(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{value!r} {problem}")
        return value

    parse.__name__ = kind.__name__
    return parse


def refusal_line(exc: BaseException) -> str:
    """The error as one line: a multi-line message is joined, so nothing of the reason is cut off."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def refuse(prog: str, exc: BaseException) -> int:
    """Prints ``<prog>: error: <one line>`` to stderr and returns the exit code of a refusal."""
    print(f"{prog}: error: {refusal_line(exc)}", file=sys.stderr)
    return EXIT_REFUSED


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one line (argparse prints its whole usage first, which
    buries the reason); `--help` still shows the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_REFUSED, f"{self.prog}: error: {message} (--help lists the options)\n")
