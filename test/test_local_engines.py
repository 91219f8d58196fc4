"""The FoL++ local branch at run time: every backend computes what torch computes, and the localizer
(shared by the node, replay and the demo) runs the third stage with it.

Real parts: the shipped lite0-nordland heads and lite0-nordland-local branch, real corridor images,
a real map with stored patches, ONNX Runtime on the exported local graph. The TensorRT variant needs
the tensorrt package and a GPU and is reported as skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vpr_core.add_local import add_local_features
from vpr_core.build_map import BuildConfig, build_map
from vpr_core.data import open_source
from vpr_core.data.frame import Frame
from vpr_core.data.images import read_rgb
from vpr_core.engine import EncoderConfig
from vpr_core.engine.local_engines import create_local_encoder
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.mapdb import MapDB
from vpr_core.search import TwoStageSearcher
from vpr_core.search.local_rerank import LocalRerankConfig

REPO = Path(__file__).resolve().parents[1]
HEADS = str(REPO / "checkpoints" / "lite0-nordland")
BRANCH = REPO / "checkpoints" / "lite0-nordland-local"
HAS_TRT_GPU = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def config(backend: str, cache: Path, **fields) -> EncoderConfig:
    return EncoderConfig(checkpoint=HEADS, backend=backend, device="cpu" if backend != "tensorrt" else "cuda",
                         cache_dir=str(cache), **fields)


@pytest.fixture(scope="module")
def images(data_dir):
    return [read_rgb(data_dir / "corridor" / "query" / f"{i:07d}.jpg") for i in range(0, 60, 6)]


def assert_same_outputs(got, ref, min_cosine: float = 0.999) -> None:
    codes, desc, kept = got
    codes_ref, desc_ref, kept_ref = ref
    assert (desc * desc_ref).sum(axis=1).min() >= min_cosine
    assert (np.unpackbits(codes, axis=1) == np.unpackbits(codes_ref, axis=1)).mean() >= 0.99
    same_patch = (kept.pos == kept_ref.pos).all(axis=2)                     # [N, K]: same patch, same rank
    assert same_patch.mean() >= 0.95, same_patch.mean()
    a, b = kept.desc.astype(np.float32), kept_ref.desc.astype(np.float32)
    assert (a * b).sum(axis=2)[same_patch].min() >= min_cosine
    assert np.abs(kept.rel.astype(np.float32) - kept_ref.rel.astype(np.float32))[same_patch].max() <= 2e-3


def test_onnxruntime_local_encoder_matches_torch_and_reuses_its_export(images, tmp_path, caplog):
    reference = create_local_encoder(config("torch", tmp_path), BRANCH)
    with caplog.at_level("INFO", logger="vpr_core.engine"):
        ort_encoder = create_local_encoder(config("onnxruntime", tmp_path), BRANCH)
    assert "exporting the model with its local branch" in caplog.text
    assert ort_encoder.backend == "onnxruntime" and ort_encoder.grid == (8, 10)
    assert ort_encoder.local_fingerprint == reference.local_fingerprint
    assert ort_encoder.fingerprint == reference.fingerprint
    got = ort_encoder.encode_local(images)
    assert_same_outputs(got, reference.encode_local(images))
    codes, desc = ort_encoder.encode(images)                                  # the Encoder contract
    np.testing.assert_array_equal(codes, got[0])
    np.testing.assert_allclose(desc, got[1], atol=1e-6)
    caplog.clear()
    with caplog.at_level("INFO", logger="vpr_core.engine"):
        again = create_local_encoder(config("onnxruntime", tmp_path), BRANCH)
    assert "reusing the local ONNX export" in caplog.text and "exporting" not in caplog.text
    np.testing.assert_allclose(again.encode_local(images[:2])[1], got[1][:2], atol=1e-6)


def test_local_encoder_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="fp32"):
        create_local_encoder(EncoderConfig(checkpoint=HEADS, backend="onnxruntime", device="cuda",
                                           precision="fp16", cache_dir=str(tmp_path)), BRANCH)
    with pytest.raises(ValueError, match="local branch description"):
        create_local_encoder(config("onnxruntime", tmp_path), tmp_path / "no_branch_here")


@pytest.mark.skipif(not HAS_TRT_GPU, reason=f"needs the tensorrt package and a CUDA GPU (tensorrt importable: "
                    f"{importlib.util.find_spec('tensorrt') is not None}, CUDA GPU: {torch.cuda.is_available()})")
def test_tensorrt_local_encoder_matches_torch(images, tmp_path):
    reference = create_local_encoder(config("torch", tmp_path), BRANCH)
    trt_encoder = create_local_encoder(config("tensorrt", tmp_path, max_batch=4), BRANCH)
    assert trt_encoder.backend == "tensorrt"
    assert_same_outputs(trt_encoder.encode_local(images), reference.encode_local(images))


@pytest.fixture(scope="module")
def local_map(data_dir, tmp_path_factory):
    """A map of 24 corridor reference frames with the shipped branch's patches stored."""
    root = tmp_path_factory.mktemp("local_map")
    folder = root / "frames"
    folder.mkdir()
    for i in range(0, 96, 4):
        shutil.copy(data_dir / "corridor" / "ref" / f"{i:07d}.jpg", folder / f"{i:07d}.jpg")
    encoder = create_local_encoder(config("onnxruntime", root / "cache"), BRANCH)
    mapdb = build_map(open_source(f"folder:{folder}"), root / "map", encoder, BuildConfig())
    plain = root / "plain"
    shutil.copytree(root / "map", plain)                                      # the same map without patches
    add_local_features(mapdb, open_source(f"folder:{folder}"), encoder)
    return root / "map", plain, root / "cache"


def test_localizer_runs_the_local_stage_like_the_searcher(local_map, data_dir):
    map_dir, _, cache = local_map
    rerank = LocalRerankConfig(margin=0.05, max_candidates=8)
    localizer = Localizer(LocalizerConfig(map_path=str(map_dir), encoder=config("onnxruntime", cache),
                                          local_branch=str(BRANCH), local_rerank=rerank))
    names = [f"{i:07d}.jpg" for i in range(0, 96, 8)]
    frames = [Frame(index=i, rgb=read_rgb(data_dir / "corridor" / "query" / n), name=n, source=n)
              for i, n in enumerate(names)]
    results = localizer.process(frames)
    assert max(r.local_pool for r in results) > 1, "the local stage re-ranked nothing"
    # The same three stages called directly give the same answers.
    codes, desc, kept = localizer.encoder.encode_local([f.rgb for f in frames])
    searcher = TwoStageSearcher.from_map(MapDB.load(map_dir), localizer.config.search, rerank)
    k = len(results[0].matches)
    direct = searcher.search(codes, desc, k, query_local=kept)
    for row, r in enumerate(results):
        assert [m.place_id for m in r.matches] == list(direct.ids[row, :len(r.matches)])
        np.testing.assert_allclose([m.score for m in r.matches], direct.scores[row, :len(r.matches)], atol=1e-5)
        assert r.local_pool == direct.pool[row]
    # Without the local stage the same map answers with the global two-stage scores.
    plain = Localizer(LocalizerConfig(map_path=str(map_dir), encoder=config("onnxruntime", cache)))
    two_stage = plain.process(frames)
    assert all(r.local_pool == 0 for r in two_stage)
    assert any([m.score for m in a.matches] != [m.score for m in b.matches] for a, b in zip(results, two_stage))


def test_localizer_refuses_a_local_branch_it_cannot_use(local_map):
    map_dir, plain_dir, cache = local_map
    with pytest.raises(ValueError, match="vpr add-local"):
        Localizer(LocalizerConfig(map_path=str(plain_dir), encoder=config("onnxruntime", cache),
                                  local_branch=str(BRANCH)))
    with pytest.raises(ValueError, match="mode 'slam'"):
        LocalizerConfig(mode="slam", encoder=config("onnxruntime", cache), local_branch=str(BRANCH))
