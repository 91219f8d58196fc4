"""Evaluation layouts: VPR-Bench (corridor), the @UTM@ benchmark layout, and season pairs (Nordland)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from vpr_core.data import NORDLAND_DEV, NORDLAND_TEST, DataError, open_dataset, open_source
from vpr_core.data.utm_name_reader import parse_utm_name


@pytest.fixture(scope="module")
def corridor(data_dir: Path) -> Path:
    return data_dir / "corridor"


@pytest.fixture(scope="module")
def nordland(data_dir: Path) -> Path:
    return data_dir / "nordland_tiny"


def rgb_of(path: Path) -> np.ndarray:
    return cv2.imread(str(path))[:, :, ::-1]


# --- VPR-Bench -------------------------------------------------------------------------------------


def test_corridor_positives_follow_ground_truth_file(corridor: Path) -> None:
    dataset = open_dataset(corridor)
    refs = sorted((corridor / "ref").glob("*.jpg"))
    queries = sorted((corridor / "query").glob("*.jpg"))
    assert (len(dataset.database), len(dataset.queries)) == (len(refs), len(queries))
    with (corridor / "ground_truth.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == len(queries)
    for query, refs_text in rows:
        expected = sorted(int(v) for v in refs_text.split())
        assert dataset.positives(int(query)).tolist() == expected
    np.testing.assert_array_equal(dataset.database[5].rgb, rgb_of(refs[5]))
    np.testing.assert_array_equal(dataset.queries[7].rgb, rgb_of(queries[7]))
    assert dataset.summary()["queries_without_positives"] == 0
    assert open_source(f"{corridor}?part=queries").names == [p.name for p in queries]


def make_vpr_bench(corridor: Path, root: Path, ground_truth: str | None) -> Path:
    images = sorted((corridor / "ref").glob("*.jpg"))[:3]
    for sub in ("query", "ref"):
        (root / sub).mkdir(parents=True)
        for img in images:
            shutil.copy(img, root / sub / img.name)
    if ground_truth is not None:
        (root / "ground_truth.csv").write_text(ground_truth)
    return root


def test_vpr_bench_query_without_row_has_no_positives(corridor: Path, tmp_path: Path) -> None:
    dataset = open_dataset(make_vpr_bench(corridor, tmp_path / "d", "query_index,ref_indices\n0,0 1\n2,2\n"))
    assert [p.tolist() for p in dataset.positive_lists] == [[0, 1], [], [2]]
    assert dataset.summary()["queries_without_positives"] == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("query_index,ref_indices\n0,0\n1,x\n", r"line 3: indices must be integers"),
        ("query_index,ref_indices\n3,0\n", r"line 2: query index 3 outside \[0, 3\)"),
        ("query_index,ref_indices\n0,0 7 -1\n", r"line 2: reference indices \[7, -1\] outside \[0, 3\)"),
        ("query_index,ref_indices\n0,0\n0,1\n", r"line 3: query 0 appears a second time"),
        ("query_index,ref_indices\n0,0,1\n", r"line 2: expected 'query_index,ref_indices'"),
    ],
)
def test_vpr_bench_bad_ground_truth_rows(corridor: Path, tmp_path: Path, text: str, problem: str) -> None:
    root = make_vpr_bench(corridor, tmp_path / "d", text)
    with pytest.raises(DataError, match=rf"ground_truth.csv, {problem}"):
        open_dataset(f"vpr_bench:{root}")


def test_vpr_bench_missing_parts(corridor: Path, tmp_path: Path) -> None:
    root = make_vpr_bench(corridor, tmp_path / "d", None)
    with pytest.raises(DataError, match="ground-truth file .*ground_truth.csv does not exist"):
        open_dataset(f"vpr_bench:{root}")
    shutil.rmtree(root / "query")
    with pytest.raises(DataError, match="query does not exist"):
        open_dataset(f"vpr_bench:{root}")


# --- @UTM@ benchmark layout --------------------------------------------------------------------------


def utm_name(east: float, north: float, lat: str = "", lon: str = "") -> str:
    return f"@{east:.2f}@{north:.2f}@32@V@{lat}@{lon}@pano@@0@@@@2017@note@.jpg"


def make_utm_benchmark(corridor: Path, root: Path, db_xy: np.ndarray, query_xy: np.ndarray) -> Path:
    images = sorted((corridor / "ref").glob("*.jpg"))
    for sub, points in (("database", db_xy), ("queries", query_xy)):
        (root / sub).mkdir(parents=True)
        for i, (east, north) in enumerate(points):
            shutil.copy(images[i], root / sub / utm_name(east, north, "59.91", "10.75"))
    return root


def test_utm_positives_are_within_radius(corridor: Path, tmp_path: Path) -> None:
    # Northings of 6.6e6 m, where float32 steps by 0.5 m: positives at 24.9 m and misses at 25.1 m
    # must still be told apart.
    e0, n0 = 597_000.0, 6_643_000.0
    db = np.array([[e0, n0], [e0, n0 + 24.9], [e0, n0 - 25.1], [e0 + 60, n0], [e0 + 300, n0 - 40]])
    queries = np.array([[e0, n0], [e0 + 300, n0 - 20], [e0 - 500, n0]])
    root = make_utm_benchmark(corridor, tmp_path / "bench", db, queries)
    dataset = open_dataset(root)
    assert dataset.rule.startswith("database images within 25 m")
    # Files come back sorted by name, so positions are read back in that order.
    names = open_source(f"vpr_benchmark:{root}?part=database").names
    db_sorted = np.array([(parse_utm_name(n).east, parse_utm_name(n).north) for n in names])
    q_sorted = np.array([(parse_utm_name(n).east, parse_utm_name(n).north) for n in dataset.queries.names])
    for q, point in enumerate(q_sorted):
        distance = np.linalg.norm(db_sorted - point, axis=1)
        assert dataset.positives(q).tolist() == np.flatnonzero(distance < 25).tolist()
    by_query = {tuple(p): dataset.positives(q) for q, p in enumerate(q_sorted)}
    assert len(by_query[(e0, n0)]) == 2  # itself and the one 24.9 m away
    assert len(by_query[(e0 - 500, n0)]) == 0
    assert len(by_query[(e0 + 300, n0 - 20)]) == 1
    assert dataset.summary()["queries_without_positives"] == 1
    frame = dataset.queries[0]
    assert frame.utm == tuple(q_sorted[0]) and frame.latlon == (59.91, 10.75)


def test_utm_radius_option(corridor: Path, tmp_path: Path) -> None:
    db = np.array([[500_000.0, 4_000_000.0], [500_040.0, 4_000_000.0]])
    root = make_utm_benchmark(corridor, tmp_path / "bench", db, db[:1])
    assert open_dataset(root).positives(0).tolist() == [0]
    assert open_dataset(f"{root}?radius_m=50").positives(0).tolist() == [0, 1]
    with pytest.raises(DataError, match="radius_m must be > 0"):
        open_dataset(f"{root}?radius_m=-1")


def test_parse_utm_names() -> None:
    full = parse_utm_name(
        "@0543256.96@4178906.80@10@S@037.75718@-122.50859@pano_abc@0@271.5@0@0@0@201311@n@.jpg"
    )
    assert (full.east, full.north, full.zone, full.latlon) == (
        543256.96,
        4178906.80,
        "10S",
        (37.75718, -122.50859),
    )
    bare = parse_utm_name("@12.5@-3@.png")
    assert (bare.east, bare.north, bare.zone, bare.latlon) == (12.5, -3.0, "", None)
    empty_latlon = parse_utm_name(utm_name(1, 2))
    assert empty_latlon.latlon is None and empty_latlon.zone == "32V"
    for bad in ("0000.jpg", "@1.0.jpg", "x@1@2@.jpg"):
        with pytest.raises(DataError, match="not of the form"):
            parse_utm_name(bad)
    with pytest.raises(DataError, match="are not numbers"):
        parse_utm_name("@east@2@.jpg")
    with pytest.raises(DataError, match="must be finite"):
        parse_utm_name("@nan@2@.jpg")


def test_utm_layout_errors(corridor: Path, tmp_path: Path) -> None:
    root = make_utm_benchmark(corridor, tmp_path / "bench", np.array([[1.0, 2.0]]), np.array([[1.0, 2.0]]))
    shutil.copy(sorted((corridor / "ref").glob("*.jpg"))[0], root / "queries" / "plain.jpg")
    with pytest.raises(DataError, match=r"plain.jpg: file name 'plain.jpg' is not of the form"):
        open_dataset(root)
    downloader = tmp_path / "pitts"
    shutil.copytree(root / "database", downloader / "images" / "test" / "database")
    with pytest.raises(
        DataError, match=r"pitts/database does not exist; this looks like the downloader layout"
    ):
        open_dataset(f"vpr_benchmark:{downloader}")
    zones = tmp_path / "zones"
    make_utm_benchmark(corridor, zones, np.array([[1.0, 2.0]]), np.array([[1.0, 2.0]]))
    img = next((zones / "database").iterdir())
    shutil.copy(img, zones / "database" / img.name.replace("@32@V@", "@33@V@").replace("@1.00@", "@5.00@"))
    with pytest.raises(DataError, match="span UTM zones 32V, 33V"):
        open_dataset(zones)


# --- season pairs (Nordland) ---------------------------------------------------------------------------


def test_nordland_splits_partition_the_data(nordland: Path) -> None:
    all_names = sorted(p.name for p in (nordland / "summer").glob("*.png"))
    dev = open_dataset(f"seasons:{nordland}?split=dev")
    test = open_dataset(f"{nordland}?split=test")
    assert dev.database.names[0] == NORDLAND_DEV.first + ".png"
    assert dev.database.names[-1] == NORDLAND_DEV.last + ".png"
    assert test.database.names[0] == NORDLAND_TEST.first + ".png"
    assert test.database.names[-1] == NORDLAND_TEST.last + ".png"
    assert not set(dev.database.names) & set(test.database.names)
    assert sorted(dev.database.names + test.database.names) == all_names
    assert test.queries.names == test.database.names
    n = len(test.queries)
    assert test.positives(0).tolist() == [0, 1]
    assert test.positives(5).tolist() == [4, 5, 6]
    assert test.positives(n - 1).tolist() == [n - 2, n - 1]
    name = test.database.names[5]
    np.testing.assert_array_equal(test.database[5].rgb, rgb_of(nordland / "summer" / name))
    np.testing.assert_array_equal(test.queries[5].rgb, rgb_of(nordland / "winter" / name))
    assert (test.database[5].camera, test.queries[5].camera) == ("summer", "winter")


def test_seasons_range_tolerance_and_part(nordland: Path) -> None:
    dataset = open_dataset(
        f"{nordland}?first=images-00100&last=images-00150&tolerance=0&database=winter&queries=summer"
    )
    assert dataset.database.names == [f"images-{i:05d}.png" for i in range(100, 151, 10)]
    assert [p.tolist() for p in dataset.positive_lists] == [[i] for i in range(6)]
    assert dataset.database.camera == "winter"
    wide = open_dataset(f"{nordland}?first=images-00100&last=images-00150&tolerance=2")
    assert wide.positives(0).tolist() == [0, 1, 2] and wide.positives(3).tolist() == [1, 2, 3, 4, 5]
    queries = open_source(f"{nordland}?split=test&part=queries")
    assert queries.camera == "winter" and len(queries) == len(open_source(f"{nordland}?split=test"))


def test_seasons_errors(nordland: Path, tmp_path: Path) -> None:
    for season, count in (("summer", 3), ("winter", 2)):
        (tmp_path / season).mkdir()
        for src in sorted((nordland / season).glob("*.png"))[:count]:
            shutil.copy(src, tmp_path / season / src.name)
    with pytest.raises(
        DataError, match=r"same file names; only in summer: \['images-00030.png'\], only in winter: \[\]"
    ):
        open_dataset(f"seasons:{tmp_path}")
    with pytest.raises(DataError, match=r"spring does not exist; folders in .*: summer, winter"):
        open_dataset(f"seasons:{tmp_path}?queries=spring")
    with pytest.raises(DataError, match="no image named from images-28620 to images-35760"):
        open_dataset(f"seasons:{tmp_path}?split=test")
    with pytest.raises(DataError, match="split must be one of dev, test"):
        open_dataset(f"seasons:{tmp_path}?split=train")
    with pytest.raises(DataError, match="either split or first/last"):
        open_dataset(f"seasons:{tmp_path}?split=dev&first=images-00010")
