"""One search per query, as the node searches, with each query's latency."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from vpr_core.search import SearchResult


def search_each(
    search_one: Callable[[int, int], SearchResult], n_queries: int, k: int, label: str
) -> tuple[SearchResult, np.ndarray]:
    """One search per query (the node's pattern, so latencies are per frame): the results stacked
    over queries, and each query's latency in seconds."""
    results, latency = [], np.empty(n_queries)
    for i in tqdm(range(n_queries), desc=f"search {label}", unit="query", leave=False):
        start = time.perf_counter()
        results.append(search_one(i, k))
        latency[i] = time.perf_counter() - start
    pools = [r.pool for r in results]
    stacked = SearchResult(
        ids=np.concatenate([r.ids for r in results]),
        scores=np.concatenate([r.scores for r in results]),
        hamming=np.concatenate([r.hamming for r in results]),
        pool=None if any(p is None for p in pools) else np.concatenate(pools),
    )
    return stacked, latency


def latency_summary(seconds: np.ndarray) -> dict[str, float]:
    ms = 1000 * seconds
    return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "mean": float(ms.mean())}
