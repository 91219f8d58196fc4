"""Both search stages on a CUDA GPU, used by `TwoStageSearcher` where faiss has GPU support.

Chosen by `SearchConfig.device`: "auto" takes the GPU when faiss reports one (`faiss.get_num_gpus()`,
which a CPU build of faiss answers with 0) and torch sees CUDA too (stage 2 runs in torch); "cpu"
never does; "cuda" insists and fails at construction without one.

Stage 1 is faiss's `GpuIndexBinaryFlat` over every place's code, whatever index the CPU path uses:
faiss has no GPU version of the binary IVF or HNSW indexes, and an exhaustive Hamming scan is what
those approximate (so on a GPU, candidates from a map with an IVF index are exact, not probed). The
trained CPU index is still built and stored with the map, for machines without a GPU. The GPU scan
returns at most `MAX_K` candidates per query; a larger request (a k or a pool above it) runs stage 1
on the CPU instead.

Stage 2 reads the candidates' rows on the host, as the CPU path does (a map's float descriptors stay
in their memory map: a 1 M-place map is 4 GB of float16), into a page-locked staging buffer from
which the copy to the GPU is a direct DMA; the upcast, the dot products and the top-k run there.
Dot products are float32 multiply-and-sum (no TF32 matrix unit), so scores match the CPU path to
float32 rounding; among places whose Hamming distances tie at the edge of the pool, the GPU may pick
others than the CPU does (both are correct answers to stage 1).
"""

from __future__ import annotations

import threading
from typing import Callable

import faiss
import numpy as np
import torch

from vpr_core.search.config import SearchResult

# Candidates one GPU scan may return: faiss's GPU k-selection (GPU_MAX_SELECTION_K) is 2048 on current
# CUDA builds and 1024 on others; the smaller bound holds for every build.
MAX_K = 1024
# Queries re-ranked per pass. It bounds the GPU's working set, a few copies of [candidates, D] float32:
# 64 queries x 200 candidates x 2048 dimensions x 4 bytes = 105 MB each.
_QUERY_CHUNK = 64

_resources: faiss.StandardGpuResources | None = None
_resources_lock = threading.Lock()


def unavailable_reason() -> str:
    """Why the GPU path cannot run here, or "" when it can."""
    gpus = faiss.get_num_gpus()
    if gpus == 0 or not hasattr(faiss, "GpuIndexBinaryFlat"):
        kind = "a GPU build" if hasattr(faiss, "GpuIndexBinaryFlat") else "a CPU-only build"
        return (f"faiss {faiss.__version__} is {kind} that sees {gpus} GPUs (install requirements-gpu.txt "
                "on a machine with an NVIDIA GPU)")
    if not torch.cuda.is_available():
        return f"faiss sees {gpus} GPUs but torch {torch.__version__} sees no CUDA device (a CPU build of torch?)"
    return ""


def _shared_resources() -> faiss.StandardGpuResources:
    """One set of faiss GPU resources (streams, cuBLAS handle, scratch memory) for the process: a
    node or an evaluation builds several searchers, and each set reserves its own scratch memory."""
    global _resources
    with _resources_lock:
        if _resources is None:
            _resources = faiss.StandardGpuResources()
        return _resources


class GpuSearch:
    """The GPU side of one searcher: a binary flat index over all codes (ids = row numbers) and the
    pinned staging buffer of stage 2.

    `create` builds it on the GPU. The constructor takes any flat binary index and torch device, so
    that a test can run this same code with faiss's CPU index and CPU tensors on a machine without a GPU.
    """

    def __init__(self, index: faiss.IndexBinary, dim: int, staging_dtype: np.dtype, device: torch.device) -> None:
        self.index = index
        self.dim = dim
        self.device = device
        self._staging_dtype = torch.from_numpy(np.empty(0, staging_dtype)).dtype
        self._staging = torch.empty((0, dim), dtype=self._staging_dtype)

    @classmethod
    def create(cls, device: str, codes: np.ndarray, dim: int, staging_dtype: np.dtype) -> GpuSearch | None:
        """The GPU search for `SearchConfig.device`, or None where the CPU path is to run."""
        if device == "cpu":
            return None
        reason = unavailable_reason()
        if reason:
            if device == "cuda":
                raise RuntimeError(f"SearchConfig.device='cuda', but {reason}; use device 'auto' or 'cpu'")
            return None
        index = faiss.GpuIndexBinaryFlat(_shared_resources(), codes.shape[1] * 8)  # on GPU 0
        if len(codes):
            index.add(np.ascontiguousarray(codes))
        return cls(index, dim, staging_dtype, torch.device("cuda", 0))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, codes: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(codes))

    def can_search(self, want: int) -> bool:
        return want <= MAX_K

    def stage1(self, qc: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        """(Hamming distances int32, ids int64), [n, min(want, places)], nearest first."""
        return self.index.search(np.ascontiguousarray(qc), min(want, self.ntotal))

    def rerank(self, take: Callable[[np.ndarray], np.ndarray], qd: np.ndarray, dist: np.ndarray,
               ids: np.ndarray, pool: np.ndarray, k: int) -> SearchResult:
        """Stage 2 for a batch: cosine of each query with its first `pool[i]` candidates, top k.
        Same contract as `TwoStageSearcher._rerank`; `take(ids)` reads descriptor rows."""
        n = len(ids)
        out = SearchResult.empty(n, k)
        out.pool = pool.astype(np.int32)
        for start in range(0, n, _QUERY_CHUNK):
            part = slice(start, min(n, start + _QUERY_CHUNK))
            self._rerank_chunk(take, qd[part], dist[part], ids[part], pool[part], k, out, start)
        return out

    def _rerank_chunk(self, take: Callable[[np.ndarray], np.ndarray], qd: np.ndarray, dist: np.ndarray,
                      ids: np.ndarray, pool: np.ndarray, k: int, out: SearchResult, offset: int) -> None:
        width = int(pool.max(initial=0))
        if width == 0:
            return
        chosen = np.arange(ids.shape[1])[None, :] < pool[:, None]  # row-major: query by query
        rows_host = take(ids[chosen])
        m = len(rows_host)
        staging = self._staging_rows(m)
        staging.copy_(torch.from_numpy(np.ascontiguousarray(rows_host)))
        rows = staging.to(self.device, non_blocking=True).to(torch.float32)
        query_of, column = np.nonzero(chosen)
        query_of_gpu = torch.from_numpy(query_of).to(self.device)
        queries = torch.from_numpy(np.ascontiguousarray(qd, np.float32)).to(self.device)
        scores = torch.full((len(ids), width), -torch.inf, device=self.device)
        scores[query_of_gpu, torch.from_numpy(column).to(self.device)] = (rows * queries[query_of_gpu]).sum(1)
        top_scores, top_columns = torch.topk(scores, min(k, width), dim=1)
        top_scores, top_columns = top_scores.cpu().numpy(), top_columns.cpu().numpy()
        found = np.arange(top_columns.shape[1])[None, :] < np.minimum(pool, k)[:, None]
        rows_out, cols_out = np.nonzero(found)
        picked = top_columns[rows_out, cols_out]
        out.scores[offset + rows_out, cols_out] = top_scores[rows_out, cols_out]
        out.ids[offset + rows_out, cols_out] = ids[rows_out, picked]
        out.hamming[offset + rows_out, cols_out] = dist[rows_out, picked]

    def _staging_rows(self, m: int) -> torch.Tensor:
        """`m` rows of the pinned staging buffer, grown to the next power of two when too small.
        Reusing it is safe: each re-rank ends with a device-to-host copy that waits for the GPU."""
        if len(self._staging) < m:
            size = 1 << max(0, m - 1).bit_length()
            self._staging = torch.empty((size, self.dim), dtype=self._staging_dtype,
                                        pin_memory=self.device.type == "cuda")
        return self._staging[:m]
