"""The map's optional FoL++ local features: three arrays per generation
(``local_{desc,rel,pos}.<gen>.npy``), their manifest entry and checks, and the memory maps readers get.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vpr_core.mapdb import arrays
from vpr_core.mapdb.errors import MapError
from vpr_core.fsio import fsync_dir, temp_name
from vpr_core.local_features import LocalFeatures
from vpr_core.mapdb.manifest import MANIFEST

LOCAL_PARTS: dict[str, type] = {"desc": np.float16, "rel": np.float16, "pos": np.int16}
LOCAL_KEYS: dict[str, type] = {"patches": int, "dim": int, "count": int, "fingerprint": str, "files": dict,
                                "checksums": dict}


def flat_local_arrays(
    desc: np.ndarray, rel: np.ndarray, pos: np.ndarray, fingerprint: str, map_size: int
) -> dict[str, np.ndarray]:
    """The local features of the first len(desc) places as the 2-D arrays the files hold; MapError
    when they disagree, do not fit a map of ``map_size`` places or are not finite."""
    try:
        desc, rel, pos = (np.asarray(a) for a in (desc, rel, pos))
        if desc.ndim != 3 or rel.shape != desc.shape[:2] or pos.shape != (*rel.shape, 2):
            raise ValueError(f"local features disagree: desc {desc.shape}, rel {rel.shape}, pos {pos.shape} "
                             f"(want [n, K, d], [n, K], [n, K, 2])")
        if not 0 < len(desc) <= map_size:
            raise ValueError(f"local features for {len(desc)} places; the map holds {map_size}")
        if not (np.isfinite(desc).all() and np.isfinite(rel).all()):
            raise ValueError("local features contain NaN or inf")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError("fingerprint must be a non-empty str (the local branch's fingerprint)")
    except ValueError as exc:
        raise MapError(str(exc)) from None
    n, k, d = desc.shape
    return {"desc": desc.reshape(n, k * d), "rel": rel, "pos": pos.reshape(n, 2 * k)}


def write_local_arrays(path: Path, generation: int, flat: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Writes the arrays under generation-named files (each complete before its final name appears);
    returns the file names and checksums for the manifest entry."""
    files, sums = {}, {}
    for part, dtype in LOCAL_PARTS.items():
        files[part] = f"local_{part}.{generation}.npy"
        tmp = temp_name(path / files[part])
        try:
            _, sums[part] = arrays.write_new(tmp, np.dtype(dtype), flat[part].shape[1], [flat[part]])
            os.replace(tmp, path / files[part])
        finally:
            tmp.unlink(missing_ok=True)
    fsync_dir(path)
    return files, sums


def open_local(path: Path, entry: dict[str, Any] | None) -> LocalFeatures | None:
    """Memory maps of the local features ``entry`` names (None for a map without them)."""
    if entry is None:
        return None
    n, k, d = entry["count"], entry["patches"], entry["dim"]
    maps = {}
    for part, cols in (("desc", k * d), ("rel", k), ("pos", 2 * k)):
        file = path / entry["files"][part]
        header = arrays.read_header(file, entry["files"][part])
        maps[part] = np.memmap(file, dtype=LOCAL_PARTS[part], mode="r", offset=header.offset, shape=(n, cols))
    return LocalFeatures(maps["desc"].reshape(n, k, d), maps["rel"], maps["pos"].reshape(n, k, 2))


def remove_unreferenced_local(path: Path, entry: dict[str, Any] | None) -> None:
    """Every local feature file of the map at ``path`` except those ``entry`` names."""
    keep = set() if entry is None else set(entry["files"].values())
    for f in path.glob("local_*.npy"):
        if f.name not in keep:
            f.unlink(missing_ok=True)
    fsync_dir(path)


def check_local_entry(path: Path, m: dict[str, Any]) -> dict[str, arrays.ArrayHeader]:
    """Headers of the local feature arrays a manifest names (none for a map without them)."""
    entry = m.get("local")
    if entry is None:
        return {}
    for key, typ in LOCAL_KEYS.items():
        if not isinstance(entry.get(key), typ) or (typ is int and isinstance(entry.get(key), bool)):
            raise MapError(f"{MANIFEST} in {path}: local field {key!r} is missing or has the wrong type")
    n, k, d = entry["count"], entry["patches"], entry["dim"]
    if not (0 < n <= m["count"] and k > 0 and d > 0):
        raise MapError(f"{MANIFEST} in {path}: local features of {n} places ({k} patches, {d}-D) do not fit "
                       f"a map of {m['count']} places")
    headers = {}
    for part, cols in (("desc", k * d), ("rel", k), ("pos", 2 * k)):
        name = entry["files"].get(part)
        if not isinstance(name, str) or (path / name).name != name:
            raise MapError(f"{MANIFEST} in {path}: local file of {part!r} is missing or not a plain name")
        sums = entry["checksums"].get(part)
        if not isinstance(sums, list) or len(sums) != arrays.expected_blocks(n):
            raise MapError(f"{MANIFEST} in {path}: checksums of {name} are missing or malformed")
        headers[part] = arrays.read_header(path / name, name)
        arrays.check_layout(path / name, name, headers[part], n, cols, np.dtype(LOCAL_PARTS[part]))
    return headers
