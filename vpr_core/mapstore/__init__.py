"""Map backends behind one interface, chosen by the map's URI (see `uri` for the forms).

    a directory path          -> vpr_core.mapdb.MapDB (faiss + memory-mapped arrays + SQLite; the default)
    milvus://, milvus-lite:   -> MilvusMap (a Milvus collection: a server for fleets, Milvus Lite in tests)

Both answer what the pipeline asks of a map (`PlaceMap`), and `open_searcher` gives the two-stage
searcher for either, so the localizer, `vpr build-map`, `vpr replay` and the node are the same code
above this package. Milvus is imported only when a Milvus URI is used.
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from vpr_core.adapt import MapAdaptation
from vpr_core.mapdb import MapDB, MapError, PlaceRecord
from vpr_core.mapstore.errors import MapUnavailable
from vpr_core.mapstore.uri import is_milvus_uri, parse_milvus_uri
from vpr_core.search import SearchConfig, TwoStageSearcher
from vpr_core.search.local_rerank import LocalRerankConfig

__all__ = ["MapError", "MapUnavailable", "PlaceMap", "create_map", "is_milvus_uri", "last_place",
           "open_map", "open_searcher"]


@runtime_checkable
class PlaceMap(Protocol):
    """What the pipeline needs of a map, whatever holds it."""

    @property
    def size(self) -> int: ...
    @property
    def bits(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def frame_id(self) -> str: ...
    @property
    def encoder_config(self) -> dict: ...
    @property
    def local_info(self) -> dict | None: ...
    @property
    def adaptation(self) -> MapAdaptation | None: ...

    def records(self, ids: Sequence[int] | np.ndarray) -> list[PlaceRecord]: ...
    def append(self, codes: np.ndarray, desc: np.ndarray, records: list[PlaceRecord]) -> np.ndarray: ...
    def close(self) -> None: ...


def open_map(uri: str | os.PathLike, *, expected_fingerprint: str | None = None, verify: bool = True) -> PlaceMap:
    """An existing map; refused (MapError) when it was built by another encoder than
    `expected_fingerprint`. MapUnavailable when its database cannot be reached."""
    if is_milvus_uri(str(uri)):
        from vpr_core.mapstore.milvus_map import MilvusMap

        return MilvusMap.open(parse_milvus_uri(str(uri)), expected_fingerprint=expected_fingerprint)
    return MapDB.load(uri, expected_fingerprint=expected_fingerprint, verify=verify)


def create_map(uri: str | os.PathLike, *, fingerprint: str, encoder_config: dict, bits: int, dim: int,
               frame_id: str = "map") -> PlaceMap:
    """A new empty map; for a Milvus collection that exists already, the same collection when it
    holds the same kind of map (fleet writers join it), else MapError."""
    if is_milvus_uri(str(uri)):
        from vpr_core.mapstore.milvus_map import MilvusMap

        return MilvusMap.create(parse_milvus_uri(str(uri)), fingerprint=fingerprint, encoder_config=encoder_config,
                                bits=bits, dim=dim, frame_id=frame_id)
    return MapDB.create(uri, fingerprint=fingerprint, encoder_config=encoder_config, bits=bits, dim=dim,
                        frame_id=frame_id)


def open_searcher(place_map: PlaceMap, config: SearchConfig = SearchConfig(),
                  local_config: LocalRerankConfig = LocalRerankConfig()) -> TwoStageSearcher:
    """The two-stage searcher of a map: over a directory's arrays (its stored index reused), or
    with stage 1 in Milvus and the same re-rank."""
    if isinstance(place_map, MapDB):
        return TwoStageSearcher.from_map(place_map, config, local_config)
    from vpr_core.mapstore.milvus_search import MilvusSearcher

    return MilvusSearcher(place_map, config)  # type: ignore[arg-type]


def last_place(place_map: PlaceMap) -> tuple[PlaceRecord, np.ndarray] | None:
    """The place a resumed build continues after (for a collection: this writer's last), with its
    float16 descriptor; None for a map this writer has not written to."""
    if isinstance(place_map, MapDB):
        if place_map.size == 0:
            return None
        return place_map.records([place_map.size - 1])[0], np.asarray(place_map.desc[-1])
    return place_map.last_place()  # type: ignore[attr-defined]

