"""The TensorRT engine cache: one serialized engine per model and precision, rebuilt on any mismatch.

A serialized engine is only valid for the exact ONNX graph, TensorRT version, GPU model and build
settings it was made with; loading a stale one either fails deep inside TensorRT or, worse, runs with
the wrong weights. So every engine is stored beside a JSON record of the full key it was built for
plus its own checksum, and a lookup hands it back only when both match; otherwise the caller rebuilds
and the new engine replaces the old one in the same slot (the cache never grows with stale files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vpr_core.fsio import atomic_write_bytes, atomic_write_json, exclusive_lock

log = logging.getLogger(__name__)

RECORD_VERSION = 1


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; two engines with equal keys are interchangeable."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor"
    precision: str
    input_chw: tuple[int, int, int]
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_bytes: int

    def as_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["input_chw"] = list(self.input_chw)
        return record

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Human-readable field changes from a stored key to this one (empty when they match)."""
        mine = self.as_dict()
        return [
            f"{name} {stored.get(name, '<missing>')!r} -> {value!r}"
            for name, value in mine.items()
            if stored.get(name) != value
        ] + [f"{name} {stored[name]!r} -> <absent>" for name in stored if name not in mine]


@dataclass(frozen=True)
class Lookup:
    """The outcome of a cache lookup; ``reason`` says why a rebuild is needed (or that it is a hit)."""

    engine: bytes | None
    reason: str

    @property
    def hit(self) -> bool:
        return self.engine is not None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EngineCache:
    """Engines in ``directory``, one slot per name (``<model fingerprint>-<precision>``)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def engine_path(self, name: str) -> Path:
        return self.directory / f"{name}.engine"

    def record_path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def lookup(self, name: str, key: EngineKey) -> Lookup:
        """The cached engine for ``key``, or None with the reason it cannot be used."""
        engine_path, record_path = self.engine_path(name), self.record_path(name)
        if not engine_path.is_file():
            return Lookup(None, f"no engine at {engine_path}")
        try:
            record = json.loads(record_path.read_text())
            stored_key, stored_sha = record["key"], record["engine_sha256"]
            version = record["record_version"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return Lookup(None, f"engine record {record_path} is missing or unreadable ({exc})")
        if version != RECORD_VERSION:
            return Lookup(None, f"engine record {record_path} has version {version}, expected {RECORD_VERSION}")
        changes = key.differences(stored_key)
        if changes:
            return Lookup(None, f"engine {engine_path} was built for another setup: " + "; ".join(changes))
        engine = engine_path.read_bytes()
        if hashlib.sha256(engine).hexdigest() != stored_sha:
            return Lookup(None, f"engine {engine_path} does not match its recorded checksum (truncated or edited)")
        return Lookup(engine, f"reusing engine {engine_path}")

    def store(self, name: str, key: EngineKey, engine: bytes) -> Path:
        """Writes the engine, then its record; a crash between the two leaves a checksum mismatch, i.e. a rebuild."""
        self.directory.mkdir(parents=True, exist_ok=True)
        engine_path = self.engine_path(name)
        atomic_write_bytes(engine_path, engine)
        record = {
            "record_version": RECORD_VERSION,
            "key": key.as_dict(),
            "key_digest": key.digest(),
            "engine_sha256": hashlib.sha256(engine).hexdigest(),
        }
        atomic_write_json(self.record_path(name), record, indent=2, sort_keys=True)
        return engine_path


@contextmanager
def build_lock(directory: Path, name: str) -> Iterator[None]:
    """Serialises builds of one cache entry across processes: an engine build takes minutes, and a
    second process (the node and ``vpr export`` at once) should wait and then reuse the result."""
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(directory, f".{name}.lock", what="engine cache"):
        yield
