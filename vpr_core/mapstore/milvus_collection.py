"""The Milvus side of a map: client connections (with the one-process rule of Milvus Lite files),
database calls that fail as MapUnavailable, and the collection's schema, indexes and metadata."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from vpr_core.mapdb.errors import MapError
from vpr_core.mapdb.manifest import FORMAT
from vpr_core.mapstore.errors import MapUnavailable
from vpr_core.mapstore.uri import MilvusLocation

SCHEMA_VERSION = 1
SOURCE_LEN, CAMERA_LEN = 4096, 512
# Stage-1 index: Milvus Lite implements BIN_FLAT only; a server gets an inverted-file index.
LITE_INDEX = {"index_type": "BIN_FLAT", "params": {}}
SERVER_INDEX = {"index_type": "BIN_IVF_FLAT", "params": {"nlist": 1024}}
_LITE_USERS: dict[str, int] = {}  # open clients per Milvus Lite file in this process
_LITE_LOCK = threading.Lock()


def _pymilvus():
    """Imported on first use: pymilvus pulls in grpc and pandas (a second of start-up)."""
    import pymilvus

    return pymilvus


def connect(location: MilvusLocation) -> Any:
    """A client of the database ``location`` names; MapUnavailable when it cannot be opened."""
    pm = _pymilvus()
    kwargs: dict[str, Any] = {"uri": location.client_uri, "timeout": location.timeout_s}
    if location.token:
        kwargs["token"] = location.token
    if location.db_name:
        kwargs["db_name"] = location.db_name
    try:
        client = pm.MilvusClient(**kwargs)
    except pm.MilvusException as exc:
        if location.lite:
            raise MapUnavailable(
                f"{location.uri}: cannot open the Milvus Lite file ({exc.message}); Milvus Lite lets one process "
                f"hold a file: serve it with `vpr map serve {location.client_uri}` and connect with "
                f"milvus://127.0.0.1:PORT/{location.collection}") from None
        raise MapUnavailable(f"{location.uri}: cannot reach Milvus at {location.client_uri}: {exc.message}") from None
    if location.lite:
        with _LITE_LOCK:
            _LITE_USERS[location.client_uri] = _LITE_USERS.get(location.client_uri, 0) + 1
    return client


def disconnect(location: MilvusLocation, client: Any) -> None:
    """Closes a client; the last one of a Milvus Lite file also stops its engine, which pymilvus never
    does, so that the file is free for another process (e.g. `vpr map serve`) afterwards."""
    client.close()
    if not location.lite:
        return
    with _LITE_LOCK:
        _LITE_USERS[location.client_uri] -= 1
        if _LITE_USERS[location.client_uri] == 0:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(location.client_uri)


def call(location: MilvusLocation, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One database call with the URI's timeout; a failure of the database becomes MapUnavailable."""
    pm = _pymilvus()
    if fn.__name__ not in ("next", "close"):
        kwargs.setdefault("timeout", location.timeout_s)
    try:
        return fn(*args, **kwargs)
    except pm.MilvusException as exc:
        raise MapUnavailable(f"{location.uri}: {fn.__name__} failed: {exc.message}") from None


def create_collection(location: MilvusLocation, client: Any, meta: dict) -> None:
    """The collection, then its indexes: the server's stage-1 index, or BIN_FLAT where the database
    refuses it (a Milvus Lite file served over TCP by `vpr map serve` looks like a server)."""
    call(location, client.create_collection, location.collection, schema=_schema(client, meta))
    for kind in (SERVER_INDEX, LITE_INDEX) if not location.lite else (LITE_INDEX,):
        index = client.prepare_index_params()
        index.add_index("code", metric_type="HAMMING", **kind)
        try:
            call(location, client.create_index, location.collection, index)
            break
        except MapUnavailable as exc:
            if "only support BIN_FLAT" not in str(exc):
                raise
    index = client.prepare_index_params()
    # Milvus loads only indexed vector fields; the float field is fetched by id, never searched.
    index.add_index("desc", index_type="FLAT", metric_type="IP")
    call(location, client.create_index, location.collection, index)


def load_collection(location: MilvusLocation, client: Any) -> dict[str, Any]:
    """Loads the collection for search once both indexes exist (a writer that joins a collection
    another one is creating waits for them); returns the stage-1 index's kind and parameters."""
    deadline = time.monotonic() + location.timeout_s
    while set(call(location, client.list_indexes, location.collection)) < {"code", "desc"}:
        if time.monotonic() > deadline:
            raise MapError(f"{location.uri}: the collection has no index on 'code' and 'desc'; it was not created "
                           "by vpr (or its creator died): drop it or choose another name")
        time.sleep(0.2)
    call(location, client.load_collection, location.collection)
    info = call(location, client.describe_index, location.collection, "code")
    params = {k: v for k, v in info.items() if k not in ("index_type", "metric_type", "field_name", "index_name",
                                                         "total_rows", "indexed_rows", "pending_index_rows", "state")}
    return {"kind": info["index_type"], "params": params}


def _schema(client: Any, meta: dict) -> Any:
    pm = _pymilvus()
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False, description=json.dumps(meta))
    schema.add_field("id", pm.DataType.INT64, is_primary=True)
    schema.add_field("code", pm.DataType.BINARY_VECTOR, dim=meta["bits"])
    schema.add_field("desc", pm.DataType.FLOAT16_VECTOR, dim=meta["dim"])
    schema.add_field("stamp_ns", pm.DataType.INT64)
    schema.add_field("source", pm.DataType.VARCHAR, max_length=SOURCE_LEN)
    schema.add_field("camera", pm.DataType.VARCHAR, max_length=CAMERA_LEN)
    schema.add_field("pose", pm.DataType.ARRAY, element_type=pm.DataType.DOUBLE, max_capacity=7)
    schema.add_field("latlon", pm.DataType.ARRAY, element_type=pm.DataType.DOUBLE, max_capacity=2)
    return schema


def read_meta(location: MilvusLocation, client: Any) -> dict[str, Any]:
    desc = call(location, client.describe_collection, location.collection)
    try:
        meta = json.loads(desc.get("description") or "")
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MapError(f"{location.uri}: collection {location.collection!r} is not a {FORMAT!r} map (its "
                       "description holds no map metadata); choose another collection name")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise MapError(f"{location.uri}: map schema version {meta.get('schema_version')!r}, this code reads "
                       f"{SCHEMA_VERSION}")
    for key, typ in (("fingerprint", str), ("encoder_config", dict), ("bits", int), ("dim", int),
                     ("frame_id", str)):
        if not isinstance(meta.get(key), typ):
            raise MapError(f"{location.uri}: map metadata field {key!r} is missing or has the wrong type")
    return meta
