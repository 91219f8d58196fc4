"""Search configuration and result types."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from vpr_core.choices import AUTO, DEVICE_CHOICES
from vpr_core.search.binary_index import KINDS

INDEX_CHOICES = (AUTO, *KINDS)


@dataclass
class SearchConfig:
    """How the two-stage search trades speed for agreement with exhaustive float search.

    Stage 1 asks the binary index for up to `max_candidates` (adaptive) or `candidates` (fixed)
    codes; stage 2 re-ranks a pool of them by exact cosine. Adaptive pool (the FoL++ idea of sizing
    the re-rank set from the first-stage score distribution): keep the candidates whose Hamming
    distance is within `hamming_margin` bits of the k-th best one (the best one for k = 1), then
    clamp to [min(min_candidates, max_candidates), max_candidates]. A query whose best code stands
    out re-ranks few places; an ambiguous one (many near-equal codes, e.g. a repetitive corridor)
    re-ranks more.

    hamming_margin = 32 bits is for 512-bit codes: two places that differ by a small cosine gap
    differ by a binomial number of bits whose spread is ~sqrt(512 * 0.2 * 0.8) ~ 9 bits, so the
    float k-th nearest neighbour's code lies within ~3 spreads of the k-th best code; on the
    synthetic maps of bench/search.py the 99th percentile of that gap is 18-22 bits (k = 1, 20 k and
    1 M places). Scale it with sqrt(bits) for other code lengths, or measure it on your data with
    `calibrate_hamming_margin`. The pool always holds at least k candidates.
    """

    index: str = "auto"  # "flat" | "ivf" | "hnsw" | "auto" (flat up to flat_max places, else ivf)
    candidates: int = 100  # fixed stage-1 pool when adaptive is False
    adaptive: bool = True
    min_candidates: int = 10
    max_candidates: int = 200
    hamming_margin: int = 32
    threads: int = 1  # faiss and torch threads during search(); the process's settings are restored
    flat_max: int = 50_000
    nlist: int = 0  # IVF lists; 0 = from the map size (binary_index.ivf_params)
    nprobe: int = 0  # IVF lists scanned per query; 0 = from nlist
    pca_dim: int = 128  # IVF coarse quantizer works on descriptors reduced to this (0 = no PCA)
    hnsw_m: int = 32
    hnsw_ef_search: int = 0  # 0 = the stage-1 pool size
    retrain_ratio: float = 0.5  # rebuild the trained index when the flat tail of added places
    retrain_min: int = 10_000  # exceeds max(retrain_min, retrain_ratio * indexed places)
    seed: int = 0  # k-means seed, for reproducible indexes
    # "auto": both stages on the GPU where faiss has GPU support and torch sees CUDA (vpr_core/search/gpu.py),
    # else the CPU; "cpu": always the CPU; "cuda": the GPU or an error when the searcher is built.
    device: str = "auto"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer))
            ):
                raise ValueError(f"SearchConfig.{f.name} must be an int, got {value!r}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"SearchConfig.adaptive must be a bool, got {self.adaptive!r}")
        if self.index not in INDEX_CHOICES:
            raise ValueError(f"SearchConfig.index must be one of {INDEX_CHOICES}, got {self.index!r}")
        if self.device not in DEVICE_CHOICES:
            raise ValueError(f"SearchConfig.device must be one of {DEVICE_CHOICES}, got {self.device!r}")
        positive = (
            "candidates",
            "min_candidates",
            "max_candidates",
            "threads",
            "flat_max",
            "hnsw_m",
            "retrain_min",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"SearchConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("hamming_margin", "nlist", "nprobe", "pca_dim", "hnsw_ef_search"):
            if getattr(self, name) < 0:
                raise ValueError(f"SearchConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.retrain_ratio > 0:
            raise ValueError(f"SearchConfig.retrain_ratio must be > 0, got {self.retrain_ratio}")


@dataclass
class SearchResult:
    """Best first. Where fewer than k places were found: ids -1, scores -inf, hamming -1."""

    ids: np.ndarray  # int64 [N, k]
    scores: np.ndarray  # float32 [N, k] cosine
    hamming: np.ndarray  # int32 [N, k]
    pool: np.ndarray | None = None  # int32 [N]: candidates re-ranked per query (None for float_search)

    @classmethod
    def empty(cls, n: int, k: int) -> "SearchResult":
        return cls(
            ids=np.full((n, k), -1, np.int64),
            scores=np.full((n, k), -np.inf, np.float32),
            hamming=np.full((n, k), -1, np.int32),
        )
