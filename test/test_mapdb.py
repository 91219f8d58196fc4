"""Map database: round trips, appends, and refusal of every kind of broken map with its own message."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from vpr_core.mapdb import MapDB, MapError, PlaceRecord

BITS, DIM = 64, 32


def places(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[PlaceRecord]]:
    rng = np.random.default_rng(seed)
    desc = rng.standard_normal((n, DIM)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    codes = np.packbits(rng.standard_normal((n, BITS)) >= 0, axis=1)
    records = [
        PlaceRecord(
            stamp_ns=1_700_000_000_000_000_000 + i,
            source=f"img_{seed}_{i}.png",
            camera="front",
            pose=(float(i), 2.0, 0.5, 0.0, 0.0, np.sin(i / 10), np.cos(i / 10)) if i % 2 == 0 else None,
            latlon=(59.9 + i * 1e-4, 10.7) if i % 3 == 0 else None,
        )
        for i in range(n)
    ]
    return codes, desc, records


def build(path: Path, n: int = 20, **kw) -> MapDB:
    codes, desc, records = places(n)
    return MapDB.build(
        path, codes, desc, records, fingerprint="enc-A", encoder_config={"preset": "test", "dim": DIM}, **kw
    )


def test_build_load_round_trip(tmp_path):
    codes, desc, records = places(20)
    MapDB.build(
        tmp_path / "m",
        codes,
        desc,
        records,
        fingerprint="enc-A",
        encoder_config={"preset": "test"},
        frame_id="odom",
    )
    m = MapDB.load(tmp_path / "m", expected_fingerprint="enc-A")
    assert (m.size, m.bits, m.dim, m.fingerprint, m.frame_id) == (20, BITS, DIM, "enc-A", "odom")
    assert m.encoder_config == {"preset": "test"}
    np.testing.assert_array_equal(m.codes, codes)
    assert isinstance(m.desc, np.memmap) and m.desc.dtype == np.float16
    np.testing.assert_array_equal(m.desc, desc.astype(np.float16))
    assert m.records([4, 0, 3]) == [records[4], records[0], records[3]]
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if not p.name.startswith(".")) == [
        "codes.npy",
        "desc.npy",
        "manifest.json",
        "places.sqlite",
    ]
    # The arrays are plain .npy files that any numpy reads.
    np.testing.assert_array_equal(np.load(tmp_path / "m" / "codes.npy", allow_pickle=False), codes)


def test_create_empty_then_append(tmp_path):
    m = MapDB.create(tmp_path / "slam", fingerprint="enc-A", encoder_config={}, bits=BITS, dim=DIM)
    assert m.size == 0 and m.desc.shape == (0, DIM) and m.codes.shape == (0, BITS // 8)
    codes, desc, records = places(9)
    ids = [m.append(codes[i : i + 3], desc[i : i + 3], records[i : i + 3]) for i in range(0, 9, 3)]
    assert np.concatenate(ids).tolist() == list(range(9))
    np.testing.assert_array_equal(m.codes, codes)
    again = MapDB.load(tmp_path / "slam")
    assert again.size == 9 and again.generation == m.generation
    np.testing.assert_array_equal(again.desc, desc.astype(np.float16))
    assert again.records(range(9)) == records


def test_codes_grow_without_touching_earlier_views(tmp_path):
    m = build(tmp_path / "m", 5)
    before = m.codes
    codes, desc, records = places(3000, seed=1)
    m.append(codes, desc, records)
    assert before.shape == (5, BITS // 8) and m.codes.shape == (3005, BITS // 8)
    np.testing.assert_array_equal(m.codes[5:], codes)
    with pytest.raises(ValueError):
        m.codes[0, 0] = 1  # read-only view


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (
            lambda c, d, r: (c, np.where(np.arange(len(d))[:, None] == 1, np.nan, d), r),
            r"desc row 1 contains NaN",
        ),
        (lambda c, d, r: (c, d * 2, r), r"desc row 0 has L2 norm 2\.0000"),
        (lambda c, d, r: (c.astype(np.int64), d, r), r"codes must be packed uint8"),
        (lambda c, d, r: (c[:, :4], d, r), r"codes has 4 bytes per code"),
        (lambda c, d, r: (c, d[:, :10], r), r"desc has dimension 10, expected 32"),
        (lambda c, d, r: (c, d, r[:-1]), r"row counts disagree: codes=4, desc=4, records=3"),
        (
            lambda c, d, r: (c, d, [PlaceRecord(pose=(0, 0, 0, 0, 0, 0, 2))] * 4),
            r"records\[0\]\.pose quaternion",
        ),
        (lambda c, d, r: (c, d, [PlaceRecord(latlon=(91, 0))] * 4), r"records\[0\]\.latlon"),
        (lambda c, d, r: (c, d, [PlaceRecord(stamp_ns=-1)] * 4), r"records\[0\]\.stamp_ns"),
    ],
)
def test_bad_append_is_refused_and_loses_nothing(tmp_path, mutate, pattern):
    m = build(tmp_path / "m", 6)
    files = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()}
    codes, desc, records = places(4, seed=2)
    with pytest.raises(MapError, match=pattern):
        m.append(*mutate(codes, desc, records))
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()} == files
    assert MapDB.load(tmp_path / "m").size == 6


def test_build_refuses_existing_path_unless_overwrite(tmp_path):
    build(tmp_path / "m", 6)
    with pytest.raises(MapError, match="already exists"):
        build(tmp_path / "m", 3)
    assert build(tmp_path / "m", 3, overwrite=True).size == 3
    assert MapDB.load(tmp_path / "m").size == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporaries left beside it


def test_second_writer_on_a_stale_generation_is_refused(tmp_path):
    a = build(tmp_path / "m", 4)
    b = MapDB.load(tmp_path / "m")
    codes, desc, records = places(2, seed=3)
    a.append(codes, desc, records)
    with pytest.raises(MapError, match="changed by another writer"):
        b.append(codes, desc, records)
    assert MapDB.load(tmp_path / "m").size == 6


def test_index_is_stored_checksummed_and_replaced(tmp_path):
    m = build(tmp_path / "m", 10)
    m.store_index(np.arange(50, dtype=np.uint8), kind="ivf", params={"nlist": 4, "nprobe": 2}, ntotal=10)
    m.store_index(np.arange(60, dtype=np.uint8), kind="ivf", params={"nlist": 4, "nprobe": 2}, ntotal=10)
    loaded = MapDB.load(tmp_path / "m")
    assert loaded.index_info == {"kind": "ivf", "params": {"nlist": 4, "nprobe": 2}, "ntotal": 10}
    np.testing.assert_array_equal(loaded.read_index(), np.arange(60, dtype=np.uint8))
    assert len(list((tmp_path / "m").glob("index.*.faiss"))) == 1
    with pytest.raises(MapError, match="ntotal 11"):
        m.store_index(b"x", kind="ivf", params={}, ntotal=11)


def test_records_rejects_ids_outside_the_map(tmp_path):
    m = build(tmp_path / "m", 5)
    with pytest.raises(MapError, match=r"ids \[5, -1\] are outside \[0, 5\)"):
        m.records([1, 5, -1])


# ---- refusal of broken maps: each failure has its own message -----------------------------------
def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _edit_manifest(path: Path, **changes) -> None:
    m = _manifest(path)
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def _flip_byte(file: Path, offset_from_end: int) -> None:
    data = bytearray(file.read_bytes())
    data[-offset_from_end] ^= 0x01
    file.write_bytes(bytes(data))


def _truncate(file: Path, n: int) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:-n])


def _delete_place(path: Path) -> None:
    con = sqlite3.connect(path / "places.sqlite")
    with con:
        con.execute("DELETE FROM places WHERE id = 3")
    con.close()


def _float32_desc(path: Path) -> None:
    d = np.load(path / "desc.npy").astype(np.float32)
    np.save(path / "desc.npy", d)


def _damage_index(path: Path) -> None:
    _flip_byte(next(path.glob("index.*.faiss")), 3)


CORRUPTIONS = {
    "missing manifest": (lambda p: (p / "manifest.json").unlink(), r"manifest\.json is missing"),
    "manifest not json": (
        lambda p: (p / "manifest.json").write_text("{"),
        r"manifest\.json .* not valid JSON",
    ),
    "schema version": (lambda p: _edit_manifest(p, schema_version=99), r"schema version 99"),
    "truncated desc": (lambda p: _truncate(p / "desc.npy", 7), r"desc\.npy is truncated"),
    "truncated codes": (lambda p: _truncate(p / "codes.npy", 3), r"codes\.npy is truncated"),
    "count mismatch (arrays)": (
        lambda p: _edit_manifest(p, count=21),
        r"count mismatch: codes\.npy holds 20 rows but manifest\.json says 21",
    ),
    "count mismatch (sqlite)": (_delete_place, r"count mismatch: places\.sqlite has 19 places"),
    "flipped desc byte": (
        lambda p: _flip_byte(p / "desc.npy", 5),
        r"desc\.npy: checksum mismatch in rows 0\.\.19",
    ),
    "flipped codes byte": (
        lambda p: _flip_byte(p / "codes.npy", 5),
        r"codes\.npy: checksum mismatch in rows 0\.\.19",
    ),
    "flipped checksum": (
        lambda p: _edit_manifest(
            p,
            checksums={
                **_manifest(p)["checksums"],
                "desc.npy": [_manifest(p)["checksums"]["desc.npy"][0] ^ 1],
            },
        ),
        r"desc\.npy: checksum mismatch",
    ),
    "wrong dtype": (_float32_desc, r"desc\.npy has dtype float32, expected float16"),
    "missing sqlite": (lambda p: (p / "places.sqlite").unlink(), r"places\.sqlite is missing"),
    "damaged index": (_damage_index, r"index file index\.\d+\.faiss .*checksum mismatch"),
    "missing index": (
        lambda p: next(p.glob("index.*.faiss")).unlink(),
        r"index file index\.\d+\.faiss named by manifest\.json is missing",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_broken_map_is_refused_with_its_reason(tmp_path, name):
    m = build(tmp_path / "m", 20)
    m.store_index(np.arange(100, dtype=np.uint8), kind="ivf", params={}, ntotal=20)
    m.close()
    damage, pattern = CORRUPTIONS[name]
    damage(tmp_path / "m")
    with pytest.raises(MapError, match=pattern):
        MapDB.load(tmp_path / "m")


def test_each_corruption_has_a_distinct_message():
    patterns = [p for _, p in CORRUPTIONS.values()]
    assert len(set(patterns)) == len(patterns)


def test_foreign_encoder_fingerprint_is_refused(tmp_path):
    build(tmp_path / "m", 5)
    with pytest.raises(
        MapError, match=r"fingerprint 'enc-A', but the encoder in use has 'enc-B'.*rebuild the map"
    ):
        MapDB.load(tmp_path / "m", expected_fingerprint="enc-B")


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(MapError, match=r"does not exist"):
        MapDB.load(tmp_path / "nowhere")
