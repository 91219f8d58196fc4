"""A map held in a Milvus collection: the fleet-scale backend (a server) or a single file (Milvus Lite).

One row per place: `id` (INT64 primary key, see uri.place_id), `code` (BINARY_VECTOR, searched by
HAMMING: stage 1), `desc` (FLOAT16_VECTOR, fetched by id for the client-side re-rank: stage 2) and the
PlaceRecord fields (`stamp_ns`, `source`, `camera`, `pose` and `latlon` as arrays, empty = unknown;
Milvus Lite has no nullable fields). What a directory map keeps in manifest.json (format, schema
version, encoder fingerprint and configuration, bits, dim, frame) is JSON in the
collection's description, because Milvus Lite drops collection properties; a map is refused when it
disagrees with the encoder in use, as MapDB.load refuses a directory.

Writes are upserts keyed by place id, so a resumed build or push that sends a place again replaces it
instead of duplicating it (Milvus' plain insert would keep both rows). A writer's places are numbered
densely from its first id, so the next free id is found by counting the writer's rows.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from vpr_core.mapdb.errors import MapError
from vpr_core.mapdb.inputs import check_codes, check_descriptors, check_same_rows
from vpr_core.mapdb.manifest import FORMAT
from vpr_core.mapdb.records import PlaceRecord, check_record
from vpr_core.mapstore.errors import MapUnavailable
from vpr_core.mapstore.milvus_collection import (
    CAMERA_LEN,
    SCHEMA_VERSION,
    SOURCE_LEN,
    call,
    connect,
    create_collection,
    disconnect,
    load_collection,
    read_meta,
)
from vpr_core.mapstore.uri import MilvusLocation, place_id, writer_range

# Rows per upsert call: ~256 KB requests. pymilvus packs a vector field by appending each row to one
# protobuf bytes value, which costs quadratically in rows per call: into a few thousand places of Milvus
# Lite at D = 2048, 8 MB calls inserted 110-150 places/s, 256 KB calls 3500-4200 (README, "Fleet maps").
_UPSERT_BYTES = 256 << 10
_GET_IDS = 1000  # ids per fetch call
_QUERY_WINDOW = 16384  # Milvus' largest query result (its default queryNode.maxQueryResultWindow)
_SIZE_TTL_S = 1.0  # how long a counted size is reused: readers see other writers' places this late
_RECORD_FIELDS = ["stamp_ns", "source", "camera", "pose", "latlon"]
SERVER_NPROBE = 32


class MilvusMap:
    """An open map in a Milvus collection. Create with `create` (or join an existing one) or `open`."""

    def __init__(self, location: MilvusLocation, client: Any, meta: dict[str, Any]) -> None:
        self.location = location
        self._client = client
        self._meta = meta
        self._size = self._count("")
        self._size_at = time.monotonic()
        first, end = writer_range(location.writer)
        self._next = self._count(f"id >= {first} and id < {end}")
        if self._next and not self._get([first + self._next - 1], ["id"]):
            raise MapError(f"{location.uri}: the places of writer {location.writer} are not numbered densely "
                           "(a foreign writer used its ids); give this writer another number (?writer=N)")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def open(cls, location: MilvusLocation, *, expected_fingerprint: str | None = None) -> "MilvusMap":
        """An existing map; refused when its encoder is not `expected_fingerprint`."""
        client = connect(location)
        if not call(location, client.has_collection, location.collection):
            raise MapError(f"{location.uri}: no collection {location.collection!r} there; publish a map with "
                           f"`vpr map push MAP_DIR {location.uri}` or build one with `vpr build-map --out "
                           f"{location.uri}`")
        meta = read_meta(location, client)
        if expected_fingerprint is not None and meta["fingerprint"] != expected_fingerprint:
            raise MapError(
                f"map {location.uri} was built by the encoder with fingerprint {meta['fingerprint']!r}, but the "
                f"encoder in use has {expected_fingerprint!r}; descriptors of different encoders are not "
                "comparable: rebuild the map or choose the encoder that built it")
        meta["index"] = load_collection(location, client)
        return cls(location, client, meta)

    @classmethod
    def create(cls, location: MilvusLocation, *, fingerprint: str, encoder_config: dict, bits: int, dim: int,
               frame_id: str = "map") -> "MilvusMap":
        """A new collection, or the existing one when it holds the same kind of map (several writers
        start against one collection; the first creates it). A collection of another encoder, code
        length, dimension or frame is refused."""
        if bits <= 0 or bits % 8 or dim <= 0:
            raise MapError(f"bits must be a positive multiple of 8 and dim positive, got {bits}, {dim}")
        meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "fingerprint": fingerprint,
                "encoder_config": encoder_config, "bits": bits, "dim": dim, "frame_id": frame_id}
        client = connect(location)
        if not call(location, client.has_collection, location.collection):
            try:
                create_collection(location, client, meta)
            except MapUnavailable:
                if not call(location, client.has_collection, location.collection):
                    raise
                # another writer created it meanwhile: join it below
        found = read_meta(location, client)
        for key in ("fingerprint", "bits", "dim", "frame_id"):
            if found[key] != meta[key]:
                raise MapError(f"map {location.uri} exists with {key} {found[key]!r}, this build has {meta[key]!r}; "
                               "write to another collection, or use the encoder/frame that built it")
        found["index"] = load_collection(location, client)
        return cls(location, client, found)

    # ---- properties (as MapDB) ----------------------------------------------------------------
    @property
    def size(self) -> int:
        """Places in the collection (all writers) when last counted: no database call, so status
        reports never wait for an unreachable database. Searches recount (`refresh_size`)."""
        return self._size

    def refresh_size(self) -> int:
        """Recounts the places when the last count is older than `_SIZE_TTL_S`: places other writers add
        become searchable this late (plus the collection's consistency delay)."""
        now = time.monotonic()
        if now - self._size_at > _SIZE_TTL_S:
            self._size, self._size_at = self._count(""), now
        return self._size

    @property
    def bits(self) -> int:
        return self._meta["bits"]

    @property
    def dim(self) -> int:
        return self._meta["dim"]

    @property
    def fingerprint(self) -> str:
        return self._meta["fingerprint"]

    @property
    def frame_id(self) -> str:
        return self._meta["frame_id"]

    @property
    def encoder_config(self) -> dict:
        return dict(self._meta["encoder_config"])

    @property
    def index_info(self) -> dict:
        return dict(self._meta["index"])

    @property
    def local_info(self) -> None:
        """FoL++ local features are not stored in collections."""
        return None

    @property
    def adaptation(self) -> None:
        """Map adaptations are not stored in collections (a collection holds raw encoder outputs)."""
        return None

    @property
    def path(self) -> str:
        return self.location.uri

    @property
    def writer_count(self) -> int:
        """Places this writer (the URI's writer number) has stored."""
        return self._next

    def __repr__(self) -> str:
        return f"MilvusMap({self.location.uri!r}, bits={self.bits}, dim={self.dim}, fingerprint={self.fingerprint!r})"

    # ---- reading ------------------------------------------------------------------------------
    def records(self, ids: Iterable[int] | np.ndarray) -> list[PlaceRecord]:
        """Metadata of places `ids`, in that order; MapError for an id that is not in the map."""
        ids = np.asarray(ids, dtype=np.int64)
        found = {int(r["id"]): _to_record(r) for r in self._get(np.unique(ids).tolist(), _RECORD_FIELDS)}
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise MapError(f"map {self.location.uri} has no places with ids {missing[:10]}")
        return [found[int(i)] for i in ids]

    def vectors(self, ids: np.ndarray, field: str) -> np.ndarray:
        """Rows of `field` ("code": uint8 [n, bits/8], "desc": float16 [n, D]) of places `ids`, in
        that order, fetched in one call per thousand ids."""
        ids = np.asarray(ids, dtype=np.int64)
        dtype, width = (np.uint8, self.bits // 8) if field == "code" else (np.float16, self.dim)
        unique, inverse = np.unique(ids, return_inverse=True)
        rows = {int(r["id"]): r[field] for r in self._get(unique.tolist(), [field])}
        if len(rows) != len(unique):
            missing = [int(i) for i in unique if int(i) not in rows]
            raise MapError(f"map {self.location.uri} has no places with ids {missing[:10]}")
        table = np.frombuffer(b"".join(_vector_bytes(rows[int(i)]) for i in unique), dtype)
        return table.reshape(len(unique), width)[inverse.reshape(-1)]

    def search_codes(self, codes: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1: the `limit` nearest codes by Hamming distance per query, nearest first, as
        (distances int32 [n, limit], ids int64 [n, limit]) padded with (int32 max, -1)."""
        params: dict[str, Any] = {"metric_type": "HAMMING"}
        if self._meta["index"]["kind"] == "BIN_IVF_FLAT":
            params["params"] = {"nprobe": SERVER_NPROBE}
        hits = call(self.location, self._client.search, self.location.collection,
                     data=[bytes(c) for c in np.ascontiguousarray(codes, np.uint8)], anns_field="code",
                     limit=limit, search_params=params, output_fields=[])
        dist = np.full((len(codes), limit), np.iinfo(np.int32).max, np.int32)
        ids = np.full((len(codes), limit), -1, np.int64)
        for q, row in enumerate(hits):
            # ties in ascending id order, as a flat exhaustive search returns them
            pairs = sorted((int(round(h["distance"])), int(h["id"])) for h in row)
            for j, (d, i) in enumerate(pairs[:limit]):
                dist[q, j], ids[q, j] = d, i
        return dist, ids

    def all_ids(self) -> np.ndarray:
        """Every place id, ascending, in pages of the largest result window Milvus allows (its query
        iterator fails on this schema in Milvus Lite 2.5). Pages follow primary-key order; the total
        is checked against a count, so a database that pages otherwise fails loudly."""
        total = self._count("")
        pages: list[np.ndarray] = []
        last = -1
        while sum(map(len, pages)) < total:
            got = call(self.location, self._client.query, self.location.collection, filter=f"id > {last}",
                        output_fields=["id"], limit=_QUERY_WINDOW, consistency_level="Strong")
            if not got:
                break
            page = np.sort(np.fromiter((int(r["id"]) for r in got), np.int64, len(got)))
            pages.append(page)
            last = int(page[-1])
        ids = np.concatenate(pages) if pages else np.zeros(0, np.int64)
        if len(ids) != total or (len(ids) > 1 and not (np.diff(ids) > 0).all()):
            raise MapError(f"map {self.location.uri}: listed {len(ids)} place ids but the collection counts {total} "
                           "(was it written to meanwhile? pull again when its writers are done)")
        return ids

    def rows(self, ids: np.ndarray, chunk: int = _GET_IDS) -> Iterator[tuple[np.ndarray, np.ndarray, list[PlaceRecord]]]:
        """(codes, desc, records) of places `ids` in chunks, in the given order."""
        for start in range(0, len(ids), chunk):
            part = np.asarray(ids[start:start + chunk], np.int64)
            got = {int(r["id"]): r for r in self._get(part.tolist(), ["code", "desc", *_RECORD_FIELDS])}
            if len(got) != len(part):
                raise MapError(f"map {self.location.uri}: places vanished while reading")
            rows = [got[int(i)] for i in part]
            yield (np.frombuffer(b"".join(_vector_bytes(r["code"]) for r in rows), np.uint8).reshape(len(part), -1),
                   np.frombuffer(b"".join(_vector_bytes(r["desc"]) for r in rows), np.float16).reshape(len(part), -1),
                   [_to_record(r) for r in rows])

    def last_place(self) -> tuple[PlaceRecord, np.ndarray] | None:
        """This writer's last place (record, float16 descriptor): where its build resumes."""
        if not self._next:
            return None
        last = writer_range(self.location.writer)[0] + self._next - 1
        return self.records([last])[0], self.vectors(np.array([last]), "desc")[0]

    # ---- writing ------------------------------------------------------------------------------
    def append(self, codes: np.ndarray, desc: np.ndarray, records: Sequence[PlaceRecord]) -> np.ndarray:
        """Adds places after this writer's last one; returns their ids."""
        ids = np.array([place_id(self.location.writer, self._next + i) for i in range(len(records))], np.int64)
        self.put(ids, codes, desc, records)
        self._next += len(ids)
        return ids

    def put(self, ids: np.ndarray, codes: np.ndarray, desc: np.ndarray, records: Sequence[PlaceRecord]) -> None:
        """Stores places under the given ids (upsert: a place sent again replaces itself)."""
        try:
            codes = check_codes("codes", codes, self.bits // 8)
            desc = check_descriptors("desc", desc, self.dim).astype(np.float16, copy=False)
            check_same_rows(codes=codes, desc=desc, records=list(records), ids=np.asarray(ids))
            fields = [check_record(i, r) for i, r in enumerate(records)]
        except ValueError as exc:
            raise MapError(str(exc)) from None
        per_call = max(1, _UPSERT_BYTES // (codes.shape[1] + 2 * desc.shape[1] + 256))
        for start in range(0, len(fields), per_call):
            batch = [{"id": int(ids[i]), "code": codes[i].tobytes(), "desc": desc[i], "stamp_ns": f[0],
                      "source": f[1][:SOURCE_LEN], "camera": f[2][:CAMERA_LEN],
                      "pose": [] if f[3] is None else list(f[3:10]), "latlon": [] if f[10] is None else list(f[10:12])}
                     for i, f in zip(range(start, start + per_call), fields[start:start + per_call])]
            call(self.location, self._client.upsert, self.location.collection, batch)
        self._size_at = -1e18
        self.refresh_size()

    def close(self) -> None:
        disconnect(self.location, self._client)

    # ---- internals ----------------------------------------------------------------------------
    def _count(self, expr: str) -> int:
        got = call(self.location, self._client.query, self.location.collection, filter=expr,
                    output_fields=["count(*)"], consistency_level="Strong")
        return int(got[0]["count(*)"])

    def _get(self, ids: list[int], fields: list[str]) -> list[dict]:
        out: list[dict] = []
        for start in range(0, len(ids), _GET_IDS):
            part = ids[start:start + _GET_IDS]
            try:
                out.extend(call(self.location, self._client.get, self.location.collection, ids=part,
                                 output_fields=fields))
            except MapUnavailable:
                # Milvus Lite 2.5 fails a query whose result is empty ("Unsupported data type: 0")
                if self._count(f"id in {[int(i) for i in part]}") != 0:
                    raise
        return out


def drop_map(location: MilvusLocation) -> bool:
    """Removes the collection if it exists (`vpr map push --replace`); True if there was one."""
    client = connect(location)
    try:
        present = call(location, client.has_collection, location.collection)
        if present:
            call(location, client.drop_collection, location.collection)
        return bool(present)
    finally:
        disconnect(location, client)


def _vector_bytes(value: Any) -> bytes:
    """pymilvus returns a binary or float16 vector as a one-element list of bytes."""
    return value[0] if isinstance(value, list) else bytes(value)


def _to_record(row: dict) -> PlaceRecord:
    pose, latlon = list(row["pose"]), list(row["latlon"])
    return PlaceRecord(stamp_ns=int(row["stamp_ns"]), source=row["source"], camera=row["camera"],
                       pose=tuple(float(v) for v in pose) if pose else None,  # type: ignore[arg-type]
                       latlon=(float(latlon[0]), float(latlon[1])) if latlon else None)
