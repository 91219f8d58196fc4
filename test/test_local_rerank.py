"""FoL++ local re-ranking: the mutual-NN reliability-weighted score, the adaptive candidate scheduler,
the third search stage, optional local features in maps, the local branch on real images and its
ONNX export parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vpr_core.data.images import read_rgb
from vpr_core.mapdb import LocalFeatures, MapDB, MapError, PlaceRecord
from vpr_core.search import SearchConfig, SearchResult, TwoStageSearcher
from vpr_core.search.local_rerank import LocalReranker, LocalRerankConfig, mutual_nn_scores, pool_size

pytestmark = pytest.mark.usefixtures("module_torch_threads")
DIM, BITS = 32, 64


def unit(*rows: list[float]) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def onehot(indices: list[int], d: int = 8) -> torch.Tensor:
    return torch.eye(d)[indices]


# ---- score ----------------------------------------------------------------------------------
def test_identical_patch_sets_score_one_and_order_does_not_matter():
    q = onehot([0, 1, 2, 3])
    rel = torch.tensor([0.9, 0.5, 0.3, 0.7])
    cands = torch.stack([q, q[[3, 1, 0, 2]]])
    scores = mutual_nn_scores(q, rel, cands, torch.stack([rel, rel[[3, 1, 0, 2]]]))
    assert torch.allclose(scores, torch.ones(2), atol=1e-6)


def test_matches_are_weighted_by_both_reliabilities():
    q = onehot([0, 1, 2, 3])
    q_rel = torch.tensor([0.9, 0.9, 0.1, 0.1])
    # Candidate 0 shares the query's reliable patches, candidate 1 its unreliable ones.
    cands = torch.stack([onehot([0, 1, 5, 6]), onehot([2, 3, 5, 6])])
    scores = mutual_nn_scores(q, q_rel, cands, torch.ones(2, 4))
    norm = np.sqrt(2.0 * 4.0)
    assert scores[0].item() == pytest.approx(2 * np.sqrt(0.9) / norm, abs=1e-6)
    assert scores[1].item() == pytest.approx(2 * np.sqrt(0.1) / norm, abs=1e-6)
    # The candidate's reliability counts too: halving it on the matched patches lowers the score.
    lower = mutual_nn_scores(q, q_rel, cands[:1], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))
    assert lower.item() == pytest.approx(2 * np.sqrt(0.45) / np.sqrt(2.0 * 3.0), abs=1e-6)


def test_only_mutual_nearest_neighbours_count():
    q = unit([1, 0, 0, 0], [1, 0.5, 0, 0])          # both query patches are nearest to candidate patch 0
    c = unit([1, 0, 0, 0], [0, 0, 0, 1])[None]
    score = mutual_nn_scores(q, torch.ones(2), c, torch.ones(1, 2))
    assert score.item() == pytest.approx(1.0 / 2.0, abs=1e-6)   # q0<->c0 only; q1->c0 is not mutual
    strict = mutual_nn_scores(q, torch.ones(2), c, torch.ones(1, 2), min_similarity=1.01)
    assert strict.item() == 0.0


# ---- scheduler ------------------------------------------------------------------------------
def test_pool_size_follows_the_similarity_distribution():
    cfg = LocalRerankConfig(margin=0.05, min_candidates=1, max_candidates=10)
    peaked = np.array([0.90, 0.60, 0.55, 0.50, 0.45], np.float32)
    flat = np.array([0.90, 0.89, 0.88, 0.87, 0.80], np.float32)
    assert pool_size(peaked, cfg) == 1
    assert pool_size(flat, cfg) == 4
    assert pool_size(np.full(30, 0.5, np.float32), cfg) == 10                         # clamped to max
    assert pool_size(peaked, LocalRerankConfig(margin=0.05, min_candidates=3, max_candidates=10)) == 3
    assert pool_size(np.array([0.9, 0.89, -np.inf], np.float32), LocalRerankConfig(margin=1.0)) == 2
    assert pool_size(np.full(3, -np.inf, np.float32), cfg) == 0


def local_set(n: int, patches: int = 6, dim: int = 8, seed: int = 0) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    desc = rng.standard_normal((n, patches, dim)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=2, keepdims=True)
    pos = np.stack(np.meshgrid(np.arange(patches), [0], indexing="ij"), -1).reshape(patches, 2)
    return LocalFeatures(desc.astype(np.float16), np.full((n, patches), 0.8, np.float16),
                         np.broadcast_to(pos, (n, patches, 2)).astype(np.int16))


def test_rerank_flips_an_aliased_pair_and_skips_easy_queries():
    db = local_set(4)
    query = db.take(np.array([2, 0]))                # query 0 is place 2, query 1 is place 0
    result = SearchResult(ids=np.array([[1, 2, 3, 0], [0, 3, 1, 2]]),
                          scores=np.array([[0.80, 0.79, 0.50, 0.40], [0.95, 0.50, 0.40, 0.30]], np.float32),
                          hamming=np.zeros((2, 4), np.int32))
    out = LocalReranker(db, LocalRerankConfig(margin=0.05, local_weight=0.5)).rerank(result, query, 2)
    assert out.ids[0].tolist() == [2, 1]             # near-tie re-ranked: the local match wins
    assert out.pool.tolist() == [2, 0]               # the easy query was not re-ranked at all
    assert out.ids[1].tolist() == [0, 3] and out.scores[1].tolist() == pytest.approx([0.95, 0.50])
    assert out.scores[0, 0] == pytest.approx(0.5 * 0.79 + 0.5 * 1.0, abs=2e-3)


# ---- maps and the third stage ---------------------------------------------------------------
def build_map(path: Path, n: int = 12) -> tuple[MapDB, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    desc = rng.standard_normal((n, DIM)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    codes = np.packbits(desc @ rng.standard_normal((DIM, BITS)) >= 0, axis=1)
    records = [PlaceRecord(stamp_ns=i, source=f"{i}.png", camera="c", pose=None, latlon=None) for i in range(n)]
    return MapDB.build(path, codes, desc, records, fingerprint="enc", encoder_config={}), codes, desc


def test_maps_with_and_without_local_features_both_load_and_search(tmp_path):
    old, codes, desc = build_map(tmp_path / "old")
    assert old.local_features is None and old.local_info is None
    plain = TwoStageSearcher.from_map(MapDB.load(tmp_path / "old"), SearchConfig())
    assert plain.local is None
    query_local = local_set(12, seed=3).take(np.array([5]))
    same = plain.search(codes[5:6], desc[5:6], 3, query_local=query_local)   # no local stage: two-stage
    assert same.ids[0, 0] == 5 and np.array_equal(same.ids, plain.search(codes[5:6], desc[5:6], 3).ids)

    m, codes, desc = build_map(tmp_path / "new")
    local = local_set(12, seed=3)
    m.store_local_features(local.desc, local.rel, local.pos, fingerprint="branch-1")
    loaded = MapDB.load(tmp_path / "new")                                       # verify=True: checksums read
    assert loaded.local_info == {"patches": 6, "dim": 8, "count": 12, "fingerprint": "branch-1"}
    assert np.array_equal(loaded.local_features.desc, local.desc)
    assert np.array_equal(loaded.local_features.pos, local.pos)
    searcher = TwoStageSearcher.from_map(loaded, SearchConfig(), LocalRerankConfig(margin=1.0, max_candidates=5))
    assert searcher.local is not None and searcher.local.covered == 12
    out = searcher.search(codes[5:6], desc[5:6], 3, query_local=query_local)
    assert out.ids[0, 0] == 5 and out.pool[0] == 5

    # Appending places keeps the stored local features for the places they cover.
    loaded.append(codes[:2], desc[:2], [PlaceRecord(stamp_ns=99, source="x", camera="c", pose=None, latlon=None)] * 2)
    again = MapDB.load(tmp_path / "new")
    assert again.size == 14 and again.local_info["count"] == 12
    assert MapDB.load(tmp_path / "old").local_features is None


def test_damaged_or_mismatched_local_features_are_refused(tmp_path):
    m, _, _ = build_map(tmp_path / "m")
    local = local_set(12)
    with pytest.raises(MapError, match="for 13 places"):
        extra = local_set(13)
        m.store_local_features(extra.desc, extra.rel, extra.pos, fingerprint="b")
    m.store_local_features(local.desc, local.rel, local.pos, fingerprint="b")
    m.store_local_features(local.desc, local.rel, local.pos, fingerprint="b2")      # replaces the first set
    assert sorted(p.name for p in (tmp_path / "m").glob("local_*.npy")) == [
        "local_desc.2.npy", "local_pos.2.npy", "local_rel.2.npy"]
    desc_file = tmp_path / "m" / "local_desc.2.npy"
    data = bytearray(desc_file.read_bytes())
    data[-5] ^= 0xFF
    desc_file.write_bytes(bytes(data))
    with pytest.raises(MapError, match="checksum mismatch"):
        MapDB.load(tmp_path / "m")


# ---- the branch on real images, and its export --------------------------------------------------
@pytest.fixture(scope="module")
def lite0():
    from vpr_core.model import build_model

    return build_model("lite0")


def test_local_encoder_on_real_images_keeps_reliable_patches(lite0, data_dir):
    from vpr_core.model.local_branch import LocalBranch, LocalBranchConfig, LocalEncoder

    images = [read_rgb(data_dir / "corridor" / "ref" / f"{i:07d}.jpg") for i in (0, 40, 80)]
    branch = LocalBranch(LocalBranchConfig(in_channels=1280, dim=64, keep_fraction=0.4))
    with torch.no_grad():
        branch.reliability[2].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    encoder = LocalEncoder(lite0, branch)
    codes, desc, kept = encoder.encode_local(images)
    ldesc, rel, pos = kept.desc, kept.rel, kept.pos
    assert encoder.grid == (8, 10) and encoder.keep == 32
    assert codes.shape == (3, 64) and desc.shape == (3, 1280)
    assert ldesc.shape == (3, 32, 64) and ldesc.dtype == np.float16 and rel.shape == (3, 32)
    assert np.allclose(np.linalg.norm(ldesc.astype(np.float32), axis=2), 1, atol=2e-3)
    assert (np.diff(rel.astype(np.float32), axis=1) <= 0).all()                 # most reliable first
    assert (pos[..., 0] < 8).all() and (pos[..., 1] < 10).all()
    assert all(len({tuple(p) for p in image}) == 32 for image in pos)            # distinct patches
    # Each image's local score is highest against itself.
    feats = LocalFeatures(ldesc, rel, pos)
    for i in range(3):
        scores = mutual_nn_scores(torch.from_numpy(ldesc[i].astype(np.float32)),
                                  torch.from_numpy(rel[i].astype(np.float32)),
                                  torch.from_numpy(feats.desc.astype(np.float32)),
                                  torch.from_numpy(feats.rel.astype(np.float32)))
        assert int(scores.argmax()) == i and scores[i].item() == pytest.approx(1.0, abs=2e-3)


def test_local_branch_checkpoint_round_trip_and_backbone_check(lite0, tmp_path):
    from vpr_core.model import WeightsError
    from vpr_core.model.local_branch import (LocalBranch, LocalBranchConfig, branch_fingerprint,
                                             load_local_branch, save_local_branch)

    branch = LocalBranch(LocalBranchConfig(dim=16, seed=3))
    save_local_branch(branch, tmp_path / "b", backbone_digest=lite0.backbone_digest())
    again = load_local_branch(tmp_path / "b", lite0)
    assert branch_fingerprint(again) == branch_fingerprint(branch)
    save_local_branch(branch, tmp_path / "other", backbone_digest="0" * 64)
    with pytest.raises(WeightsError, match="another backbone"):
        load_local_branch(tmp_path / "other", lite0)


def test_export_with_local_outputs_matches_torch(lite0, tmp_path):
    import onnxruntime as ort

    from vpr_core.engine.local_export import LOCAL_OUTPUT_NAMES, export_local_onnx
    from vpr_core.model.local_branch import LocalBranch, LocalBranchConfig

    branch = LocalBranch(LocalBranchConfig(dim=32))
    with torch.no_grad():                            # a non-constant reliability map, so its check can fail
        branch.reliability[2].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    description = export_local_onnx(lite0, branch, tmp_path / "local.onnx")
    check = description["check"]
    assert check["min_descriptor_cosine"] >= 0.999 and check["min_local_descriptor_cosine"] >= 0.999
    assert check["max_reliability_abs_diff"] <= 1e-3
    assert [o["name"] for o in description["outputs"]] == list(LOCAL_OUTPUT_NAMES)
    session = ort.InferenceSession(str(tmp_path / "local.onnx"), providers=["CPUExecutionProvider"])
    outs = session.run(None, {"images": np.zeros((1, 3, 240, 320), np.float32)})
    assert outs[2].shape == (1, 80, 32) and outs[3].shape == (1, 80)
    assert np.ptp(outs[3]) > 0.01


def test_add_local_features_to_a_built_map_and_search_it(lite0, data_dir, tmp_path):
    import shutil

    from vpr_core.add_local import add_local_features
    from vpr_core.build_map import BuildConfig, build_map
    from vpr_core.data import open_source
    from vpr_core.engine import EncoderConfig
    from vpr_core.engine.torch_backend import create
    from vpr_core.model.local_branch import LocalBranch, LocalBranchConfig, LocalEncoder

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (0, 30, 60, 90):
        shutil.copy(data_dir / "corridor" / "ref" / f"{i:07d}.jpg", folder / f"{i:07d}.jpg")
    encoder = create(EncoderConfig(preset="lite0", backend="torch", device="cpu"), lite0)
    mapdb = build_map(open_source(f"folder:{folder}"), tmp_path / "map", encoder, BuildConfig())
    assert mapdb.size == 4 and mapdb.local_features is None
    local = LocalEncoder(lite0, LocalBranch(LocalBranchConfig(dim=32)))
    assert add_local_features(mapdb, open_source(f"folder:{folder}"), local) == 4
    loaded = MapDB.load(tmp_path / "map", expected_fingerprint=local.fingerprint)
    assert loaded.local_info["count"] == 4 and loaded.local_info["fingerprint"] == local.local_fingerprint
    searcher = TwoStageSearcher.from_map(loaded, SearchConfig(), LocalRerankConfig(margin=1.0, max_candidates=4))
    query = read_rgb(data_dir / "corridor" / "query" / "0000060.jpg")
    codes, desc, kept = local.encode_local([query])
    ldesc, rel, pos = kept.desc, kept.rel, kept.pos
    out = searcher.search(codes, desc, 2, query_local=LocalFeatures(ldesc, rel, pos))
    assert out.pool[0] == 4 and loaded.records([out.ids[0, 0]])[0].source == "0000060.jpg"
    (folder / "0000090.jpg").unlink()
    with pytest.raises(MapError, match="not in the source"):
        add_local_features(loaded, open_source(f"folder:{folder}"), local)


def test_eval_reports_local_reranking_next_to_two_stage(lite0, data_dir):
    from vpr_core.data import EvalDataset, ImageFiles, open_dataset
    from vpr_core.engine import EncoderConfig
    from vpr_core.engine.torch_backend import create
    from vpr_core.eval.evaluate import evaluate
    from vpr_core.eval.recall_table import format_table
    from vpr_core.eval.recall import recall_at_n
    from vpr_core.model.local_branch import LocalBranch, LocalBranchConfig, LocalEncoder

    full = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    subset = EvalDataset(name="corridor subset", database=ImageFiles(full.database.root, full.database.files[:8]),
                         queries=ImageFiles(full.queries.root, full.queries.files[:4]),
                         positive_lists=[p[p < 8] for p in full.positive_lists[:4]], rule=full.rule)
    encoder = create(EncoderConfig(preset="lite0", backend="torch", device="cpu"), lite0)
    local = LocalEncoder(lite0, LocalBranch(LocalBranchConfig(dim=32)))
    config = LocalRerankConfig(margin=1.0, max_candidates=5, local_weight=0.5)
    results = evaluate(subset, encoder, SearchConfig(), ns=[1, 5], examples=0, local=local, local_config=config)
    loc = results["methods"]["local"]
    assert set(results["methods"]) == {"float", "two_stage", "local"}
    assert loc["mean_rerank_pool"]["k=1"] == 5.0                    # margin 1: every query re-ranks all 5
    assert loc["bytes_per_place"] == 32 * (2 * 32 + 6) and loc["patches_per_place"] == 32
    for k in (1, 5):
        assert loc["recall"][f"R@{k}"] == recall_at_n(results["predictions"]["local"][k], subset.positive_lists, [k])[k]
    assert "local re-ranking: mean candidates re-ranked" in format_table(results)
