"""Sequence filter vs single-frame two-stage retrieval: per-frame tables on the route data sets.

    python bench/sequence_filter.py --tune     # grid on the Nordland-tiny DEVELOPMENT section only
    python bench/sequence_filter.py            # report: dev, Corridor, rtabmap_loop
    python bench/sequence_filter.py --sets "Nordland-tiny dev,Nordland-tiny test,Corridor,rtabmap_loop"
                                               # the same with the held-out test section (final reports)

The report prints, per sequence, Recall@1 over every frame (warm-up included) of single-frame
two-stage and of the filter (queries in order, and in an order that stops, reverses and skips),
precision and share of frames accepted at each method's accept rule, median frames to converge
after a cold start and to recover after a kidnapping (vpr_core/eval/sequence.py), and apart from
those the R@1 of offline smoothing (vpr_core/sequence_smoothing.py; looks ahead, not the node's).

Tuning ranks settings by the mean of four R@1 on the development section: all of it and its
hardest stretch (its last DEV_HARD frames, where single-frame R@1 is under a third, as on the test
section), each in order and in the stop/reverse/skip order. Among the settings within
RECALL_SLACK points of the best mean, the one that recovers fastest from a kidnapping on the
hardest stretch is chosen (ties: the higher mean): a filter that is right along the route but
takes tens of frames to notice a jump would fail a kidnapped robot. The model is the shipped
default (ONNX Runtime) unless --checkpoint names another; each query's search is cached in
out/sequence_filter by the encoder's fingerprint. --sets limits the report to some sequences, so the
held-out test section is scored only when asked. Data: ../shared/data or VPR_DATA.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpr_core.cli_options import DEFAULT_CHECKPOINT  # noqa: E402
from vpr_core.engine import EncoderConfig, create_encoder  # noqa: E402
from vpr_core.eval import sequence as seq  # noqa: E402
from vpr_core.eval.sequence import RouteSearch  # noqa: E402
from vpr_core.eval.sequence_data import route_search  # noqa: E402
from vpr_core.acceptance import AcceptanceConfig  # noqa: E402
from vpr_core.sequence_filter import SequenceFilterConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))
CACHE = REPO / "out" / "sequence_filter"
SEARCH_K = 200  # results cached per query: the largest filter top_k the grid tries
DEV_HARD = 561  # frames at the end of the development section tuned on separately
RECALL_SLACK = 0.5  # points of mean R@1 traded for faster kidnapping recovery
DEV = f"seasons:{DATA / 'nordland_tiny'}?split=dev"
REPORT = {
    "Nordland-tiny dev": DEV,
    "Nordland-tiny test": f"seasons:{DATA / 'nordland_tiny'}?split=test",
    "Corridor": f"vpr_bench:{DATA / 'corridor'}",
    "rtabmap_loop": str(DATA / "rtabmap_loop"),
}
HELD_OUT = "Nordland-tiny test"
GRID = {
    "temperature": (1.5, 2.0, 2.5),
    "top_k": (100, 200),
    "speed_change": (0.05, 0.1, 0.2),
    "position_jitter": (0.05, 0.1, 0.2),
    "lost_probability": (0.003, 0.01, 0.03),
}


def routes(specs: dict[str, str], checkpoint: Path) -> dict[str, RouteSearch]:
    encoder = create_encoder(EncoderConfig(checkpoint=str(checkpoint), backend="onnxruntime"))
    return {label: route_search(spec, encoder, SEARCH_K, CACHE) for label, spec in specs.items()}


def tail(route: RouteSearch, frames: int) -> RouteSearch:
    """The last ``frames`` queries of a route, against the same map."""
    cut = slice(len(route.ids) - frames, None)
    return RouteSearch(f"{route.name} (last {frames})", route.map_size, route.ids[cut], route.scores[cut],
                       route.contrast[cut], route.positives[cut])


def tune(route: RouteSearch) -> None:
    """Every grid point on the development section and on its hardest stretch, each in order and
    in the irregular order; frames to recover from a kidnapping. Ranked by the mean of the four R@1
    (a route in order alone would favour a filter that cannot stop or turn back)."""
    parts = [route, tail(route, DEV_HARD)]
    orders = [(part, order) for part in parts
              for order in (np.arange(len(part.ids)), seq.irregular_order(len(part.ids)))]
    rows = []
    points = list(itertools.product(*GRID.values()))
    for values in tqdm(points, desc="grid", unit="point"):
        config = SequenceFilterConfig(enabled=True, **dict(zip(GRID, values)))
        recalls = [seq.recall_at_1(seq.filtered(part, order, config), part, order) for part, order in orders]
        rows.append((float(np.mean(recalls)), recalls, values))
    rows.sort(key=lambda r: -r[0])
    close = [(mean, recalls, values,
              seq.kidnapping(parts[1], SequenceFilterConfig(enabled=True, **dict(zip(GRID, values)))))
             for mean, recalls, values in rows if mean >= rows[0][0] - RECALL_SLACK / 100]
    close.sort(key=lambda r: (_median_or_never(r[3]), -r[0]))
    print(f"{route.name}: {len(route.ids)} frames, hardest stretch its last {DEV_HARD}; grid over {', '.join(GRID)}")
    print(f"settings within {RECALL_SLACK} points of the best mean R@1, fastest kidnapping recovery first:")
    print("| " + " | ".join(GRID) + " | R@1 in order | R@1 stop/reverse/skip | hardest: in order | hardest: "
          "stop/reverse/skip | mean | hardest: frames to recover from a kidnapping |")
    print("|" + "---:|" * (len(GRID) + 6))
    for mean, recalls, values, kid in close:
        print("| " + " | ".join(str(v) for v in values) + " | "
              + " | ".join(f"{100 * r:.1f}" for r in recalls) + f" | {100 * mean:.1f} | {seq.median_frames(kid)} |")
    for threshold in (0.3, 0.5, 0.7, 0.9):
        config = SequenceFilterConfig(enabled=True, min_probability=threshold)
        p, share = seq.precision(seq.filtered(route, np.arange(len(route.ids)), config))
        print(f"defaults, min_probability {threshold}: precision {100 * p:.1f} %, accepted {100 * share:.1f} % of frames")


def report(all_routes: dict[str, RouteSearch], config: SequenceFilterConfig, checkpoint: Path) -> None:
    print(f"date {time.strftime('%Y-%m-%d')}; model {checkpoint.name} (ONNX Runtime); filter {config}")
    print("| sequence | frames | map places | single-frame R@1 | filtered R@1 | ratio | stop/reverse/skip: single / "
          "filtered R@1 | single: precision / accepted | filtered: precision / accepted | frames to converge | "
          "frames to recover from a kidnapping | offline smoothing R@1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    local = AcceptanceConfig()
    for label, route in all_routes.items():
        order = np.arange(len(route.ids))
        irregular = seq.irregular_order(len(route.ids))
        single, filt = seq.single_frame(route, order, local), seq.filtered(route, order, config)
        r_single, r_filt = seq.recall_at_1(single, route, order), seq.recall_at_1(filt, route, order)
        irr_single = seq.recall_at_1(seq.single_frame(route, irregular, local), route, irregular)
        irr_filt = seq.recall_at_1(seq.filtered(route, irregular, config), route, irregular)
        (p_s, a_s), (p_f, a_f) = seq.precision(single), seq.precision(filt)
        print(f"| {label} | {len(order)} | {route.map_size} | {100 * r_single:.1f} | {100 * r_filt:.1f} | "
              f"{r_filt / r_single:.2f}x | {100 * irr_single:.1f} / {100 * irr_filt:.1f} ({len(irregular)} frames) | "
              f"{_pct(p_s)} / {100 * a_s:.1f} | {_pct(p_f)} / {100 * a_f:.1f} | "
              f"{seq.median_frames(seq.convergence(route, config))} | "
              f"{seq.median_frames(seq.kidnapping(route, config))} | "
              f"{100 * seq.recall_at_1(seq.smoothed(route, config), route, order):.1f} |")
    print(f"frames to converge / recover: median over {seq.TRIALS} starts / jumps (half the route away) of the "
          f"frames until the filtered best place is right {seq.STABLE_FRAMES} frames in a row, within "
          f"{seq.TRIAL_FRAMES} frames; single-frame accept rule: AcceptanceConfig defaults "
          f"(min_score {local.min_score}, min_margin {local.min_margin}); filtered: probability >= "
          f"{config.min_probability} within +-{config.confidence_radius} places")


def _median_or_never(values: list[int | None]) -> float:
    """Median frames to recover, trials that never did counted as never (sorts last)."""
    return float(np.median([np.inf if v is None else v for v in values]))


def _pct(value: float) -> str:
    return "-" if np.isnan(value) else f"{100 * value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune", action="store_true", help="grid on the Nordland-tiny development section only")
    parser.add_argument("--min-probability", type=float, default=SequenceFilterConfig.min_probability)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="model whose two-stage search feeds the filter (default: the shipped default)")
    parser.add_argument("--sets", default=",".join(k for k in REPORT if k != HELD_OUT),
                        help=f"comma-separated sequences to report, of: {', '.join(REPORT)} (default: all but the "
                             f"held-out {HELD_OUT!r}, which is read only when named)")
    args = parser.parse_args(argv)
    if args.tune:
        tune(routes({"dev": DEV}, args.checkpoint)["dev"])
        return 0
    labels = [label.strip() for label in args.sets.split(",") if label.strip()]
    unknown = sorted(set(labels) - set(REPORT))
    if unknown or not labels:
        parser.error(f"--sets: unknown sequence(s) {unknown or '(none given)'}; choose from: {', '.join(REPORT)}")
    config = replace(SequenceFilterConfig(enabled=True), min_probability=args.min_probability)
    report(routes({label: REPORT[label] for label in labels}, args.checkpoint), config, args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
