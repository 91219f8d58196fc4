"""Map locations: one string names a map, whichever backend holds it.

    PATH                                   a map directory (the default backend, vpr_core.mapdb)
    milvus://HOST:PORT/COLLECTION          a collection on a Milvus server (standalone or cluster);
    milvus+https://HOST:PORT/COLLECTION    the same over TLS
    milvus-lite:FILE.db/COLLECTION         a collection in a Milvus Lite file, opened by this process

Options follow a `?` as key=value pairs joined by `&`:
    writer=N      the writer number (0 .. 2**23-1): place ids of this writer are N * 2**40 + 0, 1, 2, ...
                  Give every robot or build job that writes to one collection its own number, and the
                  same number again when it resumes; readers need none.
    timeout=S     whole seconds a database call may take, its retries included, before the database
                  counts as unreachable (default 10; pymilvus bounds its retries only by an int timeout)
    db=NAME       the Milvus database on a server (default: "default")

A server's token (user:password or an API key) is read from the environment variable
VPR_MILVUS_TOKEN, never from the URI, so that URIs can be logged and stored in parameter files.
Milvus Lite holds its file in one process; for several processes, serve the file (`vpr map serve`)
and connect to it with milvus://.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from vpr_core.mapdb.errors import MapError

WRITER_BITS = 23  # writer number bits above the 40 bits of a writer's own sequence
SEQUENCE_BITS = 40
TOKEN_ENV = "VPR_MILVUS_TOKEN"
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_LITE_FILE = re.compile(r"^[A-Za-z0-9.\-_]{1,35}$")  # what milvus-lite accepts as a file name
_SCHEMES = ("milvus://", "milvus+https://", "milvus-lite:")


@dataclass(frozen=True)
class MilvusLocation:
    """Where a Milvus-held map lives and how this process writes to it."""

    uri: str  # as the user wrote it (for messages)
    client_uri: str  # what pymilvus connects to: http(s)://host:port or a .db file path
    collection: str
    lite: bool  # an embedded Milvus Lite file (BIN_FLAT only) rather than a server
    writer: int = 0
    timeout_s: int = 10
    db_name: str = ""

    @property
    def token(self) -> str:
        return "" if self.lite else os.environ.get(TOKEN_ENV, "")


def is_milvus_uri(uri: str) -> bool:
    return str(uri).startswith(_SCHEMES)


def parse_milvus_uri(uri: str) -> MilvusLocation:
    """Splits a milvus:// or milvus-lite: URI; MapError names the part to change."""
    text = str(uri)
    base, _, query = text.partition("?")
    options = _options(text, query)
    if base.startswith("milvus-lite:"):
        path, _, collection = base[len("milvus-lite:"):].rpartition("/")
        name = os.path.basename(path)
        if not path.endswith(".db") or not _LITE_FILE.match(name):
            raise MapError(f"map URI {text!r}: a Milvus Lite map is milvus-lite:FILE.db/COLLECTION, with a file "
                           "name ending in .db of at most 35 letters, digits, '.', '-' or '_'")
        client_uri = os.path.abspath(os.path.expanduser(path))
        lite = True
    else:
        scheme = "https" if base.startswith("milvus+https://") else "http"
        rest = base.split("://", 1)[1]
        host, _, collection = rest.partition("/")
        if not re.match(r"^[A-Za-z0-9.\-\[\]:]+:\d+$", host):
            raise MapError(f"map URI {text!r}: expected milvus://HOST:PORT/COLLECTION (e.g. "
                           "milvus://localhost:19530/campus)")
        client_uri = f"{scheme}://{host}"
        lite = False
    if not _COLLECTION.match(collection):
        raise MapError(f"map URI {text!r}: collection name {collection!r} must start with a letter or '_' and "
                       "hold only letters, digits and '_'")
    return MilvusLocation(uri=text, client_uri=client_uri, collection=collection, lite=lite, **options)


def _options(uri: str, query: str) -> dict:
    known = {"writer", "timeout", "db"}
    pairs = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    unknown = set(pairs) - known
    if unknown:
        raise MapError(f"map URI {uri!r}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    out: dict = {}
    if "writer" in pairs:
        try:
            out["writer"] = int(pairs["writer"])
        except ValueError:
            out["writer"] = -1
        if not 0 <= out["writer"] < 2**WRITER_BITS:
            raise MapError(f"map URI {uri!r}: writer must be an int in [0, {2**WRITER_BITS - 1}], "
                           f"got {pairs['writer']!r}")
    if "timeout" in pairs:
        try:
            out["timeout_s"] = int(pairs["timeout"])
        except ValueError:
            out["timeout_s"] = 0
        if out["timeout_s"] < 1:
            raise MapError(f"map URI {uri!r}: timeout must be a whole number of seconds >= 1, got {pairs['timeout']!r}")
    if "db" in pairs:
        out["db_name"] = pairs["db"]
    return out


def place_id(writer: int, sequence: int) -> int:
    """The id of a writer's `sequence`-th place: ids of different writers never collide."""
    return (writer << SEQUENCE_BITS) | sequence


def writer_range(writer: int) -> tuple[int, int]:
    """[first, end) of the place ids owned by `writer`."""
    return writer << SEQUENCE_BITS, (writer + 1) << SEQUENCE_BITS
