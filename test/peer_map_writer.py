"""Test peer: a map writer that stops at a chosen point of a write, for the crash test to kill it there.

Usage: peer_map_writer.py ROOT. It loads the libraries once, prints "ready", then serves one request
per line of stdin, ``OP ARG STOP_AT``, each in a forked writer that loads ROOT/map and runs OP:

    append  -      appends the BATCH places that follow the map's last ones
    index   STEP   stores the index blob of STEP (index_blob)
    rebuild N      builds ROOT/other anew from places 0..N-1, replacing the one there

The points of a write are the calls that make its work durable or visible: os.fsync, os.replace,
os.rename, and the BEGIN and COMMIT of each SQLite transaction, numbered from 1 in the order the
write reaches them. At point STOP_AT the writer prints ``AT <pid> <points so far as JSON>`` (the last
one not yet made) and waits to be killed; a write with fewer points prints ``DONE <points as JSON>``.
The server then prints ``EXIT killed|ok|failed``. A point is named by its file, relative to ROOT,
as ``Points.name`` writes it (``map/manifest.json.tmp``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from vpr_core.mapdb import MapDB, PlaceRecord

BATCH, BITS, DIM = 7, 64, 16
TMP_MARK = ".tmp-"


def content(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[PlaceRecord]]:
    """Places whose codes, descriptors and records are a function of their id, so any torn or mixed
    state shows as a mismatch."""
    ids = np.asarray(ids, np.int64)
    codes = np.repeat((ids % 251).astype(np.uint8)[:, None], BITS // 8, axis=1)
    desc = np.zeros((len(ids), DIM), np.float32)
    desc[np.arange(len(ids)), ids % DIM] = 0.6
    desc[np.arange(len(ids)), (ids * 7 + 3) % DIM] += 0.8
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return codes, desc, [PlaceRecord(stamp_ns=int(i), source=f"p{i}") for i in ids]


def index_blob(step: int) -> np.ndarray:
    return np.full(1000 + step, step % 256, np.uint8)


class Points:
    """Counts the points of the running write and stops at the chosen one."""

    def __init__(self, root: Path) -> None:
        self.root, self.stop_at, self.passed = root, 0, None

    def name(self, path: str | os.PathLike) -> str:
        """The same for every write that reaches the point: temporaries without their random part,
        index files without their generation (``map/index.N.faiss.tmp``)."""
        parts = Path(os.path.relpath(path, self.root)).parts
        parts = [re.sub(r"^index\.\d+\.", "index.N.", p.split(TMP_MARK)[0] + ".tmp" if TMP_MARK in p else p)
                 for p in parts]
        return "/".join(parts) or "."

    def reach(self, point: str) -> None:
        if self.passed is None:  # not armed: loading the map
            return
        self.passed.append(point)
        if len(self.passed) == self.stop_at:
            print(f"AT {os.getpid()} {json.dumps(self.passed)}", flush=True)
            time.sleep(60)  # killed long before; a test that died leaves no writer behind for long
            os._exit(3)


def instrument(points: Points) -> None:
    fsync, replace, rename, connect = os.fsync, os.replace, os.rename, sqlite3.connect

    def traced_fsync(fd: int) -> None:
        points.reach("fsync " + points.name(os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def traced_replace(src, dst, **kwargs) -> None:
        points.reach(f"replace {points.name(src)} {points.name(dst)}")
        replace(src, dst, **kwargs)

    def traced_rename(src, dst, **kwargs) -> None:
        points.reach(f"rename {points.name(src)} {points.name(dst)}")
        rename(src, dst, **kwargs)

    def traced_connect(database, *args, **kwargs):
        con = connect(database, *args, **kwargs)
        name = points.name(database)

        def on_statement(sql: str) -> None:
            word = sql.split(None, 1)[0].upper() if sql.strip() else ""
            if word in ("BEGIN", "COMMIT"):
                points.reach(f"sql {word} {name}")

        con.set_trace_callback(on_statement)
        return con

    os.fsync, os.replace, os.rename, sqlite3.connect = traced_fsync, traced_replace, traced_rename, traced_connect


def write(root: Path, op: str, arg: str, points: Points) -> None:
    m = MapDB.load(root / "map")
    points.passed = []
    if op == "append":
        m.append(*content(np.arange(m.size, m.size + BATCH)))
    elif op == "index":
        step = int(arg)
        m.store_index(index_blob(step), kind="ivf", params={"step": step}, ntotal=max(1, m.size))
    elif op == "rebuild":
        MapDB.build(root / "other", *content(np.arange(int(arg))), fingerprint="f", encoder_config={},
                    overwrite=True).close()
    else:
        raise ValueError(f"unknown operation {op!r}")
    print("DONE " + json.dumps(points.passed), flush=True)


def main() -> int:
    root = Path(sys.argv[1]).absolute()
    points = Points(root)
    instrument(points)
    print("ready", flush=True)
    for line in sys.stdin:
        op, arg, stop_at = line.split()
        points.stop_at, points.passed = int(stop_at), None
        pid = os.fork()
        if pid == 0:
            try:
                write(root, op, arg, points)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        print("EXIT " + ("killed" if killed else "ok" if ok else "failed"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
