"""Crash safety: a writer process is SIGKILLed at random moments, and the map always loads whole.

The writer appends batches of places whose content is a function of their id (so any torn or mixed
state is detectable) and now and then stores an index or builds a second map from scratch. After each
kill the map must load with full verification, hold a whole number of batches, never shrink, and
hold exactly the expected content; the second map, once built, must stay present and complete (its
replacement is swapped in atomically).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vpr_core.mapdb import MapDB, PlaceRecord

REPO = Path(__file__).resolve().parents[1]
BATCH, BITS, DIM = 7, 64, 16
KILLS = 40

WRITER = r"""
import sys
import numpy as np
from pathlib import Path
from vpr_core.mapdb import MapDB, PlaceRecord

BATCH, BITS, DIM = {batch}, {bits}, {dim}

def content(ids):
    codes = np.stack([np.full(BITS // 8, i % 251, np.uint8) for i in ids])
    desc = np.zeros((len(ids), DIM), np.float32)
    desc[np.arange(len(ids)), np.asarray(ids) % DIM] = 0.6
    desc[np.arange(len(ids)), (np.asarray(ids) * 7 + 3) % DIM] += 0.8
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return codes, desc, [PlaceRecord(stamp_ns=i, source=f"p{{i}}") for i in ids]

root = Path(sys.argv[1])
m = MapDB.load(root / "map")
print("ready", flush=True)
step = 0
while True:
    step += 1
    if step % 5 == 0:
        m.store_index(np.full(1000 + step, step % 256, np.uint8), kind="ivf", params={{"step": step}}, ntotal=max(1, m.size))
    elif step % 7 == 0:
        n = BATCH * (step % 4 + 1)
        MapDB.build(root / "other", *content(range(n)), fingerprint="f", encoder_config={{}}, overwrite=True).close()
    else:
        m.append(*content(range(m.size, m.size + BATCH)))
"""


def expected(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes = np.stack([np.full(BITS // 8, i % 251, np.uint8) for i in ids])
    desc = np.zeros((len(ids), DIM), np.float32)
    desc[np.arange(len(ids)), ids % DIM] = 0.6
    desc[np.arange(len(ids)), (ids * 7 + 3) % DIM] += 0.8
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return codes, desc.astype(np.float16)


def torn(path: Path) -> bool:
    """Whether the kill left uncommitted work on disk (evidence that it hit the write window)."""
    count = json.loads((path / "manifest.json").read_text())["count"]
    if any(".tmp-" in p.name for p in path.iterdir()) or len(list(path.glob("index.*.faiss"))) > 1:
        return True
    for name, width in (("codes.npy", BITS // 8), ("desc.npy", DIM * 2)):
        header = np.load(path / name, mmap_mode="r")
        if header.shape[0] != count or (path / name).stat().st_size != header.offset + count * width:
            return True
    con = sqlite3.connect(f"file:{path / 'places.sqlite'}?mode=ro", uri=True)
    try:
        extra = con.execute("SELECT COUNT(*) FROM places WHERE id >= ?", (count,)).fetchone()[0]
    finally:
        con.close()
    return extra > 0 or (path / "places.sqlite-journal").exists()


def test_sigkill_at_random_points_always_leaves_a_loadable_map(tmp_path):
    MapDB.create(tmp_path / "map", fingerprint="f", encoder_config={}, bits=BITS, dim=DIM).close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(batch=BATCH, bits=BITS, dim=DIM))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(1234)
    sizes, torn_kills, built_other = [0], 0, False
    deadline = time.monotonic() + 35
    kills = 0
    while kills < KILLS and time.monotonic() < deadline:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.08))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        kills += 1
        torn_kills += torn(tmp_path / "map")

        m = MapDB.load(tmp_path / "map")  # full verification: checksums of arrays and index
        assert m.size % BATCH == 0 and m.size >= sizes[-1]
        sizes.append(m.size)
        ids = np.arange(m.size)
        codes, desc = expected(ids)
        np.testing.assert_array_equal(m.codes, codes)
        np.testing.assert_array_equal(m.desc, desc)
        assert [r.source for r in m.records(ids)] == [f"p{i}" for i in ids]
        if m.index_info is not None:
            step = m.index_info["params"]["step"]
            np.testing.assert_array_equal(m.read_index(), np.full(1000 + step, step % 256, np.uint8))
        m.close()

        other = tmp_path / "other"
        built_other = built_other or other.exists()
        if built_other:
            o = MapDB.load(other)
            assert o.size in (7, 14, 21, 28)
            np.testing.assert_array_equal(o.codes, expected(np.arange(o.size))[0])
            o.close()
    assert kills >= 30, f"only {kills} kills fitted in the time budget"
    assert sizes[-1] > 0, "the writer never committed an append"
    assert torn_kills > 0, "no kill landed inside a write: the test did not exercise the crash window"
    # A later append cleans up whatever the last kill left behind and still works.
    m = MapDB.load(tmp_path / "map")
    new_codes, new_desc = expected(np.arange(m.size, m.size + BATCH))
    m.append(
        new_codes,
        new_desc.astype(np.float32),
        [PlaceRecord(source=f"p{i}") for i in range(m.size, m.size + BATCH)],
    )
    assert MapDB.load(tmp_path / "map").size == sizes[-1] + BATCH
    assert not torn(tmp_path / "map")
    # Temporaries of killed builds are removed by the next build.
    MapDB.build(
        tmp_path / "other",
        new_codes,
        new_desc.astype(np.float32),
        [PlaceRecord()] * BATCH,
        fingerprint="f",
        encoder_config={},
        overwrite=True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map", "other", "writer.py"]
