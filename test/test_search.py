"""Two-stage search: exactness against brute force, index recall floors, adaptive pool, SLAM adds,
input validation, and reuse of a stored index."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from conftest import thread_counts
from vpr_core.mapdb import MapDB, PlaceRecord
from vpr_core.model import pack_codes
from vpr_core.search import SearchConfig, TwoStageSearcher, calibrate_hamming_margin, hamming_gaps
from vpr_core.search import binary_index, synthetic

SMALL = synthetic.SyntheticConfig(dim=64, bits=256, route_length=20, routes_per_region=5)
MEDIUM = synthetic.SyntheticConfig(dim=64, bits=512)


@pytest.fixture(scope="module")
def small():
    return synthetic.small_map(SMALL, 300, 40)


@pytest.fixture(scope="module")
def medium():
    return synthetic.small_map(MEDIUM, 20_000, 300)


def brute_force(desc: np.ndarray, query_desc: np.ndarray) -> np.ndarray:
    """float64 cosine of every query with every (float16-stored) place."""
    return query_desc.astype(np.float64) @ desc.astype(np.float16).astype(np.float64).T


def assert_is_brute_force_ranking(ids: np.ndarray, scores: np.ndarray, reference: np.ndarray) -> None:
    """ids list every place in non-increasing brute-force cosine (places whose float64 scores differ
    by less than float32 rounding may come in either order), with scores equal to brute force's."""
    n = reference.shape[1]
    exact = np.argsort(-reference, axis=1, kind="stable")
    for q in range(len(ids)):
        assert sorted(ids[q].tolist()) == list(range(n))
        ref = reference[q, ids[q]]
        assert np.all(np.diff(ref) <= 1e-6), "not sorted by brute-force cosine"
        np.testing.assert_allclose(scores[q], ref, atol=1e-5)
    assert np.mean(ids == exact) > 0.99


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_two_stage_with_k_equal_n_is_the_brute_force_ranking(small, index):
    codes, desc, qc, qd, _ = small
    # IVF probing all of its lists is exhaustive too; HNSW is approximate by design (recall test below).
    cfg = SearchConfig(index=index, nlist=8, nprobe=8)
    s = TwoStageSearcher(codes, desc.astype(np.float16), cfg)
    assert s.index_kind == index
    r = s.search(qc, qd, len(codes))
    ref = brute_force(desc, qd)
    assert_is_brute_force_ranking(r.ids, r.scores, ref)
    np.testing.assert_array_equal(r.hamming, np.bitwise_count(codes[r.ids] ^ qc[:, None, :]).sum(-1))
    f = s.float_search(qd, len(codes), query_codes=qc)
    assert_is_brute_force_ranking(f.ids, f.scores, ref)
    np.testing.assert_array_equal(f.hamming, np.bitwise_count(codes[f.ids] ^ qc[:, None, :]).sum(-1))


def test_batch_equals_single_queries(small):
    codes, desc, qc, qd, _ = small
    s = TwoStageSearcher(codes, desc, SearchConfig())
    batch = s.search(qc, qd, 5)
    for i in range(len(qc)):
        one = s.search(qc[i : i + 1], qd[i : i + 1], 5)
        np.testing.assert_array_equal(one.ids[0], batch.ids[i])
        np.testing.assert_array_equal(one.scores[0], batch.scores[i])
        assert one.pool[0] == batch.pool[i]  # the single-query fast path sizes pools alike


def test_fewer_places_than_k_are_padded(small):
    codes, desc, qc, qd, _ = small
    s = TwoStageSearcher(codes[:3], desc[:3], SearchConfig())
    r = s.search(qc[:2], qd[:2], 5)
    assert (
        (r.ids[:, 3:] == -1).all() and np.isneginf(r.scores[:, 3:]).all() and (r.hamming[:, 3:] == -1).all()
    )
    assert sorted(r.ids[0, :3].tolist()) == [0, 1, 2]
    empty = TwoStageSearcher(codes[:0], desc[:0], SearchConfig()).search(qc[:1], qd[:1], 2)
    assert (empty.ids == -1).all()


RECALL_FLOOR = 0.97  # top-1 of the approximate index equals top-1 with the exact flat index


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_index_recall_against_flat(medium, index):
    """Synthetic 20 k-place map with route/region structure, 300 revisit queries."""
    codes, desc, qc, qd, _ = medium
    exact = TwoStageSearcher(codes, desc, SearchConfig(index="flat")).search(qc, qd, 10)
    approx_searcher = TwoStageSearcher(codes, desc, SearchConfig(index=index))
    assert approx_searcher.index_kind == index
    approx = approx_searcher.search(qc, qd, 10)
    top1 = np.mean(approx.ids[:, 0] == exact.ids[:, 0])
    recall10 = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.ids, exact.ids)])
    assert top1 >= RECALL_FLOOR, f"{index}: top-1 agreement with flat {top1:.3f} < {RECALL_FLOOR}"
    assert recall10 >= RECALL_FLOOR, f"{index}: recall@10 against flat {recall10:.3f} < {RECALL_FLOOR}"


def test_two_stage_top1_matches_exhaustive_float_on_synthetic_map(medium):
    codes, desc, qc, qd, _ = medium
    s = TwoStageSearcher(codes, desc.astype(np.float16), SearchConfig())
    two = s.search(qc, qd, 10)
    ref = s.float_search(qd, 10)
    hamming_only = np.argmin(np.bitwise_count(codes[None, :, :] ^ qc[:, None, :]).sum(-1), axis=1)
    assert np.mean(two.ids[:, 0] == ref.ids[:, 0]) >= 0.99
    # The re-rank is what makes it exact: Hamming order alone disagrees often on these maps.
    assert np.mean(hamming_only == ref.ids[:, 0]) < 0.8


def test_adaptive_pool_follows_the_hamming_distribution(small):
    codes, desc, qc, qd, _ = small
    cfg = SearchConfig(min_candidates=4, max_candidates=50, hamming_margin=10)
    s = TwoStageSearcher(codes, desc, cfg)
    r = s.search(qc, qd, 3)
    ham = np.sort(np.bitwise_count(codes[None] ^ qc[:, None]).sum(-1), axis=1)
    within = (ham <= ham[:, 2:3] + 10).sum(1)  # within the margin of the 3rd best code
    np.testing.assert_array_equal(r.pool, np.clip(within, 4, 50))
    # An ambiguous query (60 places share its code) takes the largest pool; a clear one the smallest.
    ambiguous = codes.copy()
    ambiguous[:60] = codes[0]
    s2 = TwoStageSearcher(ambiguous, desc, cfg)
    assert s2.search(codes[:1], desc[:1], 1).pool[0] == 50
    assert s2.search(codes[200:201], desc[200:201], 1).pool[0] == 4
    fixed = TwoStageSearcher(codes, desc, SearchConfig(adaptive=False, candidates=17)).search(qc, qd, 3)
    assert (fixed.pool == 17).all()
    # The pool never holds fewer than k candidates.
    assert (
        TwoStageSearcher(codes, desc, SearchConfig(adaptive=False, candidates=2)).search(qc, qd, 5).pool == 5
    ).all()


def test_margin_calibration_covers_the_float_neighbour(medium):
    codes, desc, qc, qd, _ = medium
    s = TwoStageSearcher(codes, desc, SearchConfig())
    dev, test = slice(0, 150), slice(150, 300)
    margin = calibrate_hamming_margin(s, qc[dev], qd[dev], quantile=0.99)
    gaps = hamming_gaps(s, qc[test], qd[test])
    assert 0 <= margin <= 128
    assert np.mean(gaps <= margin) >= 0.95


def test_added_places_are_searchable_at_once_and_retrain_happens(medium):
    codes, desc, qc, qd, _ = medium
    n0 = 4000
    cfg = SearchConfig(index="ivf", retrain_min=500, retrain_ratio=0.2)
    s = TwoStageSearcher(codes[:n0], desc[:n0], cfg)
    assert s.index_kind == "ivf" and s.index_params["nlist"] > 1
    nlist_before = s.index_params["nlist"]
    for start in range(n0, n0 + 900, 100):
        s.add(codes[start : start + 100], desc[start : start + 100])
        probe = start + 57
        r = s.search(codes[probe : probe + 1], desc[probe : probe + 1], 1)
        assert r.ids[0, 0] == probe and r.scores[0, 0] > 0.999
    assert s.size == n0 + 900
    # The tail reached max(500, 0.2 * 4000) = 800 places after the 8th add: rebuilt over 4800 places,
    # then the 9th add went to the new tail.
    assert s.indexed == 4800
    assert s.index_params["nlist"] >= nlist_before


def test_slam_growth_from_empty_switches_index_kind_by_size():
    codes, desc, qc, qd, _ = synthetic.small_map(MEDIUM, 4000, 100)
    s = TwoStageSearcher(codes[:0], desc[:0], SearchConfig(flat_max=3000))
    for start in range(0, 4000, 500):
        s.add(codes[start : start + 500], desc[start : start + 500])
        assert s.index_kind == ("flat" if s.size <= 3000 else "ivf")
    assert s.size == 4000 and s.indexed == 3500  # rebuilt as IVF at 3500; the last 500 are in the tail
    ref = s.float_search(qd, 1)
    assert np.mean(s.search(qc, qd, 1).ids[:, 0] == ref.ids[:, 0]) >= 0.97


@pytest.mark.parametrize(
    "call, pattern",
    [
        (
            lambda s, c, d: s.search(c, np.where(np.arange(d.shape[1]) == 3, np.nan, d), 1),
            "query_desc row 0 contains NaN",
        ),
        (lambda s, c, d: s.search(c, d * np.inf, 1), "query_desc row 0 contains NaN or Inf"),
        (lambda s, c, d: s.search(c, d.astype(np.int32), 1), "query_desc must be float"),
        (lambda s, c, d: s.search(c, d[0], 1), r"query_desc must be 2-D .*x\[None\]"),
        (lambda s, c, d: s.search(c, d[:, :10], 1), "query_desc has dimension 10"),
        (lambda s, c, d: s.search(c.astype(np.int8), d, 1), "query_codes must be packed uint8"),
        (lambda s, c, d: s.search(c[:, :3], d, 1), "query_codes has 3 bytes per code"),
        (lambda s, c, d: s.search(np.concatenate([c, c]), d, 1), "row counts disagree"),
        (lambda s, c, d: s.search(c, d * 3, 1), "query_desc row 0 has L2 norm"),
        (lambda s, c, d: s.search(c, d, 0), "k must be a positive int"),
        (lambda s, c, d: s.float_search(d, True), "k must be a positive int"),
        (lambda s, c, d: s.add(c, np.full_like(d, np.nan)), "desc row 0 contains NaN"),
        (lambda s, c, d: TwoStageSearcher(c, np.full_like(d, np.nan)), "desc row 0 contains NaN"),
    ],
)
def test_bad_inputs_are_refused_with_the_argument_named(small, call, pattern):
    codes, desc, qc, qd, _ = small
    s = TwoStageSearcher(codes, desc, SearchConfig())
    with pytest.raises(ValueError, match=pattern):
        call(s, qc[:1], qd[:1])
    assert s.size == len(codes)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"index": "lsh"}, "SearchConfig.index must be one of"),
        ({"candidates": 0}, "SearchConfig.candidates must be >= 1"),
        ({"threads": 1.5}, "SearchConfig.threads must be an int"),
        ({"hamming_margin": -1}, "SearchConfig.hamming_margin must be >= 0"),
        ({"adaptive": "yes"}, "SearchConfig.adaptive must be a bool"),
        ({"retrain_ratio": 0}, "SearchConfig.retrain_ratio must be > 0"),
    ],
)
def test_bad_config_is_refused(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SearchConfig(**kwargs)


def test_stored_index_is_reused_and_extended_by_appends(tmp_path, medium, monkeypatch):
    codes, desc, qc, qd, _ = medium
    n = 6000
    m = MapDB.build(
        tmp_path / "m", codes[:n], desc[:n], [PlaceRecord()] * n, fingerprint="syn", encoder_config={}
    )
    first = TwoStageSearcher.from_map(m, SearchConfig(index="ivf", nlist=32, nprobe=8))
    assert first.save_index(m)
    expected = first.search(qc, qd, 5)

    def no_training(*args, **kwargs):
        raise AssertionError("the stored index should have been reused, not rebuilt")

    monkeypatch.setattr(binary_index, "build", no_training)
    loaded = MapDB.load(tmp_path / "m", expected_fingerprint="syn")
    assert loaded.index_info == {
        "kind": "ivf",
        "params": {"nlist": 32, "nprobe": 8, "pca_dim": 0},
        "ntotal": n,
    }
    again = TwoStageSearcher.from_map(loaded, SearchConfig())  # "auto" reuses whatever is stored
    assert again.index_kind == "ivf" and again.indexed == n
    got = again.search(qc, qd, 5)
    np.testing.assert_array_equal(got.ids, expected.ids)
    np.testing.assert_array_equal(got.scores, expected.scores)

    loaded.append(codes[n : n + 300], desc[n : n + 300], [PlaceRecord()] * 300)
    grown = TwoStageSearcher.from_map(MapDB.load(tmp_path / "m"), SearchConfig())
    assert grown.size == n + 300 and grown.indexed == n  # appended places sit in the flat tail
    probe = n + 123
    assert grown.search(codes[probe : probe + 1], desc[probe : probe + 1], 1).ids[0, 0] == probe
    # Naming another kind rebuilds instead of reusing.
    with pytest.raises(AssertionError, match="should have been reused"):
        TwoStageSearcher.from_map(loaded, SearchConfig(index="hnsw"))


def test_pack_codes_is_numpy_big_endian_packbits():
    x = np.array([[1.0, -1.0, 0.0, -0.5, 2.0, -3.0, 0.1, -0.1]])
    assert pack_codes(x).tolist() == [[0b10101010]]


@pytest.mark.parametrize("rows", [500, 40])  # more rows than dimensions, and fewer (Gram path)
def test_coarse_quantizer_pca_keeps_the_principal_subspace(rows):
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((64, 8)))[0]  # an 8-D subspace of 64-D
    x = (rng.standard_normal((rows, 8)) * np.arange(8, 0, -1)) @ basis.T + 5.0
    x = (x + 1e-3 * rng.standard_normal(x.shape)).astype(np.float32)
    pca = binary_index._fit_pca(x, 8)
    axes = faiss.vector_to_array(pca.A).reshape(pca.d_out, pca.d_in)
    assert np.linalg.norm(axes @ basis) ** 2 / 8 > 0.999  # the same subspace
    np.testing.assert_allclose(pca.apply(x).mean(axis=0), 0, atol=1e-3)  # centred



def test_fetching_few_candidates_first_changes_nothing(medium, monkeypatch):
    """Stage 1 fetches 64 candidates and searches again only for queries whose pool may be larger;
    the results must equal those of fetching max_candidates at once."""
    from vpr_core.search import searcher as searcher_module

    codes, desc, qc, qd, _ = medium
    cfg = SearchConfig(hamming_margin=40, max_candidates=150)
    s = TwoStageSearcher(codes, desc, cfg)
    two_step = s.search(qc, qd, 5)
    assert (two_step.pool > 64).any() and (two_step.pool <= 64).any()  # both paths taken
    monkeypatch.setattr(searcher_module, "_FIRST_FETCH", 10**6)
    one_step = s.search(qc, qd, 5)
    np.testing.assert_array_equal(two_step.pool, one_step.pool)
    np.testing.assert_array_equal(two_step.ids, one_step.ids)
    np.testing.assert_array_equal(two_step.scores, one_step.scores)


def test_search_leaves_the_process_thread_settings_alone(small):
    """faiss shares torch's OpenMP runtime when torch is imported first: a search that set faiss's
    threads without restoring them would silently change the encoder's."""
    codes, desc, qc, qd, _ = small
    s = TwoStageSearcher(codes, desc, SearchConfig(threads=1))
    with thread_counts(3):
        s.search(qc[:1], qd[:1], 3)
        s.search(qc, qd, 3)
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (3, 3)
