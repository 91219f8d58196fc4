"""`vpr build-map` on real corridor images: a stopped build resumes to the same map, a build from
another source is refused, a trained stage-1 index is stored with the map, and damaged images are
skipped and reported (or stop the build with --on-error stop)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from itertools import islice

import cv2
import numpy as np
import pytest

from conftest import REPO
from frame_sources import FirstFrames
from vpr_core.build_map import SKIP_REPORT, BuildConfig, build_map
from vpr_core.data import DataError, open_source
from vpr_core.data.bag_writer import ImageStream, load_frames, stamps_at, write_bag
from vpr_core.mapdb import MapDB
from vpr_core.search import SearchConfig, TwoStageSearcher

FRAMES = 24


@pytest.fixture(scope="module")
def one_shot(corridor_set, lite0_encoder, tmp_path_factory):
    return build_map(FirstFrames(corridor_set.database, FRAMES), tmp_path_factory.mktemp("one") / "map", lite0_encoder,
                     BuildConfig(batch_size=4, commit_every=8))


def test_a_stopped_build_resumes_to_the_same_map(corridor_set, lite0_encoder, one_shot, tmp_path):
    config = BuildConfig(batch_size=4, commit_every=8)
    with pytest.raises(KeyboardInterrupt):
        build_map(FirstFrames(corridor_set.database, FRAMES, stop_at=14), tmp_path / "map", lite0_encoder, config)
    partial = MapDB.load(tmp_path / "map").size
    assert 0 < partial < FRAMES
    resumed = build_map(FirstFrames(corridor_set.database, FRAMES), tmp_path / "map", lite0_encoder, config)
    assert resumed.size == one_shot.size == FRAMES
    assert [r.source for r in resumed.records(range(FRAMES))] == [r.source for r in one_shot.records(range(FRAMES))]
    np.testing.assert_array_equal(np.asarray(resumed.codes), np.asarray(one_shot.codes))
    np.testing.assert_allclose(np.asarray(resumed.desc, np.float32), np.asarray(one_shot.desc, np.float32), atol=1e-3)


def test_resuming_from_another_source_is_refused(corridor_set, lite0_encoder, one_shot, tmp_path):
    build_map(FirstFrames(corridor_set.database, 4), tmp_path / "map", lite0_encoder, BuildConfig(batch_size=4))
    with pytest.raises(ValueError, match="another source"):
        build_map(FirstFrames(corridor_set.queries, 8), tmp_path / "map", lite0_encoder, BuildConfig(batch_size=4))
    assert MapDB.load(tmp_path / "map").size == 4


def test_a_trained_index_is_stored_and_reused(corridor_set, lite0_encoder, tmp_path):
    search = SearchConfig(index="ivf", nlist=2, nprobe=2, pca_dim=0)
    mapdb = build_map(FirstFrames(corridor_set.database, FRAMES), tmp_path / "map", lite0_encoder,
                      BuildConfig(batch_size=8, search=search))
    assert mapdb.index_info is not None and mapdb.index_info["kind"] == "ivf"
    assert mapdb.index_info["ntotal"] == FRAMES
    searcher = TwoStageSearcher.from_map(MapDB.load(tmp_path / "map"), search)
    assert searcher.index_kind == "ivf" and searcher.indexed == FRAMES
    codes, desc = lite0_encoder.encode([f.rgb for f in islice(corridor_set.database, 3)])
    assert list(searcher.search(codes, desc, k=1).ids[:, 0]) == [0, 1, 2]


def test_cli_builds_a_map_from_an_image_folder(data_dir, tmp_path):
    out = tmp_path / "map"
    run = subprocess.run([sys.executable, "-m", "vpr_core.cli", "build-map", "--source",
                          f"folder:{data_dir / 'corridor' / 'ref'}", "--out", str(out),
                          "--preset", "lite0", "--backend", "onnxruntime", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert MapDB.load(out).size == len(list((data_dir / "corridor" / "ref").iterdir()))


def damaged_folder(data_dir, folder):
    """Real corridor images with the damaged inputs of issue 18 between them: a zero-byte file, a JPEG
    cut at 60 % and a 1x1 PNG. Returns the names of the good images and the reason expected per bad one."""
    folder.mkdir()
    sources = sorted((data_dir / "corridor" / "ref").glob("*.jpg"))
    good = []
    for i in range(5):
        shutil.copy(sources[i], folder / f"{2 * i:02d}.jpg")
        good.append(f"{2 * i:02d}.jpg")
    (folder / "01.jpg").write_bytes(b"")
    jpeg = sources[5].read_bytes()
    (folder / "03.jpg").write_bytes(jpeg[: len(jpeg) * 6 // 10])
    (folder / "05.png").write_bytes(cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes())
    return good, {"01.jpg": "is empty (0 bytes)", "03.jpg": "is truncated", "05.png": "smaller than the least 32x32"}


def test_damaged_images_are_skipped_reported_and_saved_with_the_map(data_dir, lite0_encoder, tmp_path):
    good, reasons = damaged_folder(data_dir, tmp_path / "images")
    mapdb = build_map(open_source(f"folder:{tmp_path / 'images'}"), tmp_path / "map", lite0_encoder,
                      BuildConfig(batch_size=4))
    assert [r.source for r in MapDB.load(tmp_path / "map").records(range(mapdb.size))] == good
    report = json.loads((tmp_path / "map" / SKIP_REPORT).read_text())
    assert [s["input"] for s in report["skipped"]] == sorted(reasons)
    for entry in report["skipped"]:
        assert reasons[entry["input"]] in entry["reason"] and entry["input"] in entry["reason"]
    with pytest.raises(DataError, match=r"01.jpg is empty \(0 bytes\)"):
        build_map(open_source(f"folder:{tmp_path / 'images'}"), tmp_path / "stopped", lite0_encoder,
                  BuildConfig(batch_size=4, on_error="stop"))


def test_cli_on_error_stop_exits_2_with_one_line_and_skip_prints_the_report(data_dir, tmp_path):
    good, reasons = damaged_folder(data_dir, tmp_path / "images")
    command = [sys.executable, "-m", "vpr_core.cli", "build-map", "--source", f"folder:{tmp_path / 'images'}",
               "--preset", "lite0", "--backend", "onnxruntime", "--threads", "1"]
    stop = subprocess.run([*command, "--out", str(tmp_path / "stopped"), "--on-error", "stop"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert stop.returncode == 2, stop.stderr[-2000:]
    last = stop.stderr.strip().splitlines()[-1]
    assert last == f"vpr build-map: error: image file {tmp_path / 'images' / '01.jpg'} is empty (0 bytes)"
    skip = subprocess.run([*command, "--out", str(tmp_path / "map")], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert skip.returncode == 0, skip.stderr[-2000:]
    assert f"3 input(s) skipped (saved in {tmp_path / 'map' / SKIP_REPORT})" in skip.stderr
    for name, reason in reasons.items():
        assert any(line.startswith(f"  {name}: ") and reason in line for line in skip.stderr.splitlines())
    assert MapDB.load(tmp_path / "map").size == len(good)


def test_a_bag_message_that_cannot_be_read_is_skipped_and_reported(data_dir, lite0_encoder, tmp_path):
    frames = load_frames(data_dir / "corridor" / "ref", 6)
    bag = write_bag(tmp_path / "bag", [ImageStream("/cam", frames, stamps_at(10, 6), truncated=(2,))])
    mapdb = build_map(open_source(bag), tmp_path / "map", lite0_encoder, BuildConfig(batch_size=4))
    assert mapdb.size == 5
    report = json.loads((tmp_path / "map" / SKIP_REPORT).read_text())
    assert len(report["skipped"]) == 1 and "topic /cam, message 2" in report["skipped"][0]["reason"]
    with pytest.raises(DataError, match="topic /cam, message 2 .*expected step"):
        build_map(open_source(bag), tmp_path / "stopped", lite0_encoder, BuildConfig(batch_size=4, on_error="stop"))
