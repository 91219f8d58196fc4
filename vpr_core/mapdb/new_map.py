"""Writing a whole new map: every file in a temporary directory that is then renamed into place,
so the target path holds either its old content or the complete new map."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from vpr_core.mapdb import arrays
from vpr_core.mapdb.errors import MapError
from vpr_core.fsio import exchange_paths, fsync_dir, remove_stale_temporaries, temp_name
from vpr_core.mapdb.manifest import CODES, DESC, PLACES, write_manifest
from vpr_core.mapdb.records import create_store


def write_new_map(
    path: Path, manifest: dict, codes: np.ndarray, desc: np.ndarray, rows: list[tuple], overwrite: bool
) -> Path:
    """Writes the map and returns its absolute path; MapError when it exists and ``overwrite`` is off."""
    path = path.absolute()
    if path.exists() and not overwrite:
        raise MapError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, f".{path.name}")
    tmp = temp_name(path.with_name(f".{path.name}"))
    try:
        tmp.mkdir()
        _, manifest["checksums"][CODES] = arrays.write_new(
            tmp / CODES, np.dtype(np.uint8), codes.shape[1], [codes]
        )
        _, manifest["checksums"][DESC] = arrays.write_new(
            tmp / DESC, np.dtype(np.float16), desc.shape[1], [desc]
        )
        create_store(tmp / PLACES, rows)
        manifest["count"] = len(rows)
        write_manifest(tmp, manifest)
        fsync_dir(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif not exchange_paths(tmp, path):  # tmp now holds the old map, removed below
            old = temp_name(path.with_name(f".{path.name}.old"))
            os.rename(path, old)  # a kill between these two renames leaves no map at `path`
            os.rename(tmp, path)
            shutil.rmtree(old)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
