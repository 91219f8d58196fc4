"""Where a slam map lives: the configured path, or a temporary directory removed at exit, and the
name an old map is renamed to when a fresh one starts there."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path


def aside_name(path: Path) -> Path:
    """`<path>.<time>`, with a counter when that is taken: two resets within one second must not
    rename one map onto the other."""
    stem = f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = path.with_name(stem), 1
    while candidate.exists():
        candidate, n = path.with_name(f"{stem}-{n}"), n + 1
    return candidate


def memory_map_dir() -> Path:
    """Without map.slam_path the keyframes still go through MapDB (one code path), in a temporary
    directory that is removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="vpr_slam_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path / "map"
