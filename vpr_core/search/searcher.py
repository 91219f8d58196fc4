"""Two-stage retrieval: Hamming candidates from a faiss binary index, exact cosine re-rank.

Stage 2 reads only the candidates' rows of the float16 descriptor memory map (a few hundred KB per
query) and upcasts them with torch, whose vectorised half->float conversion is ~4x faster than
numpy's `astype` here (README, "Search"). The map's descriptors are never read whole, so a 1 M-place
map (4 GB of descriptors) costs resident memory only for its codes and the rows that queries touched.

Places added after construction (SLAM) live in RAM beside the base arrays and go into a flat tail
index, searchable at once; a trained main index is rebuilt over everything when the tail outgrows
`SearchConfig.retrain_min` / `retrain_ratio` (k-means trained on the first places may not cover
regions the robot explores later; a flat main index just grows).

Where faiss has GPU support, both stages run on the GPU instead (`SearchConfig.device`,
vpr_core/search/gpu.py); elsewhere, or with device "cpu", the code below runs unchanged.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np
import torch

from vpr_core.mapdb import MapDB, check_codes, check_descriptors
from vpr_core.mapdb.inputs import check_same_rows
from vpr_core.search import binary_index, gpu
from vpr_core.search.config import SearchConfig, SearchResult
from vpr_core.search.grown_rows import GrownRows
from vpr_core.search.local_rerank import LocalFeatures, LocalReranker, LocalRerankConfig
from vpr_core.search.search_threads import search_threads

_NO_DISTANCE = np.iinfo(np.int32).max
_FIRST_FETCH = 64  # stage-1 candidates fetched first (see _fetch_rest)
_FLOAT_CHUNK_ROWS = 4096  # exhaustive search streams the map in blocks of this many rows (cache-sized)


def _to_float32(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rows)).to(torch.float32)


def hamming_distances(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance of equally shaped packed codes."""
    return np.bitwise_count(np.bitwise_xor(codes_a, codes_b)).sum(axis=-1, dtype=np.int32)


class TwoStageSearcher:
    """Search places by binary codes, then re-rank by exact cosine of float descriptors."""

    # A class default, so subclasses that set up their own stores (MilvusSearcher) run on the CPU path.
    _gpu: gpu.GpuSearch | None = None

    def __init__(
        self,
        codes: np.ndarray,
        desc: np.ndarray,
        config: SearchConfig = SearchConfig(),
        *,
        index: binary_index.FlatIndex | binary_index.IVFIndex | binary_index.HNSWIndex | None = None,
    ) -> None:
        """`desc` float16/float32 [N, D] (an np.memmap stays on disk); `index` is a stage-1 index over
        the first rows, as `from_map` passes a stored one."""
        codes = check_codes("codes", codes)
        # A memory map's values were verified by the map database; reading them here would page in the file.
        desc = check_descriptors("desc", desc, check_values=not isinstance(desc, np.memmap))
        check_same_rows(codes=codes, desc=desc)
        self.config = config
        self.bits = codes.shape[1] * 8
        self.dim = desc.shape[1]
        self._codes = GrownRows(codes, np.dtype(np.uint8))
        self._desc = GrownRows(desc, desc.dtype if desc.dtype != np.float64 else np.dtype(np.float32))
        self._lock = threading.Lock()
        # Optional third stage (FoL++ local re-ranking), used by searches given query local features.
        self.local: LocalReranker | None = None
        if index is None:
            self._build_main()
        else:
            self._main = index
            self._main_n = index.ntotal
            if not 0 <= self._main_n <= len(codes):
                raise ValueError(
                    f"the given index holds {self._main_n} codes but there are {len(codes)} places"
                )
            self._tail = faiss.IndexBinaryFlat(self.bits)
            if self._main_n < len(codes):
                self._tail.add(codes[self._main_n :])
        self._gpu = gpu.GpuSearch.create(config.device, codes, self.dim, self._desc.extra.dtype)

    @classmethod
    def from_map(
        cls,
        mapdb: MapDB,
        config: SearchConfig = SearchConfig(),
        local_config: LocalRerankConfig = LocalRerankConfig(),
    ) -> "TwoStageSearcher":
        """Searcher over a loaded map, reusing its stored index unless `config.index` names another
        kind or `config.nlist` another list count; places beyond the index go to the flat tail.
        A map with local features gets the local re-ranking stage (`local_config`)."""
        searcher = cls._from_map(mapdb, config)
        features = mapdb.local_features
        if features is not None:
            searcher.local = LocalReranker(features, local_config)
        return searcher

    @classmethod
    def _from_map(cls, mapdb: MapDB, config: SearchConfig) -> "TwoStageSearcher":
        info = mapdb.index_info
        if (
            info is not None
            and config.index in ("auto", info["kind"])
            and config.nlist in (0, info["params"].get("nlist", 0))
        ):
            params = dict(info["params"])
            if info["kind"] == "ivf" and config.nprobe:
                params["nprobe"] = config.nprobe
            if info["kind"] == "hnsw" and config.hnsw_ef_search:
                params["ef_search"] = config.hnsw_ef_search
            index = binary_index.deserialize(mapdb.read_index(), info["kind"], params, mapdb.bits)
            if index.ntotal != info["ntotal"]:
                raise ValueError(
                    f"stored index of map {mapdb.path} holds {index.ntotal} codes, manifest says {info['ntotal']}"
                )
            return cls(mapdb.codes, mapdb.desc, config, index=index)
        return cls(mapdb.codes, mapdb.desc, config)

    @property
    def size(self) -> int:
        return len(self._codes)

    @property
    def indexed(self) -> int:
        """Places in the main index; the rest (added since it was built) are in the flat tail."""
        return self._main_n

    @property
    def codes(self) -> np.ndarray:
        """All places' codes (base and added), uint8 [size, bits/8]."""
        return self._codes.all()

    @property
    def index_kind(self) -> str:
        return self._main.kind

    @property
    def index_params(self) -> dict:
        return dict(self._main.params)

    def save_index(self, mapdb: MapDB) -> bool:
        """Store the trained main index in the map it was built from (False for a flat index, which
        is rebuilt in milliseconds and not worth the disk)."""
        if self._main.kind == "flat":
            return False
        if mapdb.bits != self.bits or mapdb.size < self._main_n:
            raise ValueError(
                f"map {mapdb.path} ({mapdb.size} places, {mapdb.bits} bits) does not hold this index's places"
            )
        with self._lock:
            data = self._main.serialize()
        mapdb.store_index(data, kind=self._main.kind, params=self._main.params, ntotal=self._main_n)
        return True

    # ---- search -------------------------------------------------------------------------------
    def search(
        self,
        query_codes: np.ndarray,
        query_desc: np.ndarray,
        k: int,
        query_local: LocalFeatures | None = None,
    ) -> SearchResult:
        """Top-k places per query, best first by cosine. query_desc float [N, D] L2-normalised.
        With `query_local` and a `local` stage, the best max(k, local max_candidates) places by
        cosine are re-ranked by the local stage (scores then fused, `pool` its re-ranked count)."""
        k = self._check_k(k)
        if query_local is not None and self.local is not None:
            wide = self.search(query_codes, query_desc, max(k, self.local.config.max_candidates))
            return self.local.rerank(wide, query_local, k)
        qc = check_codes("query_codes", query_codes, self.bits // 8)
        qd = check_descriptors("query_desc", query_desc, self.dim).astype(np.float32, copy=False)
        n = check_same_rows(query_codes=qc, query_desc=qd)
        if self.size == 0 or n == 0:
            out = SearchResult.empty(n, k)
            out.pool = np.zeros(n, np.int32)
            return out
        cfg = self.config
        want = min(self.size, max(k, cfg.max_candidates if cfg.adaptive else cfg.candidates))
        qd_c = np.ascontiguousarray(qd)
        with self._lock, search_threads(cfg.threads):
            first = min(want, max(_FIRST_FETCH, 2 * k)) if cfg.adaptive else want
            dist, ids = self._stage1(qc, qd_c, first)
            if first < want:
                dist, ids = self._fetch_rest(qc, qd_c, dist, ids, k, want)
            pool = self._pool_sizes(dist, ids, k)
            return self._rerank(qd, dist, ids, pool, k)

    def score_places(self, query_code: np.ndarray, query_desc: np.ndarray,
                     ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosine and Hamming distance of one query to the given places: the score of a place that
        something other than this search (the sequence filter) picked, on the search's own scale."""
        ids = np.asarray(ids, dtype=np.int64)
        desc = self._desc.take(ids).astype(np.float32, copy=False)
        scores = desc @ np.asarray(query_desc, dtype=np.float32).reshape(-1)
        return scores, hamming_distances(self._codes.take(ids), np.asarray(query_code, np.uint8).reshape(1, -1))

    def float_search(
        self, query_desc: np.ndarray, k: int, query_codes: np.ndarray | None = None
    ) -> SearchResult:
        """Exhaustive cosine over every place, streamed in blocks: the reference for evaluation and
        benchmarks. Hamming distances are filled when `query_codes` are given (else -1)."""
        k = self._check_k(k)
        qd = check_descriptors("query_desc", query_desc, self.dim).astype(np.float32, copy=False)
        if query_codes is not None:
            query_codes = check_codes("query_codes", query_codes, self.bits // 8)
            check_same_rows(query_codes=query_codes, query_desc=qd)
        n = len(qd)
        out = SearchResult.empty(n, k)
        if self.size == 0 or n == 0:
            return out
        q = torch.from_numpy(qd)
        best_s = torch.full((n, 0), -torch.inf)
        best_i = torch.zeros((n, 0), dtype=torch.int64)
        upcast = torch.empty((_FLOAT_CHUNK_ROWS, self.dim))  # reused: fresh pages cost a fault each
        with self._lock:
            for start, block in self._desc.blocks(_FLOAT_CHUNK_ROWS):
                rows = torch.from_numpy(np.ascontiguousarray(block))
                if rows.dtype != torch.float32:
                    rows = upcast[: len(block)].copy_(rows)
                s = q @ rows.T
                kk = min(k, s.shape[1])
                vals, idx = torch.topk(s, kk, dim=1)
                best_s, order = torch.topk(torch.cat([best_s, vals], 1), min(k, best_s.shape[1] + kk), dim=1)
                best_i = torch.gather(torch.cat([best_i, idx + start], 1), 1, order)
        m = best_s.shape[1]
        out.scores[:, :m] = best_s.numpy()
        out.ids[:, :m] = best_i.numpy()
        if query_codes is not None:
            out.hamming[:, :m] = hamming_distances(
                self._codes.take(out.ids[:, :m].ravel()).reshape(n, m, -1), query_codes[:, None, :]
            )
        return out

    def add(self, codes: np.ndarray, desc: np.ndarray) -> None:
        """Append places (ids continue from `size`); they are searchable when this returns."""
        codes = check_codes("codes", codes, self.bits // 8)
        desc = check_descriptors("desc", desc, self.dim)
        if check_same_rows(codes=codes, desc=desc) == 0:
            return
        with self._lock:
            self._codes.append(codes)
            self._desc.append(desc)
            if self._gpu is not None:
                self._gpu.add(codes)
            if self._main.kind == "flat" and self._main_n == self.size - len(codes):
                self._main.add(codes)
                self._main_n = self.size
            else:
                self._tail.add(codes)
            cfg = self.config
            outgrew_flat = self._main.kind == "flat" and cfg.index == "auto" and self.size > cfg.flat_max
            tail = self.size - self._main_n
            stale = self._main.kind != "flat" and tail >= max(
                cfg.retrain_min, cfg.retrain_ratio * self._main_n
            )
            if outgrew_flat or stale:
                self._build_main()

    # ---- internals ----------------------------------------------------------------------------
    def _check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        return int(k)

    def _build_main(self) -> None:
        cfg = self.config
        n = self.size
        kind = binary_index.choose_kind(cfg.index, n, cfg.flat_max)
        if kind == "ivf":
            params = binary_index.ivf_params(n, cfg.nlist, cfg.nprobe, cfg.pca_dim)
        elif kind == "hnsw":
            params = binary_index.hnsw_params(cfg.hnsw_m, cfg.hnsw_ef_search)
        else:
            params = {}
        self._main = binary_index.build(kind, self._codes.all(), self._desc, params, cfg.seed)
        self._main_n = n
        self._tail = faiss.IndexBinaryFlat(self.bits)

    def _stage1(self, qc: np.ndarray, qd: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        """Hamming candidates from the main index and the flat tail, merged, nearest first."""
        if self._gpu is not None and self._gpu.can_search(want):
            dist, ids = self._gpu.stage1(qc, want)
            return np.where(ids < 0, _NO_DISTANCE, dist), ids
        parts = []
        if self._main_n:
            parts.append(self._main.search(qc, qd, min(want, self._main_n)))
        if self._tail.ntotal:
            d, i = self._tail.search(qc, min(want, self._tail.ntotal))
            parts.append((d, i + self._main_n))
        dist = np.concatenate([p[0] for p in parts], axis=1) if len(parts) > 1 else parts[0][0]
        ids = np.concatenate([p[1] for p in parts], axis=1) if len(parts) > 1 else parts[0][1]
        dist = np.where(ids < 0, _NO_DISTANCE, dist)
        if len(parts) > 1:
            order = np.argsort(dist, axis=1, kind="stable")[:, :want]
            dist = np.take_along_axis(dist, order, 1)
            ids = np.take_along_axis(ids, order, 1)
        return dist, ids

    def _fetch_rest(
        self, qc: np.ndarray, qd: np.ndarray, dist: np.ndarray, ids: np.ndarray, k: int, want: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 first fetches a few candidates (a top-64 heap scans the lists ~25% faster than a
        top-200 one); only queries whose adaptive pool may reach past them are searched again with
        the full count. Exact: a query whose last fetched candidate lies beyond its margin has all
        the candidates within the margin already."""
        found = np.count_nonzero(ids >= 0, axis=1)
        kth = dist[np.arange(len(dist)), np.maximum(np.minimum(k, found) - 1, 0)].astype(np.int64)
        more = (found == dist.shape[1]) & (dist[:, -1] <= kth + self.config.hamming_margin)
        if not more.any():
            return dist, ids
        full_dist = np.full((len(dist), want), _NO_DISTANCE, np.int32)
        full_ids = np.full((len(dist), want), -1, np.int64)
        full_dist[:, : dist.shape[1]], full_ids[:, : ids.shape[1]] = dist, ids
        d, i = self._stage1(qc[more], qd[more], want)
        full_dist[more, : d.shape[1]], full_ids[more, : i.shape[1]] = d, i
        return full_dist, full_ids

    def _pool_sizes(self, dist: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
        """Per query, how many of the Hamming-sorted candidates to re-rank (see SearchConfig).
        Each row of `dist` is ascending, missing candidates last at _NO_DISTANCE."""
        cfg = self.config
        low = min(cfg.min_candidates, cfg.max_candidates)
        if len(dist) == 1:  # the node's per-frame call: two binary searches instead of ~15 array ops
            row = dist[0]
            found = int(np.searchsorted(row, _NO_DISTANCE))
            if cfg.adaptive and found:
                within = int(
                    np.searchsorted(row, int(row[min(k, found) - 1]) + cfg.hamming_margin, side="right")
                )
                pool = min(max(within, low), cfg.max_candidates)
            else:
                pool = cfg.candidates
            return np.array([min(max(pool, k), found)])
        found = np.count_nonzero(ids >= 0, axis=1)
        if cfg.adaptive:
            # The float k-th neighbour's code lies within the margin of the k-th best code.
            kth = dist[np.arange(len(dist)), np.maximum(np.minimum(k, found) - 1, 0)].astype(np.int64)
            within = np.count_nonzero(dist <= (kth + cfg.hamming_margin)[:, None], axis=1)
            pool = np.minimum(np.maximum(within, low), cfg.max_candidates)
        else:
            pool = np.full(len(ids), cfg.candidates)
        return np.minimum(np.maximum(pool, k), found)

    def _rerank(
        self, qd: np.ndarray, dist: np.ndarray, ids: np.ndarray, pool: np.ndarray, k: int
    ) -> SearchResult:
        """One gather and one upcast for the whole batch; then per query (a loop over the batch,
        never over the map) a mat-vec over its own candidates and a top-k."""
        if self._gpu is not None:
            return self._gpu.rerank(self._desc.take, qd, dist, ids, pool, k)
        n, width = ids.shape
        take = np.arange(width)[None, :] < pool[:, None]
        rows = _to_float32(self._desc.take(ids[take]))
        q = torch.from_numpy(qd)
        out = SearchResult.empty(n, k)
        out.pool = pool.astype(np.int32)
        end = 0
        for i, p in enumerate(pool.tolist()):
            start, end = end, end + p
            if p == 0:
                continue
            scores, order = torch.topk(rows[start:end] @ q[i], min(k, p))
            order = order.numpy()
            m = len(order)
            out.scores[i, :m] = scores.numpy()
            out.ids[i, :m] = ids[i, order]
            out.hamming[i, :m] = dist[i, order]
        return out

