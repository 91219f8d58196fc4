"""The map database: a directory of places (binary codes, float descriptors, metadata, search index).

Layout (see the package docstring for the commit protocol)::

    manifest.json        commit record: schema, encoder fingerprint/config, bits, dim, count, frame,
                         times, per-block CRC-32 of the arrays, the index file of this generation
    codes.npy            uint8   [N, bits/8]  packed sign bits, loaded into RAM (64 MB at 1 M x 512 bits)
    desc.npy             float16 [N, D]       memory-mapped, never read whole
    places.sqlite        one row per place: id, stamp, source, camera, pose, lat/lon
    index.<gen>.faiss    a trained faiss binary index over the first `ntotal` codes (optional)
    local_{desc,rel,pos}.<gen>.npy
                         optional FoL++ local features of the first `local.count` places: the K kept
                         patches per place as float16 descriptors [n, K*d], float16 reliabilities
                         [n, K] and int16 (row, column) positions [n, 2K]; maps without them load as before
    adaptation.safetensors
                         optional map adaptation (vpr_core.adapt: whitening, ITQ code) that the stored
                         rows were written with and queries must be given; maps without it load as before
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from vpr_core.adapt import MapAdaptation
from vpr_core.mapdb import arrays
from vpr_core.mapdb.adaptation_file import ADAPTATION, adaptation_entry, read_adaptation
from vpr_core.mapdb.errors import MapError
from vpr_core.fsio import atomic_write_bytes, exclusive_lock, remove_stale_temporaries
from vpr_core.mapdb.index_file import (
    check_index_entry,
    index_entry,
    read_index_file,
    remove_unreferenced_indexes,
)
from vpr_core.mapdb.inputs import check_codes, check_descriptors, check_same_rows
from vpr_core.local_features import LocalFeatures
from vpr_core.mapdb.local_files import (
    check_local_entry,
    flat_local_arrays,
    open_local,
    remove_unreferenced_local,
    write_local_arrays,
)
from vpr_core.mapdb.manifest import CODES, DESC, PLACES, new_manifest, now_iso, read_manifest, write_manifest
from vpr_core.mapdb.new_map import rewrite_map, write_new_map
from vpr_core.mapdb.records import PlaceRecord, PlaceStore, check_record


def _validated_rows(
    codes: object, desc: object, records: Sequence[PlaceRecord], bits: int | None, dim: int | None
):
    """Check a batch of places before anything touches the disk; MapError names the argument."""
    try:
        codes = check_codes("codes", codes, None if bits is None else bits // 8)
        desc = check_descriptors("desc", desc, dim)
        if not isinstance(records, (list, tuple)):
            raise ValueError(f"records must be a list of PlaceRecord, got {type(records).__name__}")
        check_same_rows(codes=codes, desc=desc, records=records)
        rows = [check_record(i, r) for i, r in enumerate(records)]
    except MapError:
        raise
    except ValueError as exc:
        raise MapError(str(exc)) from None
    return codes, desc, rows


class MapDB:
    """An open map. Create one with `create`, `build` or `load`; `append` adds places crash-safely."""

    def __init__(self, path: Path, manifest: dict[str, Any], codes: np.ndarray, store: PlaceStore,
                 adaptation: MapAdaptation | None = None) -> None:
        self.path = path
        self._manifest = manifest
        self._codes_buf = codes
        self._store = store
        self._adaptation = adaptation
        self._desc = self._open_desc()
        self._local = open_local(self.path, manifest.get("local"))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        fingerprint: str,
        encoder_config: dict,
        bits: int,
        dim: int,
        frame_id: str = "map",
        overwrite: bool = False,
    ) -> "MapDB":
        """An empty map (SLAM mode starts here), written atomically."""
        manifest = new_manifest(
            fingerprint=fingerprint, encoder_config=encoder_config, bits=bits, dim=dim, frame_id=frame_id
        )
        path = write_new_map(
            Path(path), manifest, np.zeros((0, bits // 8), np.uint8), np.zeros((0, dim), np.float16), [], overwrite
        )
        return cls.load(path, verify=False)

    @classmethod
    def build(
        cls,
        path: str | os.PathLike,
        codes: np.ndarray,
        desc: np.ndarray,
        records: list[PlaceRecord],
        *,
        fingerprint: str,
        encoder_config: dict,
        frame_id: str = "map",
        overwrite: bool = False,
    ) -> "MapDB":
        """A map of the given places, written to a temporary directory and renamed into place, so
        `path` is either absent/old or the complete new map. `desc` may be a memory map."""
        codes, desc, rows = _validated_rows(codes, desc, records, None, None)
        manifest = new_manifest(
            fingerprint=fingerprint,
            encoder_config=encoder_config,
            bits=codes.shape[1] * 8,
            dim=desc.shape[1],
            frame_id=frame_id,
        )
        return cls.load(write_new_map(Path(path), manifest, codes, desc, rows, overwrite), verify=False)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, expected_fingerprint: str | None = None, verify: bool = True
    ) -> "MapDB":
        """Open a map, refusing anything inconsistent: schema, fingerprint, shapes, dtypes, counts, and
        (with `verify`, the default) the checksums of every array and of the index file. Codes are
        checksummed on every load; `verify=False` skips re-reading desc.npy (seconds per GB)."""
        path = Path(path).absolute()
        m = read_manifest(path)
        if expected_fingerprint is not None and m["fingerprint"] != expected_fingerprint:
            raise MapError(
                f"map {path} was built by the encoder with fingerprint {m['fingerprint']!r}, but the encoder in use "
                f"has {expected_fingerprint!r}; descriptors of different encoders are not comparable: rebuild the map"
            )
        count = m["count"]
        headers = {}
        for name, dtype, cols in ((CODES, np.uint8, m["bits"] // 8), (DESC, np.float16, m["dim"])):
            headers[name] = arrays.read_header(path / name, name)
            arrays.check_layout(path / name, name, headers[name], count, cols, np.dtype(dtype))
        check_index_entry(path, m)
        local_headers = check_local_entry(path, m)
        adaptation = read_adaptation(path, m)
        store = PlaceStore(path / PLACES)
        try:
            store.validate(count, integrity=verify)
            codes = arrays.read_rows(path / CODES, headers[CODES], count)
            if arrays.extend_crcs([], 0, codes) != m["checksums"][CODES]:
                arrays.verify_crcs(path / CODES, CODES, headers[CODES], count, m["checksums"][CODES])
                raise MapError(f"{CODES}: checksums do not match manifest.json")
            if verify:
                arrays.verify_crcs(path / DESC, DESC, headers[DESC], count, m["checksums"][DESC])
                if m["index"] is not None:
                    read_index_file(path, m["index"])
                for part, header in local_headers.items():
                    entry = m["local"]
                    arrays.verify_crcs(path / entry["files"][part], entry["files"][part], header,
                                       entry["count"], entry["checksums"][part])
        except BaseException:
            store.close()
            raise
        return cls(path, m, codes, store, adaptation)

    # ---- properties ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._manifest["count"]

    @property
    def bits(self) -> int:
        return self._manifest["bits"]

    @property
    def dim(self) -> int:
        return self._manifest["dim"]

    @property
    def fingerprint(self) -> str:
        return self._manifest["fingerprint"]

    @property
    def frame_id(self) -> str:
        return self._manifest["frame_id"]

    @property
    def encoder_config(self) -> dict:
        return dict(self._manifest["encoder_config"])

    @property
    def generation(self) -> int:
        return self._manifest["generation"]

    @property
    def created(self) -> str:
        return self._manifest["created"]

    @property
    def codes(self) -> np.ndarray:
        """uint8 [N, bits/8], in RAM, read-only."""
        view = self._codes_buf[: self.size]
        view.flags.writeable = False
        return view

    @property
    def desc(self) -> np.ndarray:
        """float16 [N, D]: an np.memmap of desc.npy (a plain empty array while the map is empty)."""
        return self._desc

    @property
    def index_info(self) -> dict | None:
        """kind, params and ntotal of the stored search index, or None."""
        entry = self._manifest["index"]
        return None if entry is None else {k: entry[k] for k in ("kind", "params", "ntotal")}

    @property
    def local_info(self) -> dict | None:
        """patches, dim, count (places covered, the first ones) and fingerprint of the stored local
        features, or None for a map without them."""
        entry = self._manifest.get("local")
        return None if entry is None else {k: entry[k] for k in ("patches", "dim", "count", "fingerprint")}

    @property
    def local_features(self) -> LocalFeatures | None:
        """The stored local features (memory-mapped) of the first `local_info["count"]` places, or None."""
        return self._local

    @property
    def adaptation(self) -> MapAdaptation | None:
        """The adaptation the stored rows were written with (queries must be given it too), or None."""
        return self._adaptation

    def __repr__(self) -> str:
        return (
            f"MapDB({str(self.path)!r}, size={self.size}, bits={self.bits}, dim={self.dim}, "
            f"fingerprint={self.fingerprint!r})"
        )

    # ---- reading ------------------------------------------------------------------------------
    def records(self, ids: Iterable[int] | np.ndarray) -> list[PlaceRecord]:
        """Metadata of places `ids` (in that order); every id must be in [0, size)."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise MapError(f"ids must be a 1-D sequence of ints, got shape {ids.shape} dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.size)]
        if bad.size:
            raise MapError(f"ids {bad[:10].tolist()} are outside [0, {self.size}) of map {self.path}")
        return self._store.get(ids.astype(np.int64))

    def read_index(self) -> np.ndarray | None:
        """The stored index's bytes (uint8, for faiss.deserialize_index_binary), checksum-verified."""
        entry = self._manifest["index"]
        return None if entry is None else read_index_file(self.path, entry)

    # ---- writing ------------------------------------------------------------------------------
    def append(self, codes: np.ndarray, desc: np.ndarray, records: list[PlaceRecord]) -> np.ndarray:
        """Add places; returns their ids. Crash-safe: the rows are written past the committed count,
        then the SQLite transaction, then the manifest is replaced; a kill at any point leaves the
        previous manifest in force, and loading sees the old or the new map, never a mix."""
        codes, desc, rows = _validated_rows(codes, desc, records, self.bits, self.dim)
        first = self.size
        if not rows:
            return np.zeros(0, np.int64)
        with exclusive_lock(self.path):
            m = self._fresh_manifest()
            for name, data in ((CODES, codes), (DESC, desc)):
                header = arrays.read_header(self.path / name, name)
                arrays.append_rows(self.path / name, header, first, data)
            self._store.append(first, rows)
            m["checksums"][CODES] = arrays.extend_crcs(m["checksums"][CODES], first, codes)
            m["checksums"][DESC] = arrays.extend_crcs(m["checksums"][DESC], first, desc.astype(np.float16))
            m["count"] = first + len(rows)
            self._commit(m)
        self._grow_codes(codes)
        self._desc = self._open_desc()
        return np.arange(first, self.size, dtype=np.int64)

    def store_index(self, data: np.ndarray | bytes, *, kind: str, params: dict, ntotal: int) -> None:
        """Save a serialized search index over the first `ntotal` places, with the parameters that
        built it, as part of a new generation (old index file removed after the commit)."""
        if not 0 < ntotal <= self.size:
            raise MapError(f"index ntotal {ntotal} must be in [1, {self.size}] (the map's size)")
        if not isinstance(kind, str) or not isinstance(params, dict):
            raise MapError("index kind must be a str and params a dict")
        blob = (
            bytes(data)
            if not isinstance(data, np.ndarray)
            else np.ascontiguousarray(data, np.uint8).tobytes()
        )
        with exclusive_lock(self.path):
            m = self._fresh_manifest()
            name = f"index.{m['generation'] + 1}.faiss"
            atomic_write_bytes(self.path / name, blob)
            m["index"] = index_entry(name, blob, kind, params, ntotal)
            self._commit(m)
        remove_unreferenced_indexes(self.path, self._manifest["index"])

    def store_local_features(self, desc: np.ndarray, rel: np.ndarray, pos: np.ndarray, *, fingerprint: str) -> None:
        """Store the kept local patches of the first len(desc) places (desc [n, K, d], rel [n, K],
        pos [n, K, 2]; `fingerprint` names the local branch that made them) as a new generation: the
        arrays are written under new names, then the manifest commits them, then old ones go."""
        flat = flat_local_arrays(desc, rel, pos, fingerprint, self.size)
        n, k, d = np.shape(desc)
        with exclusive_lock(self.path):
            m = self._fresh_manifest()
            files, sums = write_local_arrays(self.path, m["generation"] + 1, flat)
            m["local"] = {"patches": k, "dim": d, "count": n, "fingerprint": fingerprint, "files": files,
                          "checksums": sums}
            self._commit(m)
        remove_unreferenced_local(self.path, self._manifest.get("local"))
        self._local = open_local(self.path, self._manifest.get("local"))

    def adapt(self, adaptation: MapAdaptation, chunk_rows: int = 16_384) -> "MapDB":
        """Rewrites this map with every row adapted and the adaptation stored (a complete new map
        replaces the old one, see ``rewrite_map``); the search index is dropped (it indexed the old
        codes) and the places and local features are kept. Returns the new map; this object is closed.
        """
        if self._adaptation is not None:
            raise MapError(f"map {self.path} is already adapted ({self._adaptation.method}); rebuild it to change that")
        if adaptation.base_fingerprint != self.fingerprint or (adaptation.dim, adaptation.bits) != (self.dim, self.bits):
            raise MapError(f"the adaptation was fitted for encoder {adaptation.base_fingerprint!r} "
                           f"({adaptation.dim}-D, {adaptation.bits} bits), not for map {self.path}")
        blob = adaptation.to_bytes()

        def adapted(part: int):
            for start in range(0, self.size, chunk_rows):
                yield adaptation.apply(self.codes[start : start + chunk_rows],
                                       np.asarray(self.desc[start : start + chunk_rows]))[part]

        with exclusive_lock(self.path):
            m = self._fresh_manifest()
            m["generation"] += 1
            m["modified"] = now_iso()
            m["index"] = None
            m["adaptation"] = adaptation_entry(adaptation, blob)
            rewrite_map(self.path, m, adapted(0), adapted(1), {ADAPTATION: blob})
        self.close()
        return MapDB.load(self.path, expected_fingerprint=self.fingerprint, verify=False)

    def close(self) -> None:
        self._store.close()

    # ---- internals ----------------------------------------------------------------------------
    def _open_desc(self) -> np.ndarray:
        if self.size == 0:
            return np.zeros((0, self.dim), np.float16)
        header = arrays.read_header(self.path / DESC, DESC)
        return np.memmap(
            self.path / DESC, dtype=np.float16, mode="r", offset=header.offset, shape=(self.size, self.dim)
        )

    def _grow_codes(self, new: np.ndarray) -> None:
        """Amortised O(1) per appended row (capacity doubling): SLAM appends one keyframe at a time."""
        n_old = self.size - len(new)
        if self._codes_buf.shape[0] < self.size:
            cap = max(self.size, 2 * self._codes_buf.shape[0], 1024)
            buf = np.empty((cap, self._codes_buf.shape[1]), np.uint8)
            buf[:n_old] = self._codes_buf[:n_old]
            self._codes_buf = buf
        self._codes_buf[n_old : self.size] = new

    def _fresh_manifest(self) -> dict[str, Any]:
        """The on-disk manifest, which must still be the one this object loaded (single writer)."""
        m = read_manifest(self.path)
        if m["generation"] != self.generation:
            raise MapError(
                f"map {self.path} was changed by another writer (generation {m['generation']}, "
                f"loaded {self.generation}); load it again"
            )
        remove_stale_temporaries(self.path, "")
        # Index files left by a writer killed between writing one and its commit.
        remove_unreferenced_indexes(self.path, self._manifest["index"])
        return m

    def _commit(self, m: dict[str, Any]) -> None:
        m["generation"] += 1
        m["modified"] = now_iso()
        write_manifest(self.path, m)
        self._manifest = m
