"""The map's optional search index file: its manifest entry, checks and checksummed read.

Each generation that stores an index writes ``index.<gen>.faiss``; the manifest names the one in
force, and files no manifest names (an older generation, or a writer killed before its commit) are
removed.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from vpr_core.mapdb.errors import MapError
from vpr_core.fsio import fsync_dir
from vpr_core.mapdb.manifest import MANIFEST

INDEX_KEYS: dict[str, type] = {
    "file": str,
    "kind": str,
    "params": dict,
    "ntotal": int,
    "bytes": int,
    "crc32": int,
}


def index_entry(name: str, blob: bytes, kind: str, params: dict, ntotal: int) -> dict[str, Any]:
    """The manifest entry of index file ``name`` holding ``blob``."""
    return {
        "file": name,
        "kind": kind,
        "params": params,
        "ntotal": ntotal,
        "bytes": len(blob),
        "crc32": zlib.crc32(blob),
    }


def remove_unreferenced_indexes(path: Path, entry: dict[str, Any] | None) -> None:
    """Every index file of the map at ``path`` except the one ``entry`` names."""
    keep = None if entry is None else entry["file"]
    for f in path.glob("index.*.faiss"):
        if f.name != keep:
            f.unlink(missing_ok=True)
    fsync_dir(path)


def check_index_entry(path: Path, m: dict[str, Any]) -> None:
    """The index entry of manifest ``m`` (if any) is well-formed and its file has the recorded size."""
    entry = m["index"]
    if entry is None:
        return
    for key, typ in INDEX_KEYS.items():
        if not isinstance(entry.get(key), typ):
            raise MapError(f"{MANIFEST} in {path}: index field {key!r} is missing or has the wrong type")
    if not 0 < entry["ntotal"] <= m["count"]:
        raise MapError(
            f"{MANIFEST} in {path}: index covers {entry['ntotal']} places but the map has {m['count']}"
        )
    file = path / entry["file"]
    if file.name != entry["file"] or not file.is_file():
        raise MapError(f"index file {entry['file']} named by {MANIFEST} is missing in {path}")
    if file.stat().st_size != entry["bytes"]:
        raise MapError(
            f"index file {entry['file']} has {file.stat().st_size} bytes, {MANIFEST} says {entry['bytes']}"
        )


def read_index_file(path: Path, entry: dict[str, Any]) -> np.ndarray:
    """The index file's bytes as uint8, refused unless size and CRC-32 match ``entry``."""
    blob = (path / entry["file"]).read_bytes()
    if len(blob) != entry["bytes"] or zlib.crc32(blob) != entry["crc32"]:
        raise MapError(
            f"index file {entry['file']} in {path}: checksum mismatch (file damaged or edited)"
        )
    return np.frombuffer(blob, np.uint8)
