"""`manifest.json`: the commit record of a map.

Everything a reader trusts is named here (counts, checksums, the index file of this generation), and
the file is replaced atomically, so a map's state is exactly the last manifest that was renamed into
place. `generation` counts commits; a writer refuses to commit over a generation it did not load.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vpr_core.mapdb.arrays import ROWS_PER_BLOCK
from vpr_core.mapdb.errors import MapError
from vpr_core.fsio import atomic_write_bytes

SCHEMA_VERSION = 1
FORMAT = "vpr_ros map"
MANIFEST = "manifest.json"
CODES = "codes.npy"
DESC = "desc.npy"
PLACES = "places.sqlite"

_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "schema_version": int,
    "generation": int,
    "created": str,
    "modified": str,
    "fingerprint": str,
    "encoder_config": dict,
    "bits": int,
    "dim": int,
    "count": int,
    "frame_id": str,
    "checksums": dict,
    "index": (dict, type(None)),
}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_manifest(
    *, fingerprint: str, encoder_config: dict, bits: int, dim: int, frame_id: str
) -> dict[str, Any]:
    if not isinstance(fingerprint, str) or not fingerprint:
        raise MapError("fingerprint must be a non-empty str (the encoder's fingerprint)")
    if not isinstance(encoder_config, dict):
        raise MapError(f"encoder_config must be a dict, got {type(encoder_config).__name__}")
    try:
        json.dumps(encoder_config)
    except (TypeError, ValueError) as exc:
        raise MapError(f"encoder_config must be JSON-serialisable: {exc}") from exc
    if not isinstance(bits, int) or bits <= 0 or bits % 8:
        raise MapError(f"bits must be a positive multiple of 8, got {bits!r}")
    if not isinstance(dim, int) or dim <= 0:
        raise MapError(f"dim must be a positive int, got {dim!r}")
    if not isinstance(frame_id, str) or not frame_id:
        raise MapError("frame_id must be a non-empty str")
    stamp = now_iso()
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "generation": 0,
        "created": stamp,
        "modified": stamp,
        "fingerprint": fingerprint,
        "encoder_config": encoder_config,
        "bits": bits,
        "dim": dim,
        "count": 0,
        "frame_id": frame_id,
        "checksums": {"algorithm": "crc32", "rows_per_block": ROWS_PER_BLOCK, CODES: [], DESC: []},
        "index": None,
        "adaptation": None,
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(directory / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse and type-check the manifest; each failure names manifest.json and the field."""
    if not directory.exists():
        raise MapError(f"map directory {directory} does not exist")
    if not directory.is_dir():
        raise MapError(f"{directory} is not a directory (a map is a directory with {MANIFEST})")
    path = directory / MANIFEST
    if not path.is_file():
        raise MapError(
            f"{MANIFEST} is missing in {directory}: not a map, or a map whose first save never completed"
        )
    try:
        m = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MapError(f"{MANIFEST} in {directory} is not valid JSON: {exc}") from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise MapError(f"{MANIFEST} in {directory} is not a {FORMAT!r} manifest")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise MapError(
            f"{MANIFEST} in {directory} has schema version {m.get('schema_version')!r}; "
            f"this code reads {SCHEMA_VERSION}"
        )
    for key, typ in _TYPES.items():
        if key not in m:
            raise MapError(f"{MANIFEST} in {directory} lacks the field {key!r}")
        if not isinstance(m[key], typ) or (typ is int and isinstance(m[key], bool)):
            raise MapError(
                f"{MANIFEST} in {directory}: field {key!r} has the wrong type ({type(m[key]).__name__})"
            )
    if m["bits"] <= 0 or m["bits"] % 8 or m["dim"] <= 0 or m["count"] < 0:
        raise MapError(
            f"{MANIFEST} in {directory}: bits={m['bits']}, dim={m['dim']}, count={m['count']} are not valid"
        )
    sums = m["checksums"]
    if sums.get("algorithm") != "crc32" or sums.get("rows_per_block") != ROWS_PER_BLOCK:
        raise MapError(
            f"{MANIFEST} in {directory}: unsupported checksum scheme "
            f"{sums.get('algorithm')!r}/{sums.get('rows_per_block')!r}"
        )
    for name in (CODES, DESC):
        if not isinstance(sums.get(name), list) or not all(isinstance(c, int) for c in sums[name]):
            raise MapError(f"{MANIFEST} in {directory}: checksums of {name} are missing or malformed")
    return m
