"""Per-place metadata (`places.sqlite`): capture time, source, camera, pose, latitude/longitude.

SQLite because it is in the standard library, its transactions survive a killed writer (rollback
journal, synchronous=FULL), and lookups by id stay fast at millions of rows. Row `id` is the place's
row in `codes.npy`/`desc.npy`. Rows with an id at or above the manifest's count belong to an append
that was killed before its commit: readers ignore them and the next append replaces them.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vpr_core.mapdb.errors import MapError

SQLITE_SCHEMA_VERSION = 1
_COLUMNS = ("id", "stamp_ns", "source", "camera", "x", "y", "z", "qx", "qy", "qz", "qw", "lat", "lon")
_CREATE = """
CREATE TABLE places (
    id INTEGER PRIMARY KEY CHECK (id >= 0),
    stamp_ns INTEGER NOT NULL CHECK (stamp_ns >= 0),
    source TEXT NOT NULL,
    camera TEXT NOT NULL,
    x REAL, y REAL, z REAL, qx REAL, qy REAL, qz REAL, qw REAL,
    lat REAL, lon REAL
)
"""
_MAX_SQL_PARAMS = 900  # below SQLite's historical limit of 999 bound parameters
_QUAT_NORM_TOL = 1e-2


@dataclass
class PlaceRecord:
    """What is known about the image a map place came from."""

    stamp_ns: int = 0  # capture time, ns since the epoch (0 = unknown)
    source: str = ""  # image file name or "bag:<path>#<topic>@<stamp_ns>"
    camera: str = ""  # camera / topic name
    pose: tuple[float, float, float, float, float, float, float] | None = None  # x y z qx qy qz qw, map frame
    latlon: tuple[float, float] | None = None


def check_record(i: int, r: object) -> tuple:
    """Validate one record and return its row (without id); `i` names it in errors."""
    if not isinstance(r, PlaceRecord):
        raise ValueError(f"records[{i}] must be a PlaceRecord, got {type(r).__name__}")
    if (
        isinstance(r.stamp_ns, bool)
        or not isinstance(r.stamp_ns, (int, np.integer))
        or not 0 <= r.stamp_ns < 2**63
    ):
        raise ValueError(
            f"records[{i}].stamp_ns must be a non-negative int (ns since epoch), got {r.stamp_ns!r}"
        )
    for field in ("source", "camera"):
        if not isinstance(getattr(r, field), str):
            raise ValueError(f"records[{i}].{field} must be a str, got {type(getattr(r, field)).__name__}")
    pose: Sequence[float] = (None,) * 7  # type: ignore[assignment]
    if r.pose is not None:
        pose = _floats(f"records[{i}].pose", r.pose, 7)
        qn = math.sqrt(sum(q * q for q in pose[3:]))
        if abs(qn - 1.0) > _QUAT_NORM_TOL:
            raise ValueError(f"records[{i}].pose quaternion (qx qy qz qw) has norm {qn:.4f}, expected 1")
    latlon: Sequence[float] = (None, None)  # type: ignore[assignment]
    if r.latlon is not None:
        latlon = _floats(f"records[{i}].latlon", r.latlon, 2)
        if not (-90 <= latlon[0] <= 90 and -180 <= latlon[1] <= 180):
            raise ValueError(f"records[{i}].latlon {tuple(latlon)} is outside [-90, 90] x [-180, 180]")
    return (int(r.stamp_ns), r.source, r.camera, *pose, *latlon)


def _floats(name: str, values: object, n: int) -> list[float]:
    try:
        out = [float(v) for v in values]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be {n} numbers, got {values!r}") from exc
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be {n} finite numbers, got {values!r}")
    return out


def _to_record(row: tuple) -> PlaceRecord:
    pose = None if row[4] is None else tuple(float(v) for v in row[4:11])
    latlon = None if row[11] is None else (float(row[11]), float(row[12]))
    return PlaceRecord(
        stamp_ns=int(row[1]), source=row[2], camera=row[3], pose=pose, latlon=latlon  # type: ignore[arg-type]
    )


def create_store(path: Path, rows: Iterable[tuple], first_id: int = 0) -> None:
    """A new places.sqlite holding `rows` (as given by check_record) with ids from `first_id`."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("PRAGMA synchronous=FULL")
        with con:
            con.execute(_CREATE)
            con.execute(f"PRAGMA user_version={SQLITE_SCHEMA_VERSION}")
            con.executemany(
                f"INSERT INTO places VALUES ({','.join('?' * len(_COLUMNS))})",
                ((first_id + i, *row) for i, row in enumerate(rows)),
            )
    finally:
        con.close()


class PlaceStore:
    """One connection to places.sqlite, usable from any thread (a lock serialises calls)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise MapError(f"places.sqlite is missing ({path})")
        try:
            self._con = sqlite3.connect(path, check_same_thread=False)
            self._con.execute("PRAGMA synchronous=FULL")
            version = self._con.execute("PRAGMA user_version").fetchone()[0]
            cols = tuple(r[1] for r in self._con.execute("PRAGMA table_info(places)"))
        except sqlite3.DatabaseError as exc:
            raise MapError(f"places.sqlite is not a readable SQLite database: {exc}") from exc
        if version != SQLITE_SCHEMA_VERSION:
            raise MapError(
                f"places.sqlite has schema version {version}, this code reads {SQLITE_SCHEMA_VERSION}"
            )
        if cols != _COLUMNS:
            raise MapError(f"places.sqlite table 'places' has columns {cols}, expected {_COLUMNS}")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._con.close()

    def validate(self, count: int, *, integrity: bool) -> None:
        """Ids 0..count-1 must all be present (ids are unique and >= 0, so counting suffices)."""
        with self._lock:
            try:
                if integrity:
                    result = self._con.execute("PRAGMA quick_check").fetchone()[0]
                    if result != "ok":
                        raise MapError(f"places.sqlite failed SQLite's integrity check: {result}")
                have = self._con.execute("SELECT COUNT(*) FROM places WHERE id < ?", (count,)).fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise MapError(f"places.sqlite is damaged: {exc}") from exc
        if have != count:
            raise MapError(
                f"count mismatch: places.sqlite has {have} places with id < {count}, manifest.json says {count}"
            )

    def append(self, first_id: int, rows: list[tuple]) -> None:
        """Insert places from `first_id` in one transaction, replacing leftovers of a killed append."""
        with self._lock, self._con:
            self._con.execute("DELETE FROM places WHERE id >= ?", (first_id,))
            self._con.executemany(
                f"INSERT INTO places VALUES ({','.join('?' * len(_COLUMNS))})",
                ((first_id + i, *row) for i, row in enumerate(rows)),
            )

    def get(self, ids: np.ndarray) -> list[PlaceRecord]:
        found: dict[int, PlaceRecord] = {}
        unique = np.unique(ids).tolist()
        with self._lock:
            for start in range(0, len(unique), _MAX_SQL_PARAMS):
                part = unique[start : start + _MAX_SQL_PARAMS]
                sql = f"SELECT * FROM places WHERE id IN ({','.join('?' * len(part))})"
                for row in self._con.execute(sql, part):
                    found[int(row[0])] = _to_record(row)
        missing = [i for i in unique if i not in found]
        if missing:
            raise MapError(f"places.sqlite has no record for ids {missing[:10]}")
        return [found[int(i)] for i in ids]
