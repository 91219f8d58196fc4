"""Recall@N evaluation of an encoder on a benchmark: exhaustive float search against the two-stage search.

Both methods search the same encoded database, one query at a time as the node does, so the table
shows what the binary first stage costs in recall and what it saves in latency on the same
descriptors. With ``--local`` (a local branch checkpoint) a third method, two-stage plus FoL++ local
re-ranking, is evaluated on the same descriptors (one backbone pass gives global and local outputs),
with the candidates it re-ranked, its added latency and the local bytes per place.
Usable as a function (``evaluate``) and as ``vpr eval``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vpr_core.build_map import add_encoder_arguments, encoder_config
from vpr_core.data import DataError, EvalDataset, FrameSource, get_reader, parse_spec
from vpr_core.engine import BackendUnavailable, Encoder, ExportError, create_encoder
from vpr_core.model.local_branch import CONFIG_FILE as LOCAL_CONFIG_FILE
from vpr_core.engine.local_engines import create_local_encoder
from vpr_core.model.local_branch import LocalEncoder
from vpr_core.eval.recall import DEFAULT_NS, RecallResult, evaluate_recall, to_jsonable, write_json
from vpr_core.eval.report import save_examples
from vpr_core.search import SearchConfig, SearchResult, TwoStageSearcher
from vpr_core.search.local_rerank import LocalFeatures, LocalReranker, LocalRerankConfig
from vpr_core.search.binary_index import KINDS as INDEX_KINDS
from vpr_core.eval import sequence as seq
from vpr_core.eval.sequence import RouteSearch
from vpr_core.sequence_filter import SequenceFilterConfig
from vpr_core.cli import run_module

METHODS = ("float", "two_stage", "local")
METHOD_LABELS = {"float": "float-only", "two_stage": "two-stage", "local": "+local"}
RESULTS_FILE = "results.json"
EXAMPLES_FILE = "examples.png"
ENCODE_BATCH = 32  # images read and handed to the encoder at once; it splits them by max_batch
# The node's default top_k (LocalizationConfig): the table's latency and the picture come from the
# search that asks for this many results (or the nearest N evaluated).
NODE_TOP_K = 5


def evaluate(
    dataset: EvalDataset,
    encoder: Encoder,
    search_config: SearchConfig,
    *,
    ns: Sequence[int] = DEFAULT_NS,
    out_dir: Path | None = None,
    examples: int = 8,
    local: LocalEncoder | None = None,
    local_config: LocalRerankConfig = LocalRerankConfig(),
    sequence: SequenceFilterConfig | None = None,
    smooth: bool = False,
) -> dict[str, Any]:
    """Encode database and queries, search with both methods, and compute Recall@N and latencies.

    Recall@N of each method comes from a search that asks for N results, because the two-stage
    re-rank pool grows with k (it holds at least k candidates): reading R@1 off a k=100 search would
    re-rank 100 candidates and hide what the binary stage costs a node that asks for a few. N larger
    than the database is left out (every query would trivially score 1 there).

    Returns the JSON payload written to ``out_dir/results.json`` plus ``"predictions"``: per method
    and N, the database ids per query (int64 [Q, N], best first), which stay out of the file. With
    ``out_dir`` and ``examples > 0`` the report ``examples.png`` is drawn from the two-stage results.
    With ``local``, every method searches that encoder's outputs and the method ``local`` (two-stage
    then local re-ranking with ``local_config``) is added. With ``sequence`` (an enabled filter
    config) the queries are also taken as one route in their order: ``results["sequence"]`` holds
    per-frame R@1 of the two-stage top-1, of the causal sequence filter and, with ``smooth``, of
    offline smoothing (every frame counts, warm-up included; see sequence_summary).
    """
    kept_ns = recall_ns(ns, dataset)
    n_db = len(dataset.database)
    shown_k = min(kept_ns, key=lambda n: (abs(n - NODE_TOP_K), n))

    db_codes, db_desc, db_local, db_seconds = encode_source_with_local(dataset.database, local or encoder, "database")
    q_codes, q_desc, q_local, q_seconds = encode_source_with_local(dataset.queries, local or encoder, "queries")
    searcher = TwoStageSearcher(db_codes, db_desc, search_config)
    searches = {
        "float": lambda i, k: searcher.float_search(q_desc[i : i + 1], k),
        "two_stage": lambda i, k: searcher.search(q_codes[i : i + 1], q_desc[i : i + 1], k),
    }
    if local is not None:
        searcher.local = LocalReranker(db_local, local_config)
        searches["local"] = lambda i, k: searcher.search(
            q_codes[i : i + 1], q_desc[i : i + 1], k, query_local=q_local.take(slice(i, i + 1))
        )

    predictions: dict[str, dict[int, np.ndarray]] = {}
    shown: dict[str, SearchResult] = {}
    methods: dict[str, dict[str, Any]] = {}
    for method, search_one in searches.items():
        predictions[method], recall, latency, pools = {}, {}, {}, {}
        for k in kept_ns:
            result, seconds = search_each(search_one, len(q_desc), k, f"{METHOD_LABELS[method]} k={k}")
            predictions[method][k] = result.ids
            counted = evaluate_recall(result.ids, dataset.positive_lists, [k])
            recall[k] = counted.recall[k]
            latency[f"k={k}"] = latency_summary(seconds)
            if result.pool is not None:
                pools[f"k={k}"] = float(np.mean(result.pool))
            if k == shown_k:
                shown[method] = result
        methods[method] = {
            **RecallResult(recall, counted.num_queries, counted.num_without_positives).to_dict(),
            "latency_ms": latency,
        }
        if pools:
            methods[method]["mean_rerank_pool"] = pools
    # The design's search budget: two-stage keeps exhaustive search's top-1 on >= 99% of queries.
    methods["two_stage"]["top1_same_as_float"] = float(
        np.mean(shown["two_stage"].ids[:, 0] == shown["float"].ids[:, 0])
    )
    if local is not None:
        methods["local"].update(local_summary(methods, db_local, local_config, local, shown_k))
    route = None
    if sequence is not None and sequence.enabled:
        found, _ = search_each(searches["two_stage"], len(q_desc), min(sequence.top_k, n_db),
                               f"two-stage k={sequence.top_k} for the sequence filter")
        route = RouteSearch(dataset.name, n_db, found.ids, found.scores, np.full(len(q_desc), np.inf, np.float32),
                            [dataset.positives(q) for q in range(len(q_desc))])

    n_images = n_db + len(q_desc)
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset.summary(),
        "encoder": {
            "fingerprint": encoder.fingerprint,
            "backend": encoder.backend if local is None else f"{local.backend}+local",  # local encoded everything
            "bits": encoder.bits,
            "dim": encoder.dim,
            "config": dataclasses.asdict(encoder.config),
        },
        "search": {"ns": kept_ns, "shown_k": shown_k, "config": dataclasses.asdict(search_config)},
        "encode": {
            "images": n_images,
            "database_s": db_seconds,
            "queries_s": q_seconds,
            "ms_per_image": 1000 * (db_seconds + q_seconds) / n_images,
        },
        "methods": methods,
    }
    if route is not None:
        results["sequence"] = sequence_summary(route, sequence, smooth)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if examples > 0:
            rows = save_examples(
                out_dir / EXAMPLES_FILE,
                dataset,
                shown["two_stage"].ids,
                shown["two_stage"].scores,
                example_queries(dataset, examples),
                title=f"{dataset.name}: two-stage top {shown_k}, {model_label(results['encoder'])}",
            )
            results["examples"] = {"png": EXAMPLES_FILE, "queries": rows}
        write_json(out_dir / RESULTS_FILE, results)
    return {**to_jsonable(results), "predictions": predictions}


def local_summary(methods: dict[str, dict[str, Any]], db_local: LocalFeatures, config: LocalRerankConfig,
                  local: LocalEncoder, shown_k: int) -> dict[str, Any]:
    """What the local stage costs: latency added to two-stage per query (mean and median, at the
    shown k), local bytes per place, and its configuration."""
    key = f"k={shown_k}"
    added = {stat: methods["local"]["latency_ms"][key][stat] - methods["two_stage"]["latency_ms"][key][stat]
             for stat in ("mean", "median")}
    return {
        "added_latency_ms": added,
        "bytes_per_place": LocalFeatures.bytes_per_place(db_local.patches, db_local.dim),
        "patches_per_place": db_local.patches,
        "local_dim": db_local.dim,
        "local_fingerprint": local.local_fingerprint,
        "config": dataclasses.asdict(config),
    }


def sequence_summary(route: RouteSearch, config: SequenceFilterConfig, smooth: bool) -> dict[str, Any]:
    """Per-frame Recall@1 of the queries taken as one route in their order: the two-stage top-1
    alone, the causal sequence filter (the node's answer), and offline smoothing (looks ahead, so
    reported apart). Every frame counts from the first; no frame is skipped as blank here."""
    order = np.arange(len(route.ids))
    single = route.ids[:, 0]
    summary: dict[str, Any] = {
        "frames": len(order),
        "filter": dataclasses.asdict(config),
        "two_stage_r1": seq.recall_at_1(seq.FrameAnswers(single, seq.correct_places(route, order, single),
                                                         np.ones(len(order), bool)), route, order),
        "filtered_r1": seq.recall_at_1(seq.filtered(route, order, config), route, order),
    }
    if smooth:
        summary["smoothed_r1"] = seq.recall_at_1(seq.smoothed(route, config), route, order)
    return summary


def recall_ns(ns: Sequence[int], dataset: EvalDataset) -> list[int]:
    """The N of Recall@N that the database can answer, sorted; refuses data sets or Ns with none."""
    n_db = len(dataset.database)
    if n_db == 0 or len(dataset.queries) == 0:
        raise DataError(f"{dataset.name}: the database and the queries must both hold frames "
                        f"(got {n_db} and {len(dataset.queries)})")
    if any(int(n) < 1 for n in ns):
        raise ValueError(f"Recall@N needs N >= 1, got {list(ns)}")
    kept = sorted({int(n) for n in ns if int(n) <= n_db})
    if not kept:
        raise ValueError(f"{dataset.name}: none of Recall@{list(ns)} fits a database of {n_db} frames")
    return kept


def encode_source(source: FrameSource, encoder: Encoder, label: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Codes and descriptors of every frame, in source order, with the seconds spent inside
    ``encode`` (image decoding excluded, so the figure is the encoder's own cost)."""
    codes, desc, _, seconds = encode_source_with_local(source, encoder, label)
    return codes, desc, seconds


def encode_source_with_local(
    source: FrameSource, encoder: Encoder | LocalEncoder, label: str
) -> tuple[np.ndarray, np.ndarray, LocalFeatures | None, float]:
    """Codes, descriptors and (for a LocalEncoder) kept local patches of every frame, in source
    order, with the seconds spent inside ``encode`` (image decoding excluded, so the figure is the
    encoder's own cost)."""
    codes, descs, locals_, seconds = [], [], [], 0.0
    batch: list[np.ndarray] = []

    def flush() -> None:
        nonlocal seconds
        start = time.perf_counter()
        out = encoder.encode_local(batch) if isinstance(encoder, LocalEncoder) else encoder.encode(batch)
        seconds += time.perf_counter() - start
        codes.append(out[0])
        descs.append(out[1])
        if len(out) == 3:
            locals_.append(out[2])
        batch.clear()

    with tqdm(total=len(source), desc=f"encode {label}", unit="img", leave=False) as bar:
        for frame in source:
            batch.append(frame.rgb)
            if len(batch) == ENCODE_BATCH:
                flush()
                bar.update(ENCODE_BATCH)
        if batch:
            bar.update(len(batch))
            flush()
    local = LocalFeatures(*(np.concatenate([getattr(part, f) for part in locals_]) for f in ("desc", "rel", "pos"))) \
        if locals_ else None
    return np.concatenate(codes), np.concatenate(descs), local, seconds


def search_each(
    search_one: Callable[[int, int], SearchResult], n_queries: int, k: int, label: str
) -> tuple[SearchResult, np.ndarray]:
    """One search per query (the node's pattern, so latencies are per frame): the results stacked
    over queries, and each query's latency in seconds."""
    results, latency = [], np.empty(n_queries)
    for i in tqdm(range(n_queries), desc=f"search {label}", unit="query", leave=False):
        start = time.perf_counter()
        results.append(search_one(i, k))
        latency[i] = time.perf_counter() - start
    pools = [r.pool for r in results]
    stacked = SearchResult(
        ids=np.concatenate([r.ids for r in results]),
        scores=np.concatenate([r.scores for r in results]),
        hamming=np.concatenate([r.hamming for r in results]),
        pool=None if any(p is None for p in pools) else np.concatenate(pools),
    )
    return stacked, latency


def latency_summary(seconds: np.ndarray) -> dict[str, float]:
    ms = 1000 * seconds
    return {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95)), "mean": float(ms.mean())}


def example_queries(dataset: EvalDataset, count: int) -> list[int]:
    """Queries spread evenly over the sequence (only those with a positive): a sample of the whole
    route rather than hand-picked successes or failures."""
    candidates = [q for q in range(len(dataset.queries)) if dataset.positives(q).size]
    if not candidates or count <= 0:
        return []
    picks = np.linspace(0, len(candidates) - 1, min(count, len(candidates))).round().astype(int)
    return [candidates[i] for i in picks]


def format_table(results: dict[str, Any]) -> str:
    """The terminal summary: Recall@N in percent and search latency per method, then encode cost."""
    ns = results["search"]["ns"]
    shown = f"k={results['search']['shown_k']}"
    data = results["dataset"]
    encoder = results["encoder"]
    lines = [
        f"{data['name']}: {data['query_frames']} queries vs {data['database_frames']} database frames "
        f"({data['positive_rule']})",
        f"encoder {model_label(encoder)}, {encoder['backend']}, {encoder['bits']} bits, {encoder['dim']}-D: "
        f"{results['encode']['ms_per_image']:.2f} ms/image over {results['encode']['images']} images",
        f"{'method':<11}" + "".join(f"{'R@' + str(n):>7}" for n in ns)
        + f"{'median ms':>11}{'p95 ms':>8}",
    ]
    for method in (m for m in METHODS if m in results["methods"]):
        m = results["methods"][method]
        recalls = "".join(f"{100 * m['recall'][f'R@{n}']:>7.1f}" for n in ns)
        latency = m["latency_ms"][shown]
        lines.append(f"{METHOD_LABELS[method]:<11}{recalls}{latency['median']:>11.3f}{latency['p95']:>8.3f}")
    two = results["methods"]["two_stage"]
    excluded = two["num_queries_without_positives"]
    lines.append(
        f"on {two['num_queries']} queries"
        + (f" ({excluded} without positives excluded)" if excluded else "")
        + f"; latency per query searched alone at {shown}; there two-stage top-1 = float top-1 on "
        f"{100 * two['top1_same_as_float']:.1f}% of queries, mean re-rank pool {two['mean_rerank_pool'][shown]:.1f}"
    )
    if "sequence" in results:
        sq = results["sequence"]
        smoothed = f", offline smoothing {100 * sq['smoothed_r1']:.1f}" if "smoothed_r1" in sq else ""
        lines.append(f"queries as one route ({sq['frames']} frames in order, every frame counted): R@1 two-stage "
                     f"{100 * sq['two_stage_r1']:.1f}, sequence filter {100 * sq['filtered_r1']:.1f}{smoothed}")
    if "local" in results["methods"]:
        loc = results["methods"]["local"]
        pools = ", ".join(f"{key} {value:.2f}" for key, value in loc["mean_rerank_pool"].items())
        lines.append(
            f"local re-ranking: mean candidates re-ranked per query ({pools}); added latency at {shown} "
            f"{loc['added_latency_ms']['mean']:.3f} ms mean, {loc['added_latency_ms']['median']:.3f} ms median; "
            f"{loc['bytes_per_place']} local bytes per place ({loc['patches_per_place']} patches x "
            f"{loc['local_dim']}-D float16 + reliability + position)"
        )
    return "\n".join(lines)


def model_label(encoder: dict[str, Any]) -> str:
    """Preset or checkpoint with the start of the fingerprint: enough to tell two models apart."""
    config = encoder["config"]
    name = Path(config["checkpoint"]).name if config["checkpoint"] else config["preset"]
    precision = "" if config.get("precision", "fp32") == "fp32" else f" {config['precision']}"
    return f"{name}{precision} ({encoder['fingerprint'][:12]})"


def open_eval_dataset(spec: str, layout: str | None = None) -> EvalDataset:
    """The data set a spec names; ``layout`` picks the reader when the spec does not name one."""
    name, path, options = parse_spec(spec)
    if layout is not None:
        named = spec.partition(":")[0] if ":" in spec else None
        if named == name and name != layout:
            raise DataError(f"--layout {layout} contradicts the reader {name!r} named in --dataset {spec!r}")
        name = layout
    return get_reader(name).open_dataset(path, **options)


def default_out_dir(dataset: EvalDataset) -> Path:
    return Path("out") / "eval" / (re.sub(r"[^A-Za-z0-9]+", "_", dataset.name).strip("_") or "dataset")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True,
                        help="data set spec [READER:]PATH[?key=value&...], e.g. "
                        "vpr_bench:data/corridor or seasons:data/nordland_tiny?split=test")
    parser.add_argument("--layout", help="reader of the data set when the spec does not name one "
                        "(vpr_bench, vpr_benchmark, seasons); detected from the folders otherwise")
    add_encoder_arguments(parser)
    parser.add_argument("--index", default="auto", choices=("auto",) + INDEX_KINDS,
                        help="binary index of the two-stage search (auto: flat for small maps)")
    parser.add_argument("--max-candidates", type=int, default=SearchConfig.max_candidates,
                        help="largest re-rank pool of the two-stage search")
    parser.add_argument("--ns", type=int, nargs="+", default=list(DEFAULT_NS), metavar="N",
                        help="Recall@N values (default: 1 5 10 20 100)")
    parser.add_argument("--out", type=Path, help="output folder (default: out/eval/<data set name>)")
    parser.add_argument("--examples", type=int, default=8,
                        help="example queries drawn in examples.png (0: no picture)")
    route = parser.add_argument_group("sequence filter (the queries taken as one route, in their order)")
    route.add_argument("--filter", action="store_true",
                       help="also report per-frame R@1 of the causal sequence filter (defaults of filter.*)")
    route.add_argument("--smooth", action="store_true",
                       help="with --filter: also offline forward-backward smoothing (looks ahead; not the node's)")
    local = parser.add_argument_group("FoL++ local re-ranking (third stage; torch, one backbone pass)")
    local.add_argument("--local", type=Path, help="local branch checkpoint: also report two-stage + local re-ranking")
    local.add_argument("--local-margin", type=float, help="scheduler margin (default: the checkpoint's tuned value)")
    local.add_argument("--local-weight", type=float, help="fusion weight of the local score (default: tuned value)")
    local.add_argument("--local-max-candidates", type=int, default=LocalRerankConfig.max_candidates,
                       help="largest local re-ranking pool")


def run(args: argparse.Namespace) -> int:
    try:
        dataset = open_eval_dataset(args.dataset, args.layout)
        recall_ns(args.ns, dataset)
        search_config = SearchConfig(index=args.index, max_candidates=args.max_candidates,
                                     min_candidates=min(SearchConfig.min_candidates, args.max_candidates))
        if args.examples < 0:
            raise ValueError(f"--examples must be >= 0, got {args.examples}")
        if args.smooth and not args.filter:
            raise ValueError("--smooth smooths the sequence filter's route: give --filter too")
        encoder = create_encoder(encoder_config(args))
        local, local_config = open_local(args)
    except (ValueError, OSError, BackendUnavailable, ExportError) as err:  # DataError is a ValueError
        print(f"vpr eval: error: {err}", file=sys.stderr)
        return 2
    out_dir = args.out if args.out is not None else default_out_dir(dataset)
    results = evaluate(dataset, encoder, search_config, ns=args.ns, out_dir=out_dir, examples=args.examples,
                       local=local, local_config=local_config,
                       sequence=SequenceFilterConfig(enabled=True) if args.filter else None, smooth=args.smooth)
    print(format_table(results))
    print(f"results: {out_dir / RESULTS_FILE}")
    if "examples" in results:
        print(f"examples: {out_dir / EXAMPLES_FILE}")
    return 0


def open_local(args: argparse.Namespace) -> tuple[LocalEncoder | None, LocalRerankConfig]:
    """The local encoder and re-ranking settings ``--local*`` ask for; unset settings come from the
    values tuned on the validation slice and recorded in the checkpoint."""
    if args.local is None:
        return None, LocalRerankConfig()
    local = create_local_encoder(encoder_config(args), args.local)
    tuned = json.loads((args.local / LOCAL_CONFIG_FILE).read_text()).get("extra", {}).get("rerank", {})
    margin = args.local_margin if args.local_margin is not None else tuned.get("margin", LocalRerankConfig.margin)
    weight = args.local_weight if args.local_weight is not None else tuned.get("local_weight",
                                                                                LocalRerankConfig.local_weight)
    config = LocalRerankConfig(margin=float(margin), local_weight=float(weight),
                               max_candidates=args.local_max_candidates,
                               min_similarity=float(tuned.get("min_similarity", LocalRerankConfig.min_similarity)))
    return local, config


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr eval"))
