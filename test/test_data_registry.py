"""Reader registry and source specs: names, detection of layouts, options and their errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vpr_core.data.bag_writer import ImageStream, load_frames, stamps_at, write_bag
from vpr_core.data import READERS, DataError, FrameSource, get_reader, open_dataset, open_source, parse_spec


def test_every_registered_reader_loads() -> None:
    for name in READERS:
        reader = get_reader(name)
        assert reader.name == name and reader.help
        assert reader.make_config({}) is not None
    assert get_reader("folder").open_dataset_fn is None
    assert get_reader("vpr_bench").open_dataset_fn is not None


def test_layouts_are_detected(data_dir: Path, tmp_path: Path) -> None:
    assert parse_spec(data_dir / "corridor")[0] == "vpr_bench"
    assert parse_spec(data_dir / "nordland_tiny")[0] == "seasons"
    assert parse_spec(data_dir / "rtabmap_loop" / "images")[0] == "folder"
    assert isinstance(open_source(data_dir / "rtabmap_loop" / "images"), FrameSource)
    (tmp_path / "database").mkdir()
    (tmp_path / "queries").mkdir()
    assert parse_spec(tmp_path)[0] == "vpr_benchmark"
    frames = load_frames(data_dir / "corridor" / "ref", 2)
    for storage in ("mcap", "ros1"):
        bag = write_bag(
            tmp_path / f"bag_{storage}", [ImageStream("/cam", frames, stamps_at(10, 2))], storage=storage
        )
        assert parse_spec(bag)[0] == "rosbag"
        source = open_source(bag)
        assert isinstance(source, FrameSource) and len(source) == 2


def test_spec_names_reader_path_and_options() -> None:
    name, path, options = parse_spec("seasons:some/dir?split=test&tolerance=2")
    assert (name, path, options) == ("seasons", Path("some/dir"), {"split": "test", "tolerance": "2"})
    assert get_reader("seasons").make_config(options).tolerance == 2
    assert get_reader("rosbag").make_config({"topics": "/a, /b", "skip_bad": "yes"}).topics == ("/a", "/b")
    assert get_reader("seasons").make_config({"split": "none"}).split is None


def test_keyword_options_override_the_spec(data_dir: Path) -> None:
    corridor = data_dir / "corridor"
    queries = open_source(f"{corridor}?part=database", part="queries")
    assert queries.names == sorted(p.name for p in (corridor / "query").glob("*.jpg"))
    frame = queries[0]
    np.testing.assert_array_equal(frame.rgb, open_source(corridor / "query")[0].rgb)


def test_spec_errors(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown reader 'pictures'; choose one of: folder, vpr_benchmark"):
        open_source(f"pictures:{tmp_path}")
    with pytest.raises(DataError, match="unknown reader 'nope'"):
        get_reader("nope")
    with pytest.raises(
        DataError, match=r"unknown option\(s\) colour, size; valid options: camera, rate_hz, recursive"
    ):
        open_source(f"folder:{tmp_path}?size=3&colour=1")
    with pytest.raises(DataError, match="option tolerance: expected int, got '1.5'"):
        open_dataset(f"seasons:{tmp_path}?tolerance=1.5")
    with pytest.raises(DataError, match="options must look like"):
        open_source(f"folder:{tmp_path}?rate_hz")
    with pytest.raises(DataError, match="names no path"):
        open_source("folder:")
    with pytest.raises(DataError, match="does not exist"):
        open_source(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="is a file but not a bag"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(
        DataError,
        match="reader 'folder' has no ground truth.*evaluation layouts: vpr_benchmark, vpr_bench, seasons",
    ):
        open_dataset(f"folder:{data_dir / 'rtabmap_loop' / 'images'}")


def test_a_path_object_is_never_parsed_as_a_spec(data_dir: Path, tmp_path: Path) -> None:
    odd = tmp_path / "folder:run?1"
    odd.mkdir()
    shutil.copy(next((data_dir / "corridor" / "ref").glob("*.jpg")), odd / "0.jpg")
    assert parse_spec(odd) == ("folder", odd, {})
    assert len(open_source(odd)) == 1
