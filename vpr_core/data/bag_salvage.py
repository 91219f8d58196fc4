"""What a damaged rosbag2 still holds: the messages before the damage of an .mcap or .db3 cut short.

A recorder that is killed (or a copy that runs out of disk) leaves an .mcap without its summary and
footer and a .db3 shorter than its header says, often without metadata.yaml; ``rosbags`` refuses
both whole. Here each storage file is read record by record from its start, and reading stops at the
first record that is not complete, so every message handed out is exactly as it was written:

- mcap: the ``mcap`` library's StreamReader, which needs no summary, over a file whose reads must
  return every byte asked for (the library would otherwise parse a record cut by the end of the file
  from the bytes that are left);
- sqlite3: SQLite (through ``apsw``, as rosbags uses it) through a VFS that shows only the file's
  whole pages, with ``writable_schema`` so SQLite accepts a file shorter than its header says; rows
  are read in insertion order until the first one whose pages are gone. Without the VFS, SQLite
  fills a cut last page with zeros and would hand out a message whose end is zeros.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import apsw
import zstandard
from mcap.exceptions import McapError
from mcap.records import Channel, DataEnd, Message, Schema
from mcap.stream_reader import StreamReader
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

from vpr_core.data.frame import DataError

STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
_VFS_NAME = "vpr_whole_pages"
# What a damaged mcap record raises while it is parsed: the library's own errors, a cut record
# (_CutShort), and what garbage bytes give the struct, text and decompression code under it.
_MCAP_DAMAGE = (McapError, ValueError, struct.error, RuntimeError, zstandard.ZstdError)


@dataclass
class SalvagedTopic:
    """One topic of a damaged bag: the fields of rosbags' connection and topic info that the bag
    reader uses, so a salvaged bag reads through the same code as an intact one."""

    topic: str
    msgtype: str
    msgcount: int = 0
    last_log_ns: int | None = None  # bag (receive) time of its last message before the damage


@dataclass
class SalvagedBag:
    """The intact beginning of a damaged rosbag2, with the reading interface of rosbags' AnyReader
    that the bag reader uses (``topics``, ``connections``, ``messages``, ``deserialize``).

    ``damage`` says what is wrong, ``repair`` how to fix the file for good (both one line)."""

    files: list[Path]
    storage: str
    damage: str
    repair: str
    topics: dict[str, SalvagedTopic] = field(default_factory=dict)

    is2 = True  # a rosbag2: its messages are CDR already, as rosbags' AnyReader.is2 says

    @property
    def connections(self) -> list[SalvagedTopic]:
        return list(self.topics.values())

    def messages(self, connections: list[SalvagedTopic]) -> Iterator[tuple[SalvagedTopic, int, bytes]]:
        """(topic, bag time ns, CDR bytes) of the wanted topics in file order, up to the damage."""
        wanted = {c.topic for c in connections}
        for topic, _msgtype, log_ns, data in _read_files(self.files, self.storage)[0]:
            if topic in wanted:
                yield self.topics[topic], log_ns, data

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        try:
            return _typestore().deserialize_cdr(raw, msgtype)
        except (SerdeError, KeyError) as err:
            raise DataError(f"cannot decode a {msgtype} message: {err}") from None


def salvage(path: Path, open_error: str) -> SalvagedBag:
    """The readable part of the damaged bag at ``path`` (a rosbag2 directory, .mcap or .db3), read
    once to count its messages. Raises DataError with ``open_error`` when no damage is found (the bag
    was refused for another reason) or nothing is readable."""
    path = Path(path)
    files = _storage_files(path)
    if not files:
        raise DataError(open_error)
    storage = STORAGE_SUFFIXES[files[0].suffix]
    messages, outcome = _read_files(files, storage)
    topics: dict[str, SalvagedTopic] = {}
    for topic, msgtype, log_ns, _data in messages:
        info = topics.setdefault(topic, SalvagedTopic(topic, msgtype))
        info.msgcount += 1
        info.last_log_ns = log_ns
    damaged_file, damage = outcome.value
    if path.is_dir() and not (path / "metadata.yaml").exists():
        damage = "; ".join(filter(None, [damage, "metadata.yaml is missing"]))
    if not damage:
        raise DataError(open_error)
    if not topics:
        raise DataError(f"{open_error} (nothing is readable before the damage: {damage})")
    return SalvagedBag(files, storage, damage, _repair_hint(path, storage, damaged_file), topics)


def cut_sqlite(path: Path) -> str:
    """Why a .db3 of the bag is cut short ("" when none is): rosbags opens a .db3 whose last page is
    cut, and fails only on reaching it, or reads it filled with zeros; checked from the header."""
    files = _storage_files(path)
    for file in files if files and files[0].suffix == ".db3" else []:
        cut = _sqlite_cut(file)
        if cut:
            return f"{file.name} {cut}"
    return ""


def _sqlite_cut(file: Path) -> str:
    """Why ``file`` is shorter than its SQLite header says or ends inside a page ("" if it is not)."""
    with file.open("rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return ""  # not cut short but not SQLite either: the reader says what it makes of it
    page_size = _page_size(header)
    declared = int.from_bytes(header[28:32], "big") * page_size
    size = file.stat().st_size
    return f"is cut short ({size} of {declared} bytes)" if size < declared or size % page_size else ""


def _storage_files(path: Path) -> list[Path]:
    """The bag's storage files in recording order (split bags end in _0, _1, ...), all of one kind."""
    if path.is_file():
        return [path] if path.suffix in STORAGE_SUFFIXES else []
    files = [p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES]
    if len({p.suffix for p in files}) != 1:
        return []
    return sorted(files, key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)])


@dataclass
class _Outcome:
    """Set when a reading generator ends: the file that is damaged and how, or (None, "")."""

    value: tuple[Path | None, str] = (None, "")


def _read_files(files: list[Path], storage: str) -> tuple[Iterator[tuple[str, str, int, bytes]], _Outcome]:
    """Messages (topic, msgtype, bag time ns, data) of ``files`` in order up to the first damage, and
    the outcome, filled in once the messages are exhausted."""
    outcome = _Outcome()
    read = _read_mcap if storage == "mcap" else _read_sqlite

    def messages() -> Iterator[tuple[str, str, int, bytes]]:
        for file in files:
            damage = yield from read(file)
            if damage:
                outcome.value = (file, f"{file.name} {damage}")
                return

    return messages(), outcome


class _CutShort(McapError):
    """The file ended inside a record (or before the footer)."""


class _ExactReads:
    """A binary file whose reads return every byte asked for or raise _CutShort: the mcap library
    would otherwise parse a record cut by the end of the file from the bytes that are left."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def read(self, size: int) -> bytes:
        offset = self.file.tell()
        data = self.file.read(size)
        if len(data) != size:
            raise _CutShort(f"is cut short: it ends at byte {offset + len(data)}, inside a record")
        return data


def _read_mcap(file: Path) -> Generator[tuple[str, str, int, bytes], None, str]:
    """Messages of one .mcap in file order up to its first incomplete record; returns the damage
    ("" for a complete file)."""
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    data_end = False
    with file.open("rb") as raw:
        try:
            for record in StreamReader(_ExactReads(raw), validate_crcs=True).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record.name
                elif isinstance(record, Channel):
                    channels[record.id] = (record.topic, schemas.get(record.schema_id, ""))
                elif isinstance(record, Message) and record.channel_id in channels:
                    yield *channels[record.channel_id], record.log_time, record.data
                elif isinstance(record, DataEnd):
                    data_end = True
        except _CutShort as err:
            if data_end:
                return "has all its messages but lacks its summary or footer (the recorder did not close it)"
            return str(err)
        except _MCAP_DAMAGE as err:
            return f"is damaged at byte {raw.tell()}: {err}"
    return ""


def _read_sqlite(file: Path) -> Generator[tuple[str, str, int, bytes], None, str]:
    """Messages of one .db3 in insertion order up to the first row whose pages are gone; returns the
    damage ("" for a complete file)."""
    cut = _sqlite_cut(file)
    _register_vfs()
    try:
        db = apsw.Connection(f"{file.resolve().as_uri()}?immutable=1",
                             flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI, vfs=_VFS_NAME)
    except apsw.Error as err:
        return f"cannot be opened: {err}"
    try:
        db.execute("PRAGMA writable_schema=ON")
        topics = {tid: (name, msgtype) for tid, name, msgtype in db.execute("SELECT id, name, type FROM topics")}
        for topic_id, log_ns, data in db.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
            if topic_id in topics:
                yield *topics[topic_id], int(log_ns), bytes(data)
    except apsw.Error as err:
        return f"{cut or 'is damaged'}: {err}"
    finally:
        db.close()
    return cut


def _page_size(header: bytes) -> int:
    """The page size in an SQLite header (bytes 16-17, big endian; 1 stands for 65536)."""
    value = int.from_bytes(header[16:18], "big")
    return 65536 if value == 1 else value


class _WholePagesFile(apsw.VFSFile):
    """A database file whose size reads as its whole pages only, so SQLite treats a page cut by the
    end of the file as missing (corruption it reports) instead of filling it with zeros."""

    def xFileSize(self) -> int:
        size = super().xFileSize()
        header = self.xRead(100, 0) if size >= 100 else b""
        page_size = _page_size(header) if len(header) == 100 else 1
        return size - size % page_size


class _WholePagesVFS(apsw.VFS):
    def __init__(self) -> None:
        super().__init__(_VFS_NAME, "")

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        return _WholePagesFile("", name, flags)


@cache
def _register_vfs() -> _WholePagesVFS:
    """Registered once per process; SQLite keeps it by name."""
    return _WholePagesVFS()


@cache
def _typestore() -> Any:
    """The message types a salvaged bag is decoded with (the reader's default, ROS 2 Kilted): the
    standard image, pose and fix messages, which have not changed across ROS 2 releases."""
    return get_typestore(Stores.ROS2_KILTED)


def _repair_hint(path: Path, storage: str, damaged_file: Path | None) -> str:
    """How to rewrite the bag so that every tool reads it (the CLIs named were not run here)."""
    steps = []
    if damaged_file is not None and storage == "mcap":
        steps.append(f"`mcap recover {damaged_file} -o FIXED.mcap` (the mcap CLI) and put FIXED.mcap in its place")
    elif damaged_file is not None:
        steps.append(f"`sqlite3 {damaged_file} .recover | sqlite3 FIXED.db3` and put FIXED.db3 in its place")
    if path.is_dir():
        steps.append(f"`ros2 bag reindex {path} -s {storage}` to rebuild metadata.yaml")
    return ", then ".join(steps)
