"""`vpr build-map` on real corridor images: a stopped build resumes to the same map, a build from
another source is refused, and a trained stage-1 index is stored with the map."""

from __future__ import annotations

import subprocess
import sys
from itertools import islice

import numpy as np
import pytest
import torch

from conftest import REPO
from vpr_core.build_map import BuildConfig, build_map
from vpr_core.data import open_dataset
from vpr_core.engine import EncoderConfig, create_encoder
from vpr_core.mapdb import MapDB
from vpr_core.search import SearchConfig, TwoStageSearcher

FRAMES = 24


class FirstFrames:
    """The first `n` frames of a source; `stop_at` raises in the middle like a Ctrl-C would."""

    def __init__(self, source, n: int, stop_at: int | None = None) -> None:
        self.source, self.n, self.stop_at = source, n, stop_at
        self.name = source.name

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, frame in enumerate(islice(self.source, self.n)):
            if i == self.stop_at:
                raise KeyboardInterrupt
            yield frame


@pytest.fixture(scope="module")
def corridor(data_dir):
    torch.set_num_threads(1)
    return open_dataset(f"vpr_bench:{data_dir / 'corridor'}")


@pytest.fixture(scope="module")
def encoder():
    return create_encoder(EncoderConfig(preset="lite0", backend="torch", threads=1))


@pytest.fixture(scope="module")
def one_shot(corridor, encoder, tmp_path_factory):
    return build_map(FirstFrames(corridor.database, FRAMES), tmp_path_factory.mktemp("one") / "map", encoder,
                     BuildConfig(batch_size=4, commit_every=8))


def test_a_stopped_build_resumes_to_the_same_map(corridor, encoder, one_shot, tmp_path):
    config = BuildConfig(batch_size=4, commit_every=8)
    with pytest.raises(KeyboardInterrupt):
        build_map(FirstFrames(corridor.database, FRAMES, stop_at=14), tmp_path / "map", encoder, config)
    partial = MapDB.load(tmp_path / "map").size
    assert 0 < partial < FRAMES
    resumed = build_map(FirstFrames(corridor.database, FRAMES), tmp_path / "map", encoder, config)
    assert resumed.size == one_shot.size == FRAMES
    assert [r.source for r in resumed.records(range(FRAMES))] == [r.source for r in one_shot.records(range(FRAMES))]
    np.testing.assert_array_equal(np.asarray(resumed.codes), np.asarray(one_shot.codes))
    np.testing.assert_allclose(np.asarray(resumed.desc, np.float32), np.asarray(one_shot.desc, np.float32), atol=1e-3)


def test_resuming_from_another_source_is_refused(corridor, encoder, one_shot, tmp_path):
    build_map(FirstFrames(corridor.database, 4), tmp_path / "map", encoder, BuildConfig(batch_size=4))
    with pytest.raises(ValueError, match="another source"):
        build_map(FirstFrames(corridor.queries, 8), tmp_path / "map", encoder, BuildConfig(batch_size=4))
    assert MapDB.load(tmp_path / "map").size == 4


def test_a_trained_index_is_stored_and_reused(corridor, encoder, tmp_path):
    search = SearchConfig(index="ivf", nlist=2, nprobe=2, pca_dim=0)
    mapdb = build_map(FirstFrames(corridor.database, FRAMES), tmp_path / "map", encoder,
                      BuildConfig(batch_size=8, search=search))
    assert mapdb.index_info is not None and mapdb.index_info["kind"] == "ivf"
    assert mapdb.index_info["ntotal"] == FRAMES
    searcher = TwoStageSearcher.from_map(MapDB.load(tmp_path / "map"), search)
    assert searcher.index_kind == "ivf" and searcher.indexed == FRAMES
    codes, desc = encoder.encode([f.rgb for f in islice(corridor.database, 3)])
    assert list(searcher.search(codes, desc, k=1).ids[:, 0]) == [0, 1, 2]


def test_cli_builds_a_map_from_an_image_folder(tmp_path):
    out = tmp_path / "map"
    run = subprocess.run([sys.executable, "-m", "vpr_core.cli", "build-map", "--source",
                          f"folder:{REPO.parent / 'shared' / 'data' / 'corridor' / 'ref'}", "--out", str(out),
                          "--preset", "lite0", "--backend", "onnxruntime", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert MapDB.load(out).size == len(list((REPO.parent / "shared" / "data" / "corridor" / "ref").iterdir()))
