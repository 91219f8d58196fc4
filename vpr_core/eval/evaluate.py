"""Recall@N evaluation of an encoder on a benchmark: exhaustive float search against the two-stage search.

Both methods search the same encoded database, one query at a time as the node does, so the table
shows what the binary first stage costs in recall and what it saves in latency on the same
descriptors. With ``--local`` (a local branch checkpoint) a third method, two-stage plus FoL++ local
re-ranking, is evaluated on the same descriptors (one backbone pass gives global and local outputs),
with the candidates it re-ranked, its added latency and the local bytes per place.
With ``adapt`` (vpr_core.adapt) the map adaptation that ``vpr build-map`` stores is fitted on the
database's descriptors (no labels) and applied to database and queries, as a map and its node would.
Usable as a function (``evaluate``) and as ``vpr eval``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vpr_core.adapt import AdaptConfig, fit_adaptation
from vpr_core.cli_options import add_adapt_arguments, add_encoder_arguments, adapt_config, encoder_config
from vpr_core.data import DataError, EvalDataset, get_reader, parse_spec
from vpr_core.engine import BackendUnavailable, Encoder, ExportError, create_encoder
from vpr_core.model.local_branch import CONFIG_FILE as LOCAL_CONFIG_FILE
from vpr_core.engine.local_engines import create_local_encoder
from vpr_core.model.local_branch import LocalEncoder
from vpr_core.eval.encoding import encode_source_with_local
from vpr_core.eval.recall import DEFAULT_NS, RecallResult, evaluate_recall, to_jsonable, write_json
from vpr_core.eval.recall_table import METHOD_LABELS, format_table, model_label
from vpr_core.eval.report import save_examples
from vpr_core.eval.timed_search import latency_summary, search_each
from vpr_core.search import SearchConfig, SearchResult, TwoStageSearcher
from vpr_core.search.local_rerank import LocalFeatures, LocalReranker, LocalRerankConfig
from vpr_core.search.config import INDEX_CHOICES
from vpr_core.eval import sequence as seq
from vpr_core.eval.sequence import RouteSearch
from vpr_core.sequence_filter import SequenceFilterConfig
from vpr_core.cli import run_module

RESULTS_FILE = "results.json"
EXAMPLES_FILE = "examples.png"
# The node's default top_k (AcceptanceConfig): the table's latency and the picture come from the
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
    adapt: AdaptConfig | None = None,
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
    offline smoothing (every frame counts, warm-up included; see sequence_summary). With an enabled
    ``adapt``, every method searches the adapted outputs (``results["adaptation"]`` says which).
    """
    kept_ns = recall_ns(ns, dataset)
    shown_k = min(kept_ns, key=lambda n: (abs(n - NODE_TOP_K), n))
    db = _Encoded(*encode_source_with_local(dataset.database, local or encoder, "database"))
    queries = _Encoded(*encode_source_with_local(dataset.queries, local or encoder, "queries"))
    adaptation = None
    if adapt is not None and adapt.enabled:
        adaptation = fit_adaptation(db.desc, encoder.bits, adapt, encoder.fingerprint)
        for part in (db, queries):
            part.codes, part.desc = adaptation.apply(part.codes, part.desc)
    searches = _method_searches(db, queries, search_config, local, local_config)
    measured = _measure_methods(searches, dataset, len(queries.desc), kept_ns, shown_k)
    if local is not None:
        measured.methods["local"].update(local_summary(measured.methods, db.local, local_config, local, shown_k))
    route = None
    if sequence is not None and sequence.enabled:
        route = _route_search(dataset, searches["two_stage"], len(queries.desc), sequence)
    results = _results_payload(dataset, encoder, local, search_config, kept_ns, shown_k, db, queries, measured)
    results["adaptation"] = None if adaptation is None else {k: v for k, v in adaptation.summary().items()
                                                             if k in ("method", "components", "bits_used", "places")}
    if route is not None:
        results["sequence"] = sequence_summary(route, sequence, smooth)
    if out_dir is not None:
        _write_outputs(Path(out_dir), results, dataset, measured.shown["two_stage"], shown_k, examples)
    return {**to_jsonable(results), "predictions": measured.predictions}


@dataclasses.dataclass
class _Encoded:
    """One part of the data set encoded: codes, descriptors, local patches (or None) and the
    seconds spent inside ``encode``."""

    codes: np.ndarray
    desc: np.ndarray
    local: LocalFeatures | None
    seconds: float


@dataclasses.dataclass
class _Measured:
    """Per method: ids per N (``predictions``), the JSON summary (``methods``) and the result of the
    search at the shown k (``shown``)."""

    predictions: dict[str, dict[int, np.ndarray]]
    methods: dict[str, dict[str, Any]]
    shown: dict[str, SearchResult]


def _method_searches(
    db: _Encoded, queries: _Encoded, search_config: SearchConfig, local: LocalEncoder | None,
    local_config: LocalRerankConfig,
) -> dict[str, Callable[[int, int], SearchResult]]:
    """Per method, the search of query i for k results, all on one searcher over the database."""
    q_codes, q_desc, q_local = queries.codes, queries.desc, queries.local
    searcher = TwoStageSearcher(db.codes, db.desc, search_config)
    searches = {
        "float": lambda i, k: searcher.float_search(q_desc[i : i + 1], k),
        "two_stage": lambda i, k: searcher.search(q_codes[i : i + 1], q_desc[i : i + 1], k),
    }
    if local is not None:
        searcher.local = LocalReranker(db.local, local_config)
        searches["local"] = lambda i, k: searcher.search(
            q_codes[i : i + 1], q_desc[i : i + 1], k, query_local=q_local.take(slice(i, i + 1))
        )
    return searches


def _measure_methods(
    searches: dict[str, Callable[[int, int], SearchResult]], dataset: EvalDataset, n_queries: int,
    kept_ns: list[int], shown_k: int,
) -> _Measured:
    """Recall@N, latency and re-rank pool of every method, one search per N (see ``evaluate``)."""
    measured = _Measured({}, {}, {})
    for method, search_one in searches.items():
        measured.predictions[method], recall, latency, pools = {}, {}, {}, {}
        for k in kept_ns:
            result, seconds = search_each(search_one, n_queries, k, f"{METHOD_LABELS[method]} k={k}")
            measured.predictions[method][k] = result.ids
            counted = evaluate_recall(result.ids, dataset.positive_lists, [k])
            recall[k] = counted.recall[k]
            latency[f"k={k}"] = latency_summary(seconds)
            if result.pool is not None:
                pools[f"k={k}"] = float(np.mean(result.pool))
            if k == shown_k:
                measured.shown[method] = result
        measured.methods[method] = {
            **RecallResult(recall, counted.num_queries, counted.num_without_positives).to_dict(),
            "latency_ms": latency,
        }
        if pools:
            measured.methods[method]["mean_rerank_pool"] = pools
    # The search budget: two-stage keeps exhaustive search's top-1 on >= 99% of queries.
    measured.methods["two_stage"]["top1_same_as_float"] = float(
        np.mean(measured.shown["two_stage"].ids[:, 0] == measured.shown["float"].ids[:, 0])
    )
    return measured


def _route_search(
    dataset: EvalDataset, two_stage: Callable[[int, int], SearchResult], n_queries: int,
    sequence: SequenceFilterConfig,
) -> RouteSearch:
    """The two-stage results the sequence filter reads, the queries taken as one route."""
    n_db = len(dataset.database)
    found, _ = search_each(two_stage, n_queries, min(sequence.top_k, n_db),
                           f"two-stage k={sequence.top_k} for the sequence filter")
    return RouteSearch(dataset.name, n_db, found.ids, found.scores, np.full(n_queries, np.inf, np.float32),
                       [dataset.positives(q) for q in range(n_queries)])


def _results_payload(
    dataset: EvalDataset, encoder: Encoder, local: LocalEncoder | None, search_config: SearchConfig,
    kept_ns: list[int], shown_k: int, db: _Encoded, queries: _Encoded, measured: _Measured,
) -> dict[str, Any]:
    n_images = len(dataset.database) + len(queries.desc)
    return {
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
            "database_s": db.seconds,
            "queries_s": queries.seconds,
            "ms_per_image": 1000 * (db.seconds + queries.seconds) / n_images,
        },
        "methods": measured.methods,
    }


def _write_outputs(
    out_dir: Path, results: dict[str, Any], dataset: EvalDataset, shown: SearchResult, shown_k: int, examples: int
) -> None:
    """``examples.png`` of the two-stage results (recorded in ``results``), then ``results.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if examples > 0:
        rows = save_examples(
            out_dir / EXAMPLES_FILE,
            dataset,
            shown.ids,
            shown.scores,
            example_queries(dataset, examples),
            title=f"{dataset.name}: two-stage top {shown_k}, {model_label(results['encoder'])}",
        )
        results["examples"] = {"png": EXAMPLES_FILE, "queries": rows}
    write_json(out_dir / RESULTS_FILE, results)


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


def example_queries(dataset: EvalDataset, count: int) -> list[int]:
    """Queries spread evenly over the sequence (only those with a positive): a sample of the whole
    route rather than hand-picked successes or failures."""
    candidates = [q for q in range(len(dataset.queries)) if dataset.positives(q).size]
    if not candidates or count <= 0:
        return []
    picks = np.linspace(0, len(candidates) - 1, min(count, len(candidates))).round().astype(int)
    return [candidates[i] for i in picks]


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
    parser.add_argument("--index", default="auto", choices=INDEX_CHOICES,
                        help="binary index of the two-stage search (auto: flat for small maps)")
    parser.add_argument("--max-candidates", type=int, default=SearchConfig.max_candidates,
                        help="largest re-rank pool of the two-stage search")
    parser.add_argument("--ns", type=int, nargs="+", default=list(DEFAULT_NS), metavar="N",
                        help="Recall@N values (default: 1 5 10 20 100)")
    parser.add_argument("--out", type=Path, help="output folder (default: out/eval/<data set name>)")
    parser.add_argument("--examples", type=int, default=8,
                        help="example queries drawn in examples.png (0: no picture)")
    add_adapt_arguments(parser, AdaptConfig.method, f"default {AdaptConfig.method}, as vpr build-map: fitted on the "
                        "database")
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
                       sequence=SequenceFilterConfig(enabled=True) if args.filter else None, smooth=args.smooth,
                       adapt=adapt_config(args))
    print(format_table(results))
    if results["adaptation"] is not None:
        a = results["adaptation"]
        print(f"map adaptation {a['method']}: fitted on {a['places']} database places, {a['components']} components, "
              f"{a['bits_used']} code bits")
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

