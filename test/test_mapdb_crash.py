"""Crash safety: a writer process is SIGKILLed at every point of its writes, and the map always loads whole.

peer_map_writer.py numbers the points of a write (each fsync, rename and SQLite BEGIN/COMMIT) and stops
at a chosen one. For each write of PLAN the test kills the writer at point 1, 2, ... in turn, each
time on what the last kill left, until the write gets through: a fixed sequence of kills, no timing.
After every kill the map must load with full verification and hold exactly the places of the writes
that committed (a write commits when its manifest.json replaces the old one), each with the content
of its id; the second map must be the old or the new one, whole. The kills must together leave every
kind of uncommitted work (rows and records past the count, a SQLite journal, temporaries, an
unreferenced index), and each completed write must leave none.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from peer_map_writer import BATCH, BITS, DIM, TMP_MARK, content, index_blob
from vpr_core.mapdb import MapDB

# (operation, argument): appends on an empty map and on one with an index and leftovers, a first
# index and its replacement, a first build of the second map and its replacement.
PLAN = (("append", "-"), ("index", "1"), ("append", "-"), ("index", "2"),
        ("rebuild", str(2 * BATCH)), ("rebuild", str(3 * BATCH)))
COMMIT = "replace map/manifest.json.tmp map/manifest.json"
LEFTOVER_KINDS = {"rows past the count", "records past the count", "journal", "temporary", "unreferenced index"}


class Writer:
    """The writer peer; `run` returns how the write ended ("killed" | "done") and the points it passed."""

    def __init__(self, root: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "test/peer_map_writer.py", str(root)], cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def run(self, op: str, arg: str, stop_at: int) -> tuple[str, list[str]]:
        self.process.stdin.write(f"{op} {arg} {stop_at}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if line.startswith("AT "):
            _, pid, points = line.split(" ", 2)
            os.kill(int(pid), signal.SIGKILL)
            outcome, exit_line = "killed", "EXIT killed"
        else:
            assert line.startswith("DONE "), f"{op} {arg} stopping at {stop_at}: {line!r}"
            points, outcome, exit_line = line[len("DONE "):], "done", "EXIT ok"
        assert self.process.stdout.readline().strip() == exit_line
        return outcome, json.loads(points)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


def _header_rows(path: Path) -> tuple[int, int]:
    """(rows in the .npy header, bytes before the first row)."""
    with open(path, "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, _, _ = np.lib.format.read_array_header_1_0(f)
        return shape[0], f.tell()


def leftovers(root: Path) -> set[str]:
    """The kinds of uncommitted work on disk, read without opening the map (which would clean some)."""
    path = root / "map"
    manifest = json.loads((path / "manifest.json").read_text())
    count, kinds = manifest["count"], set()
    if any(TMP_MARK in p.name for folder in (root, path) for p in folder.iterdir()):
        kinds.add("temporary")
    named = manifest["index"]["file"] if manifest["index"] else None
    if any(p.name != named for p in path.glob("index.*.faiss")):
        kinds.add("unreferenced index")
    for name, row_bytes in (("codes.npy", BITS // 8), ("desc.npy", DIM * 2)):
        rows, offset = _header_rows(path / name)
        if rows != count or (path / name).stat().st_size != offset + count * row_bytes:
            kinds.add("rows past the count")
    if (path / "places.sqlite-journal").exists():
        kinds.add("journal")  # a read-only reader cannot roll it back: the rows are not counted then
    else:
        con = sqlite3.connect(f"file:{path / 'places.sqlite'}?mode=ro", uri=True)
        try:
            if con.execute("SELECT COUNT(*) FROM places WHERE id >= ?", (count,)).fetchone()[0]:
                kinds.add("records past the count")
        finally:
            con.close()
    return kinds


def check_map(root: Path, size: int, index_step: int | None) -> None:
    m = MapDB.load(root / "map")  # full verification: checksums of the arrays and the index
    try:
        assert m.size == size
        codes, desc, records = content(np.arange(size))
        np.testing.assert_array_equal(m.codes, codes)
        np.testing.assert_array_equal(m.desc, desc.astype(np.float16))
        assert [r.source for r in m.records(np.arange(size))] == [r.source for r in records]
        if index_step is None:
            assert m.index_info is None
        else:
            assert m.index_info["params"] == {"step": index_step}
            np.testing.assert_array_equal(m.read_index(), index_blob(index_step))
    finally:
        m.close()


def other_size(root: Path) -> int | None:
    """The second map's size once it loads whole with the content of its ids; None while absent."""
    if not (root / "other").exists():
        return None
    o = MapDB.load(root / "other")
    try:
        np.testing.assert_array_equal(o.codes, content(np.arange(o.size))[0])
        return o.size
    finally:
        o.close()


@pytest.fixture
def writer(tmp_path):
    MapDB.create(tmp_path / "map", fingerprint="f", encoder_config={}, bits=BITS, dim=DIM).close()
    w = Writer(tmp_path)
    try:
        yield w
    finally:
        if w.process.poll() is None:
            w.process.kill()
        w.process.wait(timeout=30)


def test_a_kill_at_every_point_of_every_write_leaves_a_map_that_loads_whole(tmp_path, writer):
    size, index_step, other, seen = 0, None, None, set()
    for op, arg in PLAN:
        killed_at: set[tuple[str, int]] = set()
        replaced = False
        stop_at = 1
        while True:
            outcome, points = writer.run(op, arg, stop_at)
            passed = points[:-1] if outcome == "killed" else points
            if outcome == "killed":
                found = leftovers(tmp_path)
                seen |= found
                last = points[-1]
                killed_at.add((last, points.count(last)))
            else:
                assert leftovers(tmp_path) == set(), f"{op} {arg} completed but left work behind"
            if COMMIT in passed and op == "append":
                size += BATCH
            if COMMIT in passed and op == "index":
                index_step = int(arg)
            check_map(tmp_path, size, index_step)
            now = other_size(tmp_path)
            if op == "rebuild":
                assert now in (other, int(arg)) and not (replaced and now != int(arg)), f"{other} -> {now}"
                replaced = now == int(arg)
            else:
                assert now == other
            if outcome == "done":
                break
            stop_at += 1
        # Every point of the completed write was a kill point, whatever the earlier kills left.
        labels = {(p, points[: i + 1].count(p)) for i, p in enumerate(points)}
        assert labels <= killed_at, f"{op} {arg}: never killed at {sorted(labels - killed_at)}"
        if op == "append":
            assert COMMIT in points
        other = int(arg) if op == "rebuild" else other
        assert other_size(tmp_path) == other
    writer.close()
    assert seen == LEFTOVER_KINDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map", "other"]
