"""Copies between a map directory and a Milvus collection: a fleet publishes a locally built map
(`push`), a robot takes a local copy for offline use (`pull`).

Push stores place i of the directory under the writer's i-th id (writer 0: the directory's own ids),
in batches, as upserts: a push that was stopped is simply run again. Pull writes the collection's
places in ascending id order into a new directory (ids renumbered 0..N-1 when several writers
contributed), with the collection's fingerprint, encoder configuration and frame; a push of a
directory followed by a pull gives back the same codes, descriptors and records.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vpr_core.mapdb import MapDB, MapError
from vpr_core.mapstore.milvus_map import MilvusMap, drop_map
from vpr_core.mapstore.uri import parse_milvus_uri, place_id

PUSH_CHUNK = 4096  # places read from the directory per upsert round


def push(directory: str | os.PathLike, uri: str, *, replace: bool = False) -> MilvusMap:
    """Publishes a map directory as (this writer's part of) a collection; returns the open collection."""
    location = parse_milvus_uri(uri)
    source = MapDB.load(directory)
    try:
        if source.adaptation is not None:
            raise MapError(f"map {directory} is adapted ({source.adaptation.method}), which a Milvus collection "
                           "cannot store; rebuild it with `vpr build-map --adapt none` to push it")
        if replace:
            drop_map(location)
        target = MilvusMap.create(location, fingerprint=source.fingerprint, encoder_config=source.encoder_config,
                                  bits=source.bits, dim=source.dim, frame_id=source.frame_id)
        for start in range(0, source.size, PUSH_CHUNK):
            end = min(start + PUSH_CHUNK, source.size)
            ids = np.array([place_id(location.writer, i) for i in range(start, end)], np.int64)
            target.put(ids, np.asarray(source.codes[start:end]), np.asarray(source.desc[start:end]),
                       source.records(range(start, end)))
        return target
    finally:
        source.close()


def pull(uri: str, directory: str | os.PathLike, *, overwrite: bool = False) -> MapDB:
    """A local map directory holding every place of the collection, in ascending id order."""
    source = MilvusMap.open(parse_milvus_uri(uri))
    try:
        path = Path(directory)
        if path.exists() and not overwrite:
            raise MapError(f"{path} already exists; choose a new directory or pass overwrite")
        ids = source.all_ids()
        parts = list(source.rows(ids)) or [(np.zeros((0, source.bits // 8), np.uint8),
                                            np.zeros((0, source.dim), np.float16), [])]
        return MapDB.build(path, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                           [r for p in parts for r in p[2]], fingerprint=source.fingerprint,
                           encoder_config=source.encoder_config, frame_id=source.frame_id, overwrite=overwrite)
    finally:
        source.close()

