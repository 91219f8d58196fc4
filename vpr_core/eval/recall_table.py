"""The terminal table of ``vpr eval``: Recall@N and search latency per method, then encode cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

METHODS = ("float", "two_stage", "local")
METHOD_LABELS = {"float": "float-only", "two_stage": "two-stage", "local": "+local"}


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
