"""The Milvus map backend on Milvus Lite, against the directory map built from the same real images
(Corridor): same search results, exact push/pull round trip, a foreign encoder refused, a stopped
build resumed without duplicate places."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from frame_sources import FirstFrames
from vpr_core.adapt import AdaptConfig
from vpr_core.build_map import BuildConfig, build_map
from vpr_core.data import open_dataset
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.mapdb import MapDB, MapError
from vpr_core.mapstore import create_map, open_map, open_searcher
from vpr_core.mapstore.transfer import pull, push
from vpr_core.mapstore.uri import parse_milvus_uri, place_id
from vpr_core.search import SearchConfig

QUERIES = 40
RESUME_FRAMES = 24


@pytest.fixture(scope="module")
def corridor(data_dir, tmp_path_factory, module_torch_threads):
    """The Corridor reference images as a directory map and, pushed from it, a Milvus Lite collection."""
    dataset = open_dataset(f"vpr_bench:{data_dir / 'corridor'}")
    encoder = create_encoder(EncoderConfig(preset="lite0", backend="torch", threads=1))
    root = tmp_path_factory.mktemp("milvus")
    directory = build_map(dataset.database, root / "map", encoder, BuildConfig(adapt=AdaptConfig(method="none")))
    uri = f"milvus-lite:{root / 'maps.db'}/corridor"
    push(root / "map", uri).close()
    queries = list(islice(dataset.queries, QUERIES))
    codes, desc = encoder.encode([f.rgb for f in queries])
    return {"dataset": dataset, "encoder": encoder, "root": root, "dir": directory, "uri": uri,
            "queries": queries, "codes": codes, "desc": desc}


@pytest.mark.parametrize("k", [1, 5, 21])
def test_collection_search_equals_directory_search(corridor, k):
    collection = open_map(corridor["uri"], expected_fingerprint=corridor["encoder"].fingerprint)
    assert collection.size == corridor["dir"].size
    want = open_searcher(corridor["dir"], SearchConfig()).search(corridor["codes"], corridor["desc"], k)
    got = open_searcher(collection, SearchConfig()).search(corridor["codes"], corridor["desc"], k)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.hamming, want.hamming)
    np.testing.assert_array_equal(got.pool, want.pool)


def test_localizer_on_a_collection_gives_the_directory_results(corridor):
    frames = corridor["queries"][:12]
    results = {}
    for name, where in (("dir", str(corridor["root"] / "map")), ("milvus", corridor["uri"])):
        localizer = Localizer(LocalizerConfig(map_path=where), encoder=corridor["encoder"])
        results[name] = localizer.process(frames)
        localizer.map.close()
    for a, b in zip(results["dir"], results["milvus"]):
        assert [(m.place_id, m.score, m.hamming, m.record) for m in a.matches] == \
               [(m.place_id, m.score, m.hamming, m.record) for m in b.matches]
        assert (a.accepted, a.margin) == (b.accepted, b.margin)
    assert any(r.accepted for r in results["milvus"])


def test_push_then_pull_gives_back_the_same_map(corridor, tmp_path):
    pulled = pull(corridor["uri"], tmp_path / "copy")
    original: MapDB = corridor["dir"]
    again = MapDB.load(tmp_path / "copy")
    for m in (pulled, again):
        assert (m.size, m.bits, m.dim, m.fingerprint, m.frame_id) == \
               (original.size, original.bits, original.dim, original.fingerprint, original.frame_id)
        assert m.encoder_config == original.encoder_config
        np.testing.assert_array_equal(np.asarray(m.codes), np.asarray(original.codes))
        np.testing.assert_array_equal(np.asarray(m.desc).view(np.uint16), np.asarray(original.desc).view(np.uint16))
        assert m.records(range(m.size)) == original.records(range(original.size))


def test_pushing_again_adds_no_place(corridor):
    again = push(corridor["root"] / "map", corridor["uri"])
    assert again.size == corridor["dir"].size
    np.testing.assert_array_equal(again.all_ids(), np.arange(corridor["dir"].size))
    again.close()


def test_a_map_of_another_encoder_is_refused(corridor):
    with pytest.raises(MapError, match="fingerprint"):
        open_map(corridor["uri"], expected_fingerprint="0" * 64)
    with pytest.raises(MapError, match="fingerprint"):
        create_map(corridor["uri"], fingerprint="0" * 64, encoder_config={}, bits=512, dim=corridor["dir"].dim)
    with pytest.raises(MapError, match="dim"):
        create_map(corridor["uri"], fingerprint=corridor["dir"].fingerprint, encoder_config={}, bits=512, dim=64)
    with pytest.raises(MapError, match="fingerprint"):
        Localizer(LocalizerConfig(map_path=corridor["uri"]),
                  encoder=create_encoder(EncoderConfig(preset="lite0-mix", backend="torch", threads=1)))


def test_a_stopped_build_resumes_without_duplicates(corridor):
    uri = f"milvus-lite:{corridor['root'] / 'maps.db'}/resumed?writer=3"
    config = BuildConfig(batch_size=4, commit_every=8)
    frames = corridor["dataset"].database
    with pytest.raises(KeyboardInterrupt):
        build_map(FirstFrames(frames, RESUME_FRAMES, stop_at=14), uri, corridor["encoder"], config)
    partial = open_map(uri)
    assert 0 < partial.writer_count < RESUME_FRAMES
    resumed = build_map(FirstFrames(frames, RESUME_FRAMES), uri, corridor["encoder"], config)
    ids = resumed.all_ids()
    np.testing.assert_array_equal(ids, [place_id(3, i) for i in range(RESUME_FRAMES)])
    original = corridor["dir"]
    assert [r.source for r in resumed.records(ids)] == [r.source for r in original.records(range(RESUME_FRAMES))]
    np.testing.assert_array_equal(resumed.vectors(ids, "code"), np.asarray(original.codes[:RESUME_FRAMES]))


@pytest.mark.parametrize("uri, fix", [
    ("milvus://localhost/corridor", "HOST:PORT"),
    ("milvus://localhost:19530/9lives", "collection name"),
    ("milvus-lite:maps.sqlite/corridor", ".db"),
    ("milvus://localhost:19530/corridor?writer=-1", "writer"),
    ("milvus://localhost:19530/corridor?shard=2", "unknown option"),
    ("milvus://localhost:19530/corridor?timeout=0.5", "whole number"),
])
def test_a_bad_uri_names_what_to_change(uri, fix):
    with pytest.raises(MapError, match=fix):
        parse_milvus_uri(uri)
