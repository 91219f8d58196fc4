"""Writing a whole new map: every file in a temporary directory that is then renamed into place,
so the target path holds either its old content or the complete new map."""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterable, Iterator

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
    with _staging(path) as tmp:
        _, manifest["checksums"][CODES] = arrays.write_new(
            tmp / CODES, np.dtype(np.uint8), codes.shape[1], [codes]
        )
        _, manifest["checksums"][DESC] = arrays.write_new(
            tmp / DESC, np.dtype(np.float16), desc.shape[1], [desc]
        )
        create_store(tmp / PLACES, rows)
        manifest["count"] = len(rows)
        write_manifest(tmp, manifest)
        _publish(tmp, path)
    return path


def rewrite_map(
    path: Path, manifest: dict, codes: Iterable[np.ndarray], desc: Iterable[np.ndarray], files: dict[str, bytes]
) -> None:
    """Replaces the map at ``path`` by one with the same places (places.sqlite and the files its
    manifest's local entry names are copied) and new rows (chunks of codes and descriptors), plus
    ``files`` (name: content); ``manifest`` is the new one, its checksums filled in here."""
    with _staging(path) as tmp:
        _, manifest["checksums"][CODES] = arrays.write_new(tmp / CODES, np.dtype(np.uint8), manifest["bits"] // 8,
                                                           codes)
        rows, manifest["checksums"][DESC] = arrays.write_new(tmp / DESC, np.dtype(np.float16), manifest["dim"], desc)
        if rows != manifest["count"]:
            raise MapError(f"rewriting {path}: {rows} rows written for a map of {manifest['count']} places")
        with closing(sqlite3.connect(path / PLACES)) as src, closing(sqlite3.connect(tmp / PLACES)) as dst:
            src.backup(dst)
        for name in (manifest.get("local") or {}).get("files", {}).values():
            shutil.copyfile(path / name, tmp / name)
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
        write_manifest(tmp, manifest)
        _publish(tmp, path)


@contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``path``, removed on the way out (holding the old map
    after an exchange, or a half-written one after an error)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, f".{path.name}")
    tmp = temp_name(path.with_name(f".{path.name}"))
    try:
        tmp.mkdir()
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, path: Path) -> None:
    """Puts the complete map ``tmp`` at ``path`` (atomically where the kernel can exchange paths)."""
    fsync_dir(tmp)
    if not path.exists():
        os.rename(tmp, path)
    elif not exchange_paths(tmp, path):  # tmp now holds the old map, removed by _staging
        old = temp_name(path.with_name(f".{path.name}.old"))
        os.rename(path, old)  # a kill between these two renames leaves no map at `path`
        os.rename(tmp, path)
        shutil.rmtree(old)
    fsync_dir(path.parent)
