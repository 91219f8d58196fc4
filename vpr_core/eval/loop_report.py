"""The outputs of ``vpr eval-loops``: the precision/recall curves as CSV and PNG, and the terminal summary."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from vpr_core.eval.loop_metrics import OperatingPoint


def write_curve_csv(curves: dict[str, list[OperatingPoint]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "threshold", "precision", "recall", "f1", "true_positives", "false_positives"])
        for name, points in curves.items():
            for p in points:
                # Full precision: the last threshold lies just above the best score and must stay distinct.
                writer.writerow([name, repr(p.threshold), f"{p.precision:.6f}", f"{p.recall:.6f}",
                                 f"{p.f1:.6f}", p.true_positives, p.false_positives])


def plot_curves(curves: dict[str, list[OperatingPoint]], results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, points in curves.items():
        summary = results["curves"][name]
        ordered = sorted(points, key=lambda p: p.threshold)
        ax.plot([p.recall for p in ordered], [p.precision for p in ordered], marker=".", markersize=3,
                label=f"{name}: R@100%P {100 * summary['recall_at_100_precision']:.1f}%, "
                      f"F1 {summary['best_f1']:.2f}")
        default = next(p for p in points if p.threshold == summary["default_threshold"])
        ax.plot([default.recall], [default.precision], "k^", markersize=6)
    ax.set_xlabel("recall (loop frames closed correctly)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    seq, enc = results["sequence"], results["encoder"]
    ax.set_title(f"{seq['name']} ({seq['frames']} frames)\n{enc['model']} ({enc['fingerprint'][:12]})", fontsize=9)
    ax.legend(fontsize=8, loc="lower left", title=f"triangle: min_score {results['config']['min_score']:.3f}",
              title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_summary(results: dict[str, Any]) -> str:
    seq = results["sequence"]
    lines = [f"{seq['name']}: {seq['frames']} frames, {seq['loop_frames']} close a loop ({seq['rule']})",
             f"encoder {results['encoder']['model']} {results['encoder']['fingerprint'][:12]} "
             f"({results['encoder']['backend']})",
             f"{'variant':<16}{'R@100%P':>9}{'at thr':>8}{'best F1':>9}{'at thr':>8}"
             f"{'FP@default':>11}{'R@default':>10}"]
    for name, s in results["curves"].items():
        thr = s["threshold_at_100_precision"]
        lines.append(
            f"{name:<16}{100 * s['recall_at_100_precision']:>8.1f}%{'-' if thr is None else f'{thr:.3f}':>8}"
            f"{s['best_f1']:>9.3f}{s['best_f1_threshold']:>8.3f}{s['default_false_positives']:>11d}"
            f"{100 * s['default_recall']:>9.1f}%"
        )
    lines.append(f"default threshold min_score = {results['config']['min_score']:.3f}")
    return "\n".join(lines)
