"""`vpr map`: move maps between a directory and a Milvus collection, inspect one, serve a Lite file.

    vpr map push MAP_DIR URI [--replace]   publish a local map (as writer N with ?writer=N)
    vpr map pull URI MAP_DIR [--overwrite] a local copy for offline use
    vpr map info URI_OR_DIR                size, encoder fingerprint, bits, dim, frame
    vpr map serve FILE.db [--port P]       Milvus Lite for several processes (milvus://127.0.0.1:P/...)
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from vpr_core.cli import run_module


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    push = sub.add_parser("push", help="copy a map directory into a Milvus collection")
    push.add_argument("directory", help="map directory (vpr build-map)")
    push.add_argument("uri", help="milvus://HOST:PORT/COLLECTION or milvus-lite:FILE.db/COLLECTION [?writer=N]")
    push.add_argument("--replace", action="store_true", help="drop the collection first (else places are upserted)")
    pull = sub.add_parser("pull", help="copy a Milvus collection into a new map directory")
    pull.add_argument("uri", help="milvus://HOST:PORT/COLLECTION or milvus-lite:FILE.db/COLLECTION")
    pull.add_argument("directory", help="map directory to write")
    pull.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    info = sub.add_parser("info", help="what a map holds")
    info.add_argument("uri", help="map directory or Milvus URI")
    serve = sub.add_parser("serve", help="serve a Milvus Lite file on a TCP port until Ctrl-C")
    serve.add_argument("file", help="Milvus Lite file (FILE.db; created if missing)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=19530)


def run(args: argparse.Namespace) -> int:
    from vpr_core.mapstore import open_map
    from vpr_core.mapstore.lite_server import serve_lite
    from vpr_core.mapstore.transfer import pull, push

    # A refusal (ValueError, OSError) ends in run_module as one line and exit code 2.
    if args.action == "push":
        done = push(args.directory, args.uri, replace=args.replace)
        print(f"{args.uri}: {done.writer_count} places of writer {done.location.writer}, {done.size} in all")
        done.close()
    elif args.action == "pull":
        done = pull(args.uri, args.directory, overwrite=args.overwrite)
        print(f"{args.directory}: {done.size} places from {args.uri}")
        done.close()
    elif args.action == "info":
        m = open_map(args.uri, verify=False)
        print(f"{args.uri}: {m.size} places, {m.bits}-bit codes, {m.dim}-D descriptors, frame {m.frame_id!r}, "
              f"encoder fingerprint {m.fingerprint}")
        m.close()
    else:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with serve_lite(args.file, args.host, args.port) as address:
            print(f"serving {args.file} at {address}/COLLECTION (Ctrl-C stops)", flush=True)
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr map"))
