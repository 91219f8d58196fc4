"""Milvus Lite served over TCP, so that several processes share one map file.

Milvus Lite runs its engine in a child process of the first client that opens a `.db` file and locks
the file: a second process that opens it fails ("Open local milvus failed"). Served on a port, the
file answers any number of processes through the same gRPC API as a Milvus server, so writers and
readers connect with milvus://HOST:PORT/COLLECTION exactly as a fleet connects to a cluster. This is
a test and single-machine arrangement: one engine process, no replication.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

from vpr_core.mapstore.errors import MapUnavailable


@contextmanager
def serve_lite(db_file: str | os.PathLike, host: str = "127.0.0.1", port: int = 19530,
               ready_timeout_s: float = 30.0) -> Iterator[str]:
    """Serves `db_file` until the block ends; yields the milvus:// address (without collection)."""
    from milvus_lite.server import Server
    from pymilvus import MilvusClient, MilvusException

    server = Server(str(db_file), address=f"{host}:{port}")
    if not server.init() or not server.start():
        raise MapUnavailable(f"cannot serve {db_file} on {host}:{port}: the file is held by another process "
                             "or the port is taken (see the log above)")
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                MilvusClient(uri=f"http://{host}:{port}", timeout=2.0).close()
                break
            except MilvusException:
                if time.monotonic() > deadline:
                    raise MapUnavailable(f"Milvus Lite on {host}:{port} did not answer within {ready_timeout_s} s")
                time.sleep(0.2)
        yield f"milvus://{host}:{port}"
    finally:
        server.stop()
