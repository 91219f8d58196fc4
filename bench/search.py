"""Two-stage search vs exhaustive float search on synthetic maps of 10 k to 1 M places.

For each map size: builds the map database (clustered synthetic descriptors, see
vpr_core/search/synthetic.py) and its search index, reloads it as the node would, then times single
queries and batches of 32 with the two-stage searcher and with exhaustive float search on the same
data, and prints per-query latency (median, p95), their ratio, how often the two-stage top-1 and
top-10 set equal the exhaustive ones, build and load times, disk size and the process's resident
memory (anonymous and file-backed, to show that desc.npy is not read into RAM). With --filter it also
times the sequence filter's update per frame (vpr_core/sequence_filter.py, default settings) on the
same map, in the same run as the search: fed the benchmark's queries (random places: the filter holds
few states where random evidence is too weak to keep any, its full 256 on a small map) and fed a
route (queries of consecutive places, the way a robot sees a map: the filter tracks it).

    python bench/search.py                      # 10 k, 100 k, 1 M places, D=2048, 512 bits
    python bench/search.py --quick              # a small smoke run (seconds)
    python bench/search.py --sizes 10000,1000000 --dim 256 --filter   # + the sequence filter's cost
    python bench/search.py --sizes 1000000 --workdir DIR --keep   # keep the map to rerun with --workdir

Latencies are measured with a warm page cache (the map was just written or read); on a cold cache
each re-ranked candidate costs a disk read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)
from vpr_core.mapdb import MapDB, MapError, PlaceRecord  # noqa: E402
from vpr_core.search import SearchConfig, TwoStageSearcher  # noqa: E402
from vpr_core.search.config import INDEX_CHOICES  # noqa: E402
from vpr_core.search import synthetic  # noqa: E402
from vpr_core.sequence_filter import SequenceFilter, SequenceFilterConfig, compile_kernels  # noqa: E402

BATCH = 32


def memory_mb() -> dict[str, float]:
    """Resident memory of this process from /proc (Linux); anonymous vs file-backed pages."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        import resource

        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20


def pct(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values) * 1e3
    return float(np.median(a)), float(np.percentile(a, 95))


@dataclass
class Row:
    places: int
    index: str
    mode: str
    two_stage_ms: tuple[float, float]
    two_stage_cpu_ms: float  # CPU time of this process: what a query costs when not preempted
    float_ms: tuple[float, float]
    top1: float
    top10: float
    pool: float


def map_path(workdir: Path, n: int, args: argparse.Namespace) -> Path:
    return workdir / f"map_{n}_{args.dim}_{args.bits}_{args.seed}"


def fingerprint_of(cfg: synthetic.SyntheticConfig, n: int) -> str:
    blob = json.dumps({"cfg": asdict(cfg), "n": n}, sort_keys=True).encode()
    return "synthetic-" + hashlib.sha256(blob).hexdigest()[:16]


def build_or_reuse(
    path: Path, cfg: synthetic.SyntheticConfig, n: int, src: np.ndarray
) -> tuple[MapDB, np.ndarray, float]:
    """The map (built now unless a complete one with the same fingerprint is there) and the latents
    of the query source places. Returns (map, latents, seconds spent writing the map)."""
    fp = fingerprint_of(cfg, n)
    want = np.zeros(len(src), bool)
    z_src = np.zeros((len(src), cfg.latent), np.float32)

    def collect(start: int, z: np.ndarray) -> None:
        sel = (src >= start) & (src < start + len(z))
        z_src[sel] = z[src[sel] - start]
        want[sel] = True

    try:
        mapdb = MapDB.load(path, expected_fingerprint=fp, verify=False)
        if mapdb.size == n:
            start = 0
            for z in synthetic.latent_chunks(cfg, n):
                collect(start, z)
                start += len(z)
            return mapdb, z_src, 0.0
    except MapError:
        pass
    mapdb = MapDB.create(
        path,
        fingerprint=fp,
        encoder_config={"synthetic": asdict(cfg)},
        bits=cfg.bits,
        dim=cfg.dim,
        overwrite=True,
    )
    heads = synthetic.make_heads(cfg)
    write_s = 0.0
    start = 0
    with tqdm(total=n, desc=f"build {n} places", unit="place", leave=False) as bar:
        for codes, desc, z in synthetic.places(cfg, n, heads):
            collect(start, z)
            records = [PlaceRecord(source=f"synthetic/{start + i:07d}", camera="cam0") for i in range(len(z))]
            t = time.perf_counter()
            mapdb.append(codes, desc, records)
            write_s += time.perf_counter() - t
            start += len(z)
            bar.update(len(z))
    return mapdb, z_src, write_s


def prepare(
    args: argparse.Namespace, path: Path, n: int, src: np.ndarray
) -> tuple[np.ndarray, float, float, float]:
    """Build the map and its index (run in a child process, so that the memory it used does not
    count in the figures of the searching process). Returns (query source latents, build s, map
    write s, index s)."""
    cfg = synthetic.SyntheticConfig(dim=args.dim, bits=args.bits, seed=args.seed)
    torch.set_num_threads(args.build_threads)
    t0 = time.perf_counter()
    mapdb, z_src, write_s = build_or_reuse(path, cfg, n, src)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if mapdb.index_info is None:
        print(f"training the search index of {n} places ...", file=sys.stderr, flush=True)
        searcher = TwoStageSearcher.from_map(
            mapdb, SearchConfig(index=args.index, threads=args.build_threads)
        )
        searcher.save_index(mapdb)
    index_s = time.perf_counter() - t0
    mapdb.close()
    return z_src, build_s, write_s, index_s


def bench_size(args: argparse.Namespace, workdir: Path, n: int) -> tuple[list[Row], dict]:
    cfg = synthetic.SyntheticConfig(dim=args.dim, bits=args.bits, seed=args.seed)
    rng = np.random.default_rng([args.seed, n])
    src = np.sort(rng.choice(n, size=min(args.queries, n), replace=False))
    route = np.arange(n // 3, min(n // 3 + args.queries, n)) if args.filter else np.empty(0, np.int64)
    wanted = np.union1d(src, route)
    path = map_path(workdir, n, args)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        z_wanted, build_s, write_s, index_s = pool.submit(prepare, args, path, n, wanted).result()
    z_src = z_wanted[np.searchsorted(wanted, src)]
    search_cfg = SearchConfig(index=args.index, threads=args.threads)
    torch.set_num_threads(args.build_threads)

    # What the node does at start: load (full verification) and reuse the stored index.
    t0 = time.perf_counter()
    mapdb = MapDB.load(path, expected_fingerprint=fingerprint_of(cfg, n))
    searcher = TwoStageSearcher.from_map(mapdb, search_cfg)
    load_s = time.perf_counter() - t0
    qc, qd = synthetic.queries(cfg, z_src, seed=args.seed + 1)
    mem_before = memory_mb()

    t0 = time.perf_counter()
    truth = searcher.float_search(qd, 10)
    truth_s = time.perf_counter() - t0

    torch.set_num_threads(args.threads)
    rows = []
    ts_single, cpu_single, ts_ids, pools = [], [], [], []
    for i in tqdm(range(len(qc)), desc="two-stage single", leave=False):
        t, c = time.perf_counter(), time.process_time()
        r = searcher.search(qc[i : i + 1], qd[i : i + 1], 10)
        ts_single.append(time.perf_counter() - t)
        cpu_single.append(time.process_time() - c)
        ts_ids.append(r.ids[0])
        pools.append(int(r.pool[0]))
    ts_ids = np.stack(ts_ids)
    ts_batch, cpu_batch, tb_ids = [], [], []
    for b in range(0, len(qc) - BATCH + 1, BATCH):
        t, c = time.perf_counter(), time.process_time()
        r = searcher.search(qc[b : b + BATCH], qd[b : b + BATCH], 10)
        ts_batch.append((time.perf_counter() - t) / BATCH)
        cpu_batch.append((time.process_time() - c) / BATCH)
        tb_ids.append(r.ids)
    tb_ids = np.concatenate(tb_ids) if tb_ids else np.zeros((0, 10), np.int64)
    mem_after = memory_mb()
    filter_ms = None
    if args.filter:
        rc, rd = synthetic.queries(cfg, z_wanted[np.searchsorted(wanted, route)], seed=args.seed + 2)
        filter_ms = {"random": filter_cost(searcher, qc, qd), "route": filter_cost(searcher, rc, rd)}

    n_float = min(args.float_queries, len(qc))
    fl_single = []
    for i in tqdm(range(n_float), desc="float single", leave=False):
        t = time.perf_counter()
        searcher.float_search(qd[i : i + 1], 10)
        fl_single.append(time.perf_counter() - t)
    fl_batch = []
    for b in range(0, max(n_float, BATCH), BATCH):
        if b + BATCH <= len(qc):
            t = time.perf_counter()
            searcher.float_search(qd[b : b + BATCH], 10)
            fl_batch.append((time.perf_counter() - t) / BATCH)

    def agree(found: np.ndarray) -> tuple[float, float]:
        t = truth.ids[: len(found)]
        top1 = float(np.mean(found[:, 0] == t[:, 0]))
        top10 = float(np.mean([set(a) == set(b) for a, b in zip(found, t)]))
        return top1, top10

    kind = searcher.index_kind + (f" {searcher.index_params}" if searcher.index_params else "")
    for mode, ts, cpu, fl, found in (
        ("single", ts_single, cpu_single, fl_single, ts_ids),
        (f"batch{BATCH}", ts_batch, cpu_batch, fl_batch, tb_ids),
    ):
        if not ts:
            continue
        top1, top10 = agree(found)
        rows.append(
            Row(
                n,
                kind,
                mode,
                pct(ts),
                pct(cpu)[0],
                pct(fl) if fl else (float("nan"),) * 2,
                top1,
                top10,
                float(np.mean(pools)),
            )
        )
    info = {
        "places": n,
        "queries": len(qc),
        "build_s": build_s,
        "map_write_s": write_s,
        "index_s": index_s,
        "load_s": load_s,
        "truth_s": truth_s,
        "disk_mb": dir_mb(path),
        "desc_mb": (path / "desc.npy").stat().st_size / 2**20,
        "mem_before": mem_before,
        "mem_after": mem_after,
        "batch_equals_single": bool(np.array_equal(tb_ids, ts_ids[: len(tb_ids)])),
        "filter_ms": filter_ms,
    }
    mapdb.close()
    return rows, info


def filter_cost(searcher: TwoStageSearcher, qc: np.ndarray, qd: np.ndarray) -> dict[str, float]:
    """Wall and CPU time of ``SequenceFilter.update`` per frame (median, p95, max; ms), fed the
    two-stage top-K of the queries in their order, and the search's own time for that top-K."""
    config = SequenceFilterConfig(enabled=True)
    found, search_wall = [], []
    for i in range(len(qc)):  # the node's search when the filter is on: its top_k results
        t = time.perf_counter()
        found.append(searcher.search(qc[i : i + 1], qd[i : i + 1], config.top_k))
        search_wall.append(time.perf_counter() - t)
    compile_kernels()  # once per machine (numba cache), not per frame: kept out of the timing
    f = SequenceFilter(config, searcher.size)
    wall, cpu, support = [], [], []
    for r in tqdm(found, desc="sequence filter", leave=False):
        t, c = time.perf_counter(), time.process_time()
        estimate = f.update(r.ids[0], r.scores[0])
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        support.append(estimate.hypotheses)
    ms = np.asarray(wall) * 1e3
    return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "max": float(ms.max()),
            "cpu_median": pct(cpu)[0], "mean_hypotheses": float(np.mean(support)), "top_k": config.top_k,
            "search_median": float(np.median(search_wall) * 1e3)}


def print_tables(rows: list[Row], infos: list[dict], args: argparse.Namespace) -> None:
    print()
    print(
        f"date {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}, "
        f"threads={args.threads}, D={args.dim}, bits={args.bits}, torch {torch.__version__}, "
        f"load average at start/end {args.load_start} / {load_average()} (other work on the machine slows every figure)"
    )
    print()
    print(
        "| places | index | mode | two-stage ms/query median / p95 | two-stage CPU ms/query median "
        "| exhaustive float ms/query median / p95 | ratio (median) | top-1 = float | top-10 set = float "
        "| mean re-rank pool |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r.float_ms[0] / r.two_stage_ms[0]
        ratio_text = f"{ratio:.1f}x" if ratio < 10 else f"{ratio:,.0f}x"
        print(
            f"| {r.places:,} | {r.index} | {r.mode} | {r.two_stage_ms[0]:.3f} / {r.two_stage_ms[1]:.3f} | "
            f"{r.two_stage_cpu_ms:.3f} | {r.float_ms[0]:.2f} / {r.float_ms[1]:.2f} | {ratio_text} | {100 * r.top1:.1f}% | {100 * r.top10:.1f}% | {r.pool:.1f} |"
        )
    print()
    print(
        "| places | queries | build s (generate+write / index) | load s (verify + index) | disk MB | desc.npy MB "
        "| RSS MB after load: total / anon / file | RSS MB after searches: total / anon / file | batch == single |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for i in infos:
        b, a = i["mem_before"], i["mem_after"]
        print(
            f"| {i['places']:,} | {i['queries']} | {i['build_s']:.1f} (write {i['map_write_s']:.1f}) / {i['index_s']:.1f} | "
            f"{i['load_s']:.1f} | {i['disk_mb']:.0f} | {i['desc_mb']:.0f} | "
            f"{b.get('VmRSS', float('nan')):.0f} / {b.get('RssAnon', float('nan')):.0f} / {b.get('RssFile', float('nan')):.0f} | "
            f"{a.get('VmRSS', float('nan')):.0f} / {a.get('RssAnon', float('nan')):.0f} / {a.get('RssFile', float('nan')):.0f} | "
            f"{i['batch_equals_single']} |"
        )
    if any(i["filter_ms"] for i in infos):
        print()
        print("| places | queries | sequence filter ms/frame median / p95 / max | CPU ms/frame median | mean "
              "hypotheses | two-stage ms/query median, k=10 / k=filter top_k | filter / search (k=top_k) |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        single = {r.places: r.two_stage_ms[0] for r in rows if r.mode == "single"}
        for i in infos:
            for kind, f in i["filter_ms"].items():
                print(f"| {i['places']:,} | {kind} | {f['median']:.3f} / {f['p95']:.3f} / {f['max']:.3f} | "
                      f"{f['cpu_median']:.3f} | {f['mean_hypotheses']:.0f} | {single[i['places']]:.3f} / "
                      f"{f['search_median']:.3f} (k={f['top_k']}) | {f['median'] / f['search_median']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated map sizes")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--bits", type=int, default=512)
    p.add_argument(
        "--queries", type=int, default=500, help="queries per size (agreement and two-stage timing)"
    )
    p.add_argument(
        "--float-queries",
        type=int,
        default=10,
        help="single queries timed with exhaustive float search (plus one batch)",
    )
    p.add_argument("--threads", type=int, default=1, help="search threads (faiss and torch)")
    p.add_argument(
        "--build-threads",
        type=int,
        default=max(1, os.cpu_count() or 1),
        help="torch threads for generating data",
    )
    p.add_argument("--index", default="auto", choices=INDEX_CHOICES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, help="where maps are built (default: a temporary directory)")
    p.add_argument(
        "--keep", action="store_true", help="keep the maps (reused by a later run with the same --workdir)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2 k and 10 k places, D=256, 100 queries")
    p.add_argument("--filter", action="store_true", help="also time the sequence filter per frame")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.dim, args.queries = "2000,10000", 256, 100
    sizes = [int(s) for s in args.sizes.split(",") if s]
    args.load_start = load_average()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vpr_bench_search_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows, infos = [], []
    try:
        for n in sizes:
            r, info = bench_size(args, workdir, n)
            rows += r
            infos.append(info)
            print(json.dumps(info), flush=True)
    finally:
        if not args.keep:
            for n in sizes:
                shutil.rmtree(map_path(workdir, n, args), ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    print_tables(rows, infos, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
