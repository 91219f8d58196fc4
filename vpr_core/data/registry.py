"""Readers chosen by name, and source specs of the form ``[READER:]PATH[?key=value&...]``.

Every reader module defines a ``Config`` dataclass and ``open_source(path, config) -> FrameSource``;
layouts that carry ground truth also define ``open_dataset(path, config) -> EvalDataset``. Modules are
imported only when chosen, so reading an image folder never imports the bag libraries.

A spec is one string because it has to fit in a CLI argument and a launch parameter:
``folder:runs/day1?rate_hz=10``, ``rosbag:drive.mcap?topics=/cam/image_raw``,
``seasons:nordland_tiny?split=test&part=queries``. Without ``READER:`` the layout is detected.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from vpr_core.data.dataset import EvalDataset
from vpr_core.data.frame import DataError, FrameSource

# name -> (module, one-line help)
READERS: dict[str, tuple[str, str]] = {
    "folder": ("vpr_core.data.folder", "image folder in capture order (natural sort of file names)"),
    "vpr_benchmark": (
        "vpr_core.data.utm_name_reader",
        "database/ + queries/ with @UTM_east@UTM_north@...@ file names; positives within a UTM radius",
    ),
    "vpr_bench": ("vpr_core.data.csv_truth_reader", "VPR-Bench layout: query/, ref/, ground_truth.csv"),
    "seasons": (
        "vpr_core.data.seasons",
        "paired season folders with matching file names (Nordland); positives by file index",
    ),
    "rosbag": ("vpr_core.data.rosbag", "rosbag2 (sqlite3, mcap) or ROS 1 bag: Image/CompressedImage topics"),
}

BAG_SUFFIXES = (".bag", ".mcap", ".db3")


@dataclass(frozen=True)
class Reader:
    """A reader module seen through the registry."""

    name: str
    help: str
    config_type: type
    open_source_fn: Callable[[Path, Any], FrameSource]
    open_dataset_fn: Callable[[Path, Any], EvalDataset] | None

    def make_config(self, options: dict[str, Any]) -> Any:
        """The reader's config with ``options`` applied; string values are converted to the field type."""
        return build_config(self.config_type, options, context=f"reader {self.name!r}")

    def open_source(self, path: Path | str, **options: Any) -> FrameSource:
        return self.open_source_fn(Path(path), self.make_config(options))

    def open_dataset(self, path: Path | str, **options: Any) -> EvalDataset:
        if self.open_dataset_fn is None:
            layouts = [name for name in READERS if get_reader(name).open_dataset_fn is not None]
            raise DataError(
                f"reader {self.name!r} has no ground truth, so it cannot be evaluated; "
                f"evaluation layouts: {', '.join(layouts)}"
            )
        return self.open_dataset_fn(Path(path), self.make_config(options))


def get_reader(name: str) -> Reader:
    """The reader registered under ``name``."""
    if name not in READERS:
        raise DataError(f"unknown reader {name!r}; choose one of: {', '.join(READERS)}")
    module_name, help_text = READERS[name]
    module = importlib.import_module(module_name)
    return Reader(
        name=name,
        help=help_text,
        config_type=module.Config,
        open_source_fn=module.open_source,
        open_dataset_fn=getattr(module, "open_dataset", None),
    )


def parse_spec(spec: str | Path) -> tuple[str, Path, dict[str, str]]:
    """Split a source spec into (reader name, path, options); the reader is detected when not named.

    A ``Path`` is taken as a plain path, never parsed for ``READER:`` or ``?options``.
    """
    if isinstance(spec, Path):
        return detect_reader(spec), spec, {}
    text = spec
    name = None
    head, sep, rest = text.partition(":")
    if sep and head in READERS:
        name, text = head, rest
    elif sep and len(head) > 1 and head.isidentifier() and not Path(text).exists():  # not a drive letter
        raise DataError(f"source spec {text!r}: unknown reader {head!r}; choose one of: {', '.join(READERS)}")
    path_text, _, query = text.partition("?")
    if not path_text:
        raise DataError(f"source spec {str(spec)!r} names no path")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise DataError(
            f"source spec {str(spec)!r}: options must look like ?key=value&key=value, got {query!r}"
        ) from None
    path = Path(path_text)
    return name or detect_reader(path), path, options


def detect_reader(path: Path) -> str:
    """Guess the layout of ``path`` from the files it holds."""
    if (path.is_file() and path.suffix.lower() in BAG_SUFFIXES) or (path / "metadata.yaml").is_file():
        return "rosbag"
    if not path.exists():
        raise DataError(f"source {path} does not exist")
    if path.is_file():
        raise DataError(
            f"source {path} is a file but not a bag ({', '.join(BAG_SUFFIXES)}); pass a folder or a bag"
        )
    if (path / "database").is_dir() and (path / "queries").is_dir():
        return "vpr_benchmark"
    if (path / "query").is_dir() and (path / "ref").is_dir():
        return "vpr_bench"
    if (path / "summer").is_dir() and (path / "winter").is_dir():
        return "seasons"
    return "folder"


def open_source(spec: str | Path, **options: Any) -> FrameSource:
    """Open the frames a spec names; keyword options override those in the spec."""
    name, path, spec_options = parse_spec(spec)
    return get_reader(name).open_source(path, **{**spec_options, **options})


def open_dataset(spec: str | Path, **options: Any) -> EvalDataset:
    """Open an evaluation data set (database, queries, positives) that a spec names."""
    name, path, spec_options = parse_spec(spec)
    return get_reader(name).open_dataset(path, **{**spec_options, **options})


def build_config(config_type: type, options: dict[str, Any], *, context: str) -> Any:
    """Instantiate a config dataclass from options; string values are parsed by the field's type."""
    hints = typing.get_type_hints(config_type)
    fields = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise DataError(
            f"{context}: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(fields))}"
        )
    values = {}
    for key, value in options.items():
        values[key] = (
            _convert(value, hints[key], f"{context}: option {key}") if isinstance(value, str) else value
        )
    try:
        return config_type(**values)
    except (TypeError, ValueError) as err:
        raise DataError(f"{context}: {err}") from None


def _convert(text: str, hint: Any, context: str) -> Any:
    """Parse a string option into the annotated type (bool, int, float, str, tuple[str, ...], or Optional)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if args and type(None) in args:
        if text.lower() in ("", "none"):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if hint is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise DataError(f"{context}: expected true or false, got {text!r}")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise DataError(f"{context}: expected {hint.__name__}, got {text!r}") from None
    return text
