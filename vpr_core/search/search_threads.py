"""The thread count of one search, set for both libraries the search runs on and restored after."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import faiss
import torch


@contextmanager
def search_threads(n: int) -> Iterator[None]:
    """Run a search on `n` threads and leave the process's settings as they were. Why both libraries
    and why restore: with torch imported first, faiss shares torch's OpenMP runtime, so setting
    faiss's thread count silently changes the encoder's; and on a machine busy with other work a
    second thread of a small re-rank waits for a core, costing far more than it saves (README,
    "Search"). Switching costs next to nothing."""
    previous_torch, previous_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous_faiss)
        torch.set_num_threads(previous_torch)
