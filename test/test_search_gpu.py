"""The two-stage search on the GPU (vpr_core/search/gpu.py) against the CPU path.

The GPU tests run only where faiss has GPU support and torch sees CUDA; elsewhere they are reported
as skipped with the reason (and fail under VPR_REQUIRE_GPU=1, see test/conftest.py). The GPU path's
own logic (candidate bookkeeping, padded top-k, the CPU fallback of stage 1) also runs here on every
machine, with faiss's CPU flat index and CPU tensors in place of the GPU ones.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from vpr_core.search import SearchConfig, SearchResult, TwoStageSearcher, gpu, synthetic

CONFIG = synthetic.SyntheticConfig(dim=64, bits=512, route_length=50, routes_per_region=10)
REASON = gpu.unavailable_reason()
needs_gpu = pytest.mark.skipif(bool(REASON), reason=f"needs faiss with GPU support and a CUDA GPU: {REASON}")


@pytest.fixture(scope="module")
def route_map():
    """5000 places of clustered routes, 64 revisit queries, descriptors stored as float16 like a map."""
    codes, desc, qc, qd, _ = synthetic.small_map(CONFIG, 5000, 64)
    return codes, desc.astype(np.float16), qc, qd


def assert_same(result: SearchResult, reference: SearchResult) -> None:
    np.testing.assert_array_equal(result.ids, reference.ids)
    np.testing.assert_array_equal(result.hamming, reference.hamming)
    np.testing.assert_array_equal(result.pool, reference.pool)
    np.testing.assert_allclose(result.scores, reference.scores, atol=1e-5)


# Configurations under which both paths re-rank the same set of places whichever of several
# equidistant codes an index returns first: an adaptive pool that never reaches the stage-1 fetch
# (every place within the Hamming margin is re-ranked), or a fixed pool of every place of the map.
UNCLAMPED = {"max_candidates": 1000}
EXHAUSTIVE = {"adaptive": False, "candidates": 1000}


@needs_gpu
@pytest.mark.parametrize("config, places", [(UNCLAMPED, 5000), (EXHAUSTIVE, 1000)], ids=["adaptive", "all-places"])
@pytest.mark.parametrize("k", [1, 5])
def test_gpu_search_equals_cpu(route_map, config, places, k):
    codes, desc, qc, qd = route_map
    cpu = TwoStageSearcher(codes[:places], desc[:places], SearchConfig(device="cpu", **config))
    on_gpu = TwoStageSearcher(codes[:places], desc[:places], SearchConfig(device="cuda", **config))
    assert cpu._gpu is None and on_gpu._gpu is not None
    reference = cpu.search(qc, qd, k)
    assert ((reference.pool < 1000) | (reference.pool == places)).all(), "a pool was cut inside the fetch"
    assert_same(on_gpu.search(qc, qd, k), reference)
    assert_same(on_gpu.search(qc[:1], qd[:1], k), cpu.search(qc[:1], qd[:1], k))  # the node's batch of one


@needs_gpu
def test_gpu_search_sees_added_places_and_is_exact_over_an_ivf_map(route_map):
    codes, desc, qc, qd = route_map
    # An IVF map on the GPU: stage 1 scans every code, so it answers like the CPU's flat index.
    cpu = TwoStageSearcher(codes[:4000], desc[:4000], SearchConfig(device="cpu", index="flat", **UNCLAMPED))
    on_gpu = TwoStageSearcher(codes[:4000], desc[:4000],
                              SearchConfig(device="cuda", index="ivf", nlist=16, **UNCLAMPED))
    assert on_gpu.index_kind == "ivf"
    for searcher in (cpu, on_gpu):
        searcher.add(codes[4000:], desc[4000:])
    assert on_gpu._gpu.ntotal == len(codes)
    assert_same(on_gpu.search(qc, qd, 5), cpu.search(qc, qd, 5))


@needs_gpu
def test_auto_picks_the_gpu_where_there_is_one(route_map):
    codes, desc, _, _ = route_map
    assert TwoStageSearcher(codes, desc)._gpu is not None


@pytest.mark.skipif(not REASON, reason="this machine's faiss has a GPU: the CPU-only behaviour cannot occur")
def test_without_a_gpu_auto_runs_on_the_cpu_and_cuda_is_refused(route_map):
    codes, desc, _, _ = route_map
    assert TwoStageSearcher(codes, desc)._gpu is None
    with pytest.raises(RuntimeError, match="device='cuda'.*requirements-gpu.txt"):
        TwoStageSearcher(codes, desc, SearchConfig(device="cuda"))


def test_device_is_validated():
    with pytest.raises(ValueError, match="SearchConfig.device"):
        SearchConfig(device="gpu")


@pytest.mark.parametrize("config", [UNCLAMPED, EXHAUSTIVE, {}], ids=["adaptive", "fixed-pool", "default"])
@pytest.mark.parametrize("max_k", [gpu.MAX_K, 50])
def test_gpu_path_code_on_cpu_tensors_equals_cpu_path(route_map, monkeypatch, config, max_k):
    """The GPU path's code with faiss's CPU flat index and CPU tensors: the same results as the CPU
    path, including after added places, when a request above MAX_K sends stage 1 to the CPU, and
    over several chunks of queries (the last one partial)."""
    codes, desc, qc, qd = route_map
    monkeypatch.setattr(gpu, "MAX_K", max_k)
    monkeypatch.setattr(gpu, "_QUERY_CHUNK", 24)
    cpu = TwoStageSearcher(codes[:4500], desc[:4500], SearchConfig(device="cpu", **config))
    emulated = TwoStageSearcher(codes[:4500], desc[:4500], SearchConfig(device="cpu", **config))
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes[:4500])
    emulated._gpu = gpu.GpuSearch(index, desc.shape[1], desc.dtype, torch.device("cpu"))
    for k in (1, 5):
        assert_same(emulated.search(qc, qd, k), cpu.search(qc, qd, k))
    for searcher in (cpu, emulated):
        searcher.add(codes[4500:], desc[4500:])
    assert emulated._gpu.ntotal == len(codes)
    assert_same(emulated.search(qc, qd, 5), cpu.search(qc, qd, 5))
    assert len(emulated._gpu._staging) >= 5 * 64, "stage 2 went through the staging buffer"
