"""Learn the adaptive pool's Hamming margin from data (the "learned margin" of SearchConfig)."""

from __future__ import annotations

import math

import faiss
import numpy as np

from vpr_core.search.searcher import TwoStageSearcher


def hamming_gaps(searcher: TwoStageSearcher, query_codes: np.ndarray, query_desc: np.ndarray) -> np.ndarray:
    """Per query: Hamming distance of its exhaustive-float nearest place minus the smallest Hamming
    distance to any place. A pool with margin >= gap contains the float nearest neighbour."""
    truth = searcher.float_search(query_desc, 1, query_codes=query_codes)
    flat = faiss.IndexBinaryFlat(searcher.bits)
    flat.add(searcher.codes)
    best, _ = flat.search(np.ascontiguousarray(query_codes), 1)
    return truth.hamming[:, 0] - best[:, 0]


def calibrate_hamming_margin(
    searcher: TwoStageSearcher, query_codes: np.ndarray, query_desc: np.ndarray, quantile: float = 0.99
) -> int:
    """Smallest margin that keeps the float top-1 in the pool for `quantile` of these queries.
    Use queries of a development split (never the test split)."""
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    gaps = hamming_gaps(searcher, query_codes, query_desc)
    if gaps.size == 0:
        raise ValueError("query_codes is empty: need queries to calibrate on")
    return int(math.ceil(np.quantile(gaps, quantile, method="higher")))
