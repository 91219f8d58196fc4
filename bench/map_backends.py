"""Map directory vs Milvus Lite on one synthetic map: insert throughput, query latency, agreement.

Issue 19 put a Milvus collection behind the same two-stage search as the map directory. This bench
says what that costs on one machine, in one run and on the same map, so that the two backends meet
the same load. The places are the synthetic clustered map of bench/search.py
(vpr_core/search/synthetic.py). Each chunk of places is appended to a map directory (`MapDB.append`, the
default backend) and to a Milvus Lite collection (`create_map("milvus-lite:FILE.db/COLL")`, whose
`append` upserts batches of about 256 KB), one after the other inside one loop. The directory's search
index is then built and stored as `vpr build-map` does.

The same queries are then searched one at a time, as the node does. Each query goes to every backend
in turn: the directory with its default index (IVF above 50 k places), the directory with a flat
index (exact stage 1, like Milvus Lite's BIN_FLAT), and the Lite collection opened in this process.
Unless --no-served is given, the same file is afterwards served by `vpr map serve` and searched over
loopback through milvus://, which is how several processes share a map. The served run's inserts are
timed on a second collection of the same places (--served-places).

Agreement compares ids: a directory's place i and the collection's writer-0 place i are the same
place. Milvus Lite runs its engine in its own process, with its own threads. Only wall time is
comparable, so no CPU times are given.

    python bench/map_backends.py                               # 100 k places, D=2048, 512 bits
    python bench/map_backends.py --places 5000 --queries 50    # a smoke run (under a minute)
    python bench/map_backends.py --workdir DIR --keep          # keep the map directory and the .db file
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)
from vpr_core.mapdb import PlaceRecord  # noqa: E402
from vpr_core.mapstore import PlaceMap, create_map, open_map, open_searcher  # noqa: E402
from vpr_core.search import SearchConfig, TwoStageSearcher, synthetic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLLECTION = "bench"
SERVED_COLLECTION = "bench_served"
K = 10


@dataclass
class Backend:
    """One way of holding and searching the map, with what was measured of it."""

    name: str
    stage1: str = ""
    insert_s: float = 0.0  # wall time inside the backend's append calls
    inserted: int = 0
    index_s: float | None = None
    open_s: float = 0.0
    latency_s: list[float] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)

    def found(self) -> np.ndarray:
        return np.stack(self.ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chunks(cfg: synthetic.SyntheticConfig, n: int, src: np.ndarray
           ) -> Iterator[tuple[np.ndarray, np.ndarray, list[PlaceRecord], np.ndarray]]:
    """(codes, desc, records, latents of the query sources in this chunk) of the map's places."""
    start = 0
    for codes, desc, z in synthetic.places(cfg, n):
        records = [PlaceRecord(source=f"synthetic/{start + i:07d}", camera="cam0") for i in range(len(z))]
        sel = src[(src >= start) & (src < start + len(z))]
        yield codes, desc, records, z[sel - start]
        start += len(z)


def write(maps: list[tuple[PlaceMap, Backend]], cfg: synthetic.SyntheticConfig, n: int, src: np.ndarray,
          desc: str) -> np.ndarray:
    """Appends the n places to every map, chunk by chunk; returns the latents of the `src` places."""
    z_src = []
    with tqdm(total=n, desc=desc, unit="place") as bar:
        for codes, desc_, records, z in chunks(cfg, n, src):
            z_src.append(z)
            for place_map, backend in maps:
                t = time.perf_counter()
                place_map.append(codes, desc_, records)
                backend.insert_s += time.perf_counter() - t
                backend.inserted += len(records)
            bar.update(len(records))
    return np.concatenate(z_src)


def search_all(searchers: list[tuple[TwoStageSearcher, Backend]], qc: np.ndarray, qd: np.ndarray,
               desc: str) -> None:
    """Single queries, each sent to every searcher in turn, so that load changes hit all alike."""
    for searcher, _ in searchers:  # a first query of each, untimed: connections, caches, lazy imports
        searcher.search(qc[:1], qd[:1], K)
    for i in tqdm(range(len(qc)), desc=desc, unit="query"):
        for searcher, backend in searchers:
            t = time.perf_counter()
            r = searcher.search(qc[i:i + 1], qd[i:i + 1], K)
            backend.latency_s.append(time.perf_counter() - t)
            backend.ids.append(r.ids[0])


def serve(db_file: Path) -> tuple[subprocess.Popen, str]:
    """`vpr map serve` on a free loopback port; returns the process and its milvus:// address."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "vpr_core.mapstore.command", "serve", str(db_file),
                                "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline() if process.stdout else ""
    if not line.startswith("serving"):
        process.kill()
        raise RuntimeError(f"vpr map serve did not start: {line}{process.stdout.read() if process.stdout else ''}")
    return process, f"milvus://127.0.0.1:{port}"


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Backend], dict]:
    cfg = synthetic.SyntheticConfig(dim=args.dim, bits=args.bits, seed=args.seed)
    meta = {"fingerprint": f"synthetic-bench-{args.places}-{args.dim}-{args.bits}-{args.seed}",
            "encoder_config": {"synthetic": asdict(cfg)}, "bits": args.bits, "dim": args.dim}
    src = np.sort(np.random.default_rng([args.seed, args.places]).choice(
        args.places, size=min(args.queries, args.places), replace=False))
    map_dir, db_file = workdir / "map", workdir / "bench.db"
    shutil.rmtree(map_dir, ignore_errors=True)
    db_file.unlink(missing_ok=True)
    lite_uri = f"milvus-lite:{db_file}/{COLLECTION}"

    directory = Backend("map directory (default)")
    flat = Backend("map directory, flat index")
    lite = Backend("Milvus Lite, in this process")
    served = Backend("Milvus Lite served (`vpr map serve`, milvus:// over loopback)")
    torch.set_num_threads(args.build_threads)
    dir_map, lite_map = create_map(map_dir, **meta), create_map(lite_uri, **meta)
    z_src = write([(dir_map, directory), (lite_map, lite)], cfg, args.places, src, "insert: directory + Lite")
    flat.insert_s, flat.inserted = directory.insert_s, directory.inserted

    t = time.perf_counter()  # the index `vpr build-map` trains and stores with the map
    build_cfg = SearchConfig(threads=args.build_threads)
    TwoStageSearcher.from_map(dir_map, build_cfg).save_index(dir_map)  # type: ignore[arg-type]
    directory.index_s = time.perf_counter() - t
    dir_map.close()

    search_cfg = SearchConfig(threads=args.threads)
    t = time.perf_counter()  # what the node does at start
    dir_map = open_map(map_dir, expected_fingerprint=meta["fingerprint"])
    searchers = [(open_searcher(dir_map, search_cfg), directory)]
    directory.open_s = time.perf_counter() - t
    t = time.perf_counter()
    searchers.append((open_searcher(dir_map, SearchConfig(index="flat", threads=args.threads)), flat))
    flat.open_s, flat.index_s = time.perf_counter() - t, 0.0
    lite_map.close()
    t = time.perf_counter()
    lite_map = open_map(lite_uri, expected_fingerprint=meta["fingerprint"])
    searchers.append((open_searcher(lite_map, search_cfg), lite))
    lite.open_s = time.perf_counter() - t
    for searcher, backend in searchers:
        params = searcher.index_params if backend is directory else {}
        backend.stage1 = searcher.index_kind + (f" {params}" if params else "")

    qc, qd = synthetic.queries(cfg, z_src, seed=args.seed + 1)
    torch.set_num_threads(args.threads)
    search_all(searchers, qc, qd, "search: directory, flat, Lite")
    dir_map.close()
    lite_map.close()
    info = {"places": args.places, "queries": len(qc), "disk_dir_mb": dir_mb(map_dir),
            "disk_db_mb": db_file.stat().st_size / 2**20}
    backends = [directory, flat, lite]

    if not args.no_served:
        process, address = serve(db_file)
        try:
            t = time.perf_counter()
            served_map = open_map(f"{address}/{COLLECTION}", expected_fingerprint=meta["fingerprint"])
            served_searcher = open_searcher(served_map, search_cfg)
            served.open_s = time.perf_counter() - t
            served.stage1 = served_searcher.index_kind
            search_all([(served_searcher, served)], qc, qd, "search: served Lite")
            served_map.close()
            if args.served_places:
                torch.set_num_threads(args.build_threads)
                extra = create_map(f"{address}/{SERVED_COLLECTION}", **meta)
                write([(extra, served)], cfg, args.served_places, src, "insert: served Lite")
                extra.close()
        finally:
            process.terminate()
            process.wait(timeout=60)
        backends.append(served)

    return backends, info


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def agreement(found: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Share of queries whose top-1 id, and whose top-10 id set, equal the reference's."""
    top1 = float(np.mean(found[:, 0] == reference[:, 0]))
    top10 = float(np.mean([set(a) == set(b) for a, b in zip(found, reference)]))
    return top1, top10


def print_table(backends: list[Backend], info: dict, args: argparse.Namespace) -> None:
    directory, flat = backends[0], backends[1]
    print()
    print(f"date {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}, "
          f"{info['places']:,} places, D={args.dim}, {args.bits} bits, {info['queries']} single queries, "
          f"search threads={args.threads}, torch {torch.__version__}, load average at start "
          f"{args.load_start}, at end {load_average()}")
    print(f"disk: map directory {info['disk_dir_mb']:.0f} MB, Milvus Lite file {info['disk_db_mb']:.0f} MB")
    print()
    print("| backend | stage 1 | insert places/s (places) | index build s | open s | ms/query median / p95 "
          "| median vs directory | top-1 / top-10 set = directory (default) | = directory (flat) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    ref_median = float(np.median(directory.latency_s)) * 1e3
    for b in backends:
        ms = np.asarray(b.latency_s) * 1e3
        a_dir = agreement(b.found(), directory.found())
        a_flat = agreement(b.found(), flat.found())
        insert = f"{b.inserted / b.insert_s:,.0f} ({b.inserted:,})" if b.inserted else "not measured"
        index = "n/a" if b.index_s is None else f"{b.index_s:.1f}"
        print(f"| {b.name} | {b.stage1} | {insert} | {index} | {b.open_s:.1f} | "
              f"{np.median(ms):.3f} / {np.percentile(ms, 95):.3f} | {np.median(ms) / ref_median:.1f}x | "
              f"{100 * a_dir[0]:.1f} % / {100 * a_dir[1]:.1f} % | {100 * a_flat[0]:.1f} % / {100 * a_flat[1]:.1f} % |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--places", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=2048, help="float descriptor dimension (README's search figures: 2048)")
    p.add_argument("--bits", type=int, default=512)
    p.add_argument("--queries", type=int, default=500, help="single queries, each sent to every backend")
    p.add_argument("--threads", type=int, default=1, help="search threads of the directory searcher (faiss, torch)")
    p.add_argument("--build-threads", type=int, default=max(1, os.cpu_count() or 1),
                   help="torch threads for generating places and training the directory's index")
    p.add_argument("--served-places", type=int,
                   help="places inserted into a second collection through the served file (default: --places; 0: none)")
    p.add_argument("--no-served", action="store_true", help="skip the served Lite file (milvus:// over loopback)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="where the map directory and the .db file go (default: temporary)")
    p.add_argument("--keep", action="store_true", help="keep them (`vpr map info DIR/map`); a rerun rebuilds them")
    args = p.parse_args(argv)
    if args.served_places is None:
        args.served_places = args.places
    args.load_start = load_average()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vpr_bench_backends_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        backends, info = run(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir / "map", ignore_errors=True)
            for name in ("bench.db", ".bench.db.lock"):  # Milvus Lite's file and its lock
                (workdir / name).unlink(missing_ok=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    print_table(backends, info, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
