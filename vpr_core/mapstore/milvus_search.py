"""Two-stage search over a Milvus map: stage 1 (Hamming top-K) in Milvus, stage 2 here.

The searcher is TwoStageSearcher with its two seams replaced: `_stage1` asks Milvus for the nearest
codes, and the rows it re-ranks come from the collection (the candidates' FLOAT16 vectors, fetched by
id in one call) instead of a memory map. The adaptive candidate pool, the re-rank and its scores are
TwoStageSearcher's own code, so a collection and a directory holding the same places return the same
ids and scores. (Fetching the vectors by id is also what works: Milvus Lite 2.5 fails a search that
asks for vector fields back.)
"""

from __future__ import annotations

import threading

import numpy as np

from vpr_core.mapstore.milvus_map import MilvusMap
from vpr_core.search.config import SearchConfig
from vpr_core.search.searcher import TwoStageSearcher


class _CollectionRows:
    """The `take(ids)` of the searcher's row stores, answered by the collection."""

    def __init__(self, mapdb: MilvusMap, field: str) -> None:
        self._map, self._field = mapdb, field

    def take(self, ids: np.ndarray) -> np.ndarray:
        return self._map.vectors(ids, self._field)


class MilvusSearcher(TwoStageSearcher):
    """Search a Milvus map; ids are the collection's place ids. Places other writers add become
    searchable without a restart (after the size cache and the collection's consistency delay)."""

    def __init__(self, mapdb: MilvusMap, config: SearchConfig = SearchConfig()) -> None:
        self.config = config
        self.map = mapdb
        self.bits = mapdb.bits
        self.dim = mapdb.dim
        self._codes = _CollectionRows(mapdb, "code")
        self._desc = _CollectionRows(mapdb, "desc")
        self._lock = threading.Lock()
        self.local = None

    @property
    def size(self) -> int:
        return self.map.refresh_size()

    @property
    def index_kind(self) -> str:
        return self.map.index_info["kind"]

    def _stage1(self, qc: np.ndarray, qd: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        return self.map.search_codes(qc, want)

    def float_search(self, query_desc: np.ndarray, k: int, query_codes: np.ndarray | None = None):
        raise NotImplementedError("exhaustive float search would read the whole collection; pull the map "
                                  "(`vpr map pull`) and search the directory")

    def add(self, codes: np.ndarray, desc: np.ndarray) -> None:
        raise NotImplementedError("add places to the collection (MilvusMap.append); every searcher of it sees them")

    def save_index(self, mapdb) -> bool:
        """The stage-1 index lives in Milvus, built by the database."""
        return False
