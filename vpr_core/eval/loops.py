"""Precision and recall of loop closures on an image sequence with ground truth (``vpr eval-loops``).

The sequence is encoded once and fed to the ``LoopDetector`` keyframe by keyframe, as a SLAM node
would, once per score threshold of the sweep. Every emitted candidate is judged against the ground
truth: a true positive when the match is one of the query's true revisit frames, a false positive
otherwise (including a "loop" found in a part of the route that was never revisited). Recall is over
the frames that truly close a loop. A SLAM back end cannot afford false positives, so the headline
figure is the recall at 100% precision.

Two layouts are sequences:
- a folder with ``images/`` (capture order) and ``loop_pairs.csv`` (``query_frame,match_frame``);
- any evaluation data set (e.g. ``seasons:nordland_tiny?split=test``) read as its database frames
  followed by its query frames, so query i truly closes with the database frames it should retrieve.
Frames get stamps ``i / rate_hz`` since image folders carry none.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vpr_core.build_map import add_encoder_arguments, encoder_config
from vpr_core.data import DataError, FrameSource, get_reader
from vpr_core.engine import BackendUnavailable, Encoder, create_encoder
from vpr_core.eval.evaluate import encode_source, open_eval_dataset
from vpr_core.eval.recall import to_jsonable, write_json
from vpr_core.loop import Keyframe, LoopCandidate, LoopConfig, LoopDetector, image_contrast
from vpr_core.search import SearchConfig, SearchResult, TwoStageSearcher
from vpr_core.cli import run_module

PAIRS_FILE = "loop_pairs.csv"
RESULTS_FILE = "results.json"
CURVE_CSV = "pr_curve.csv"
CURVE_PNG = "pr_curve.png"


@dataclass
class LoopSequence:
    """Frames in capture order (one or more sources played back to back) and, per frame, the
    indices of the earlier frames that truly close a loop with it (empty for most frames)."""

    name: str
    parts: list[FrameSource]
    truth: list[np.ndarray]
    rule: str

    def __post_init__(self) -> None:
        n = sum(len(p) for p in self.parts)
        if len(self.truth) != n:
            raise ValueError(f"{self.name}: ground truth for {len(self.truth)} frames, sequence has {n}")

    def __len__(self) -> int:
        return len(self.truth)

    @property
    def loop_frames(self) -> int:
        return sum(1 for t in self.truth if t.size)


def read_loop_pairs(path: Path, n_frames: int) -> list[np.ndarray]:
    """Per frame, its true earlier revisit frames, from a ``query_frame,match_frame`` CSV."""
    if not path.is_file():
        raise DataError(f"{path} is missing: a loop sequence needs its ground-truth pairs there")
    matches: list[list[int]] = [[] for _ in range(n_frames)]
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"query_frame", "match_frame"} <= set(reader.fieldnames):
            raise DataError(f"{path}: the header must name query_frame and match_frame, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                query, match = int(row["query_frame"]), int(row["match_frame"])
            except (TypeError, ValueError):
                raise DataError(f"{path}:{line}: frame numbers must be integers, got {row}") from None
            if not 0 <= match < query < n_frames:
                raise DataError(
                    f"{path}:{line}: need 0 <= match_frame < query_frame < {n_frames} (the frame count), "
                    f"got query {query}, match {match}"
                )
            matches[query].append(match)
    return [np.unique(np.asarray(m, dtype=np.int64)) for m in matches]


def open_loop_sequence(spec: str) -> LoopSequence:
    """A folder with ``images/`` + ``loop_pairs.csv``, or an evaluation data set spec (see module doc)."""
    path = Path(spec)
    if path.is_dir() and (path / PAIRS_FILE).is_file():
        images = get_reader("folder").open_source(path / "images")
        truth = read_loop_pairs(path / PAIRS_FILE, len(images))
        return LoopSequence(path.name, [images], truth, f"pairs listed in {PAIRS_FILE}")
    dataset = open_eval_dataset(spec)
    n_db = len(dataset.database)
    truth = [np.empty(0, np.int64)] * n_db + list(dataset.positive_lists)
    rule = f"database frames, then queries; a query closes with its positives ({dataset.rule})"
    return LoopSequence(dataset.name, [dataset.database, dataset.queries], truth, rule)


@dataclass
class OperatingPoint:
    threshold: float
    true_positives: int
    false_positives: int
    loop_frames: int

    @property
    def precision(self) -> float:
        emitted = self.true_positives + self.false_positives
        return self.true_positives / emitted if emitted else 1.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.loop_frames if self.loop_frames else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


class SearchReplay:
    """Searcher factory for a threshold sweep: the first detector run searches for real and keeps
    every answer; later runs get the same answers back without searching.

    Valid because what the detector searches (the keyframes old enough) and for what (the query,
    k) do not depend on ``min_score`` or the consistency settings, so run after run asks the same
    questions in the same order; each replayed answer is checked against the query's code, k and
    the searcher size.
    It turns a sweep of T thresholds from T * N searches into N.
    """

    def __init__(self) -> None:
        self.answers: list[tuple[bytes, int, int, SearchResult]] = []
        self.recorded = False

    def __call__(self, codes: np.ndarray, desc: np.ndarray, config: SearchConfig) -> "_ReplayingSearcher":
        return _ReplayingSearcher(self, codes, desc, config)


class _ReplayingSearcher:
    def __init__(self, replay: SearchReplay, codes: np.ndarray, desc: np.ndarray, config: SearchConfig) -> None:
        self.replay = replay
        self.size = len(codes)
        self.calls = 0
        self.real = None if replay.recorded else TwoStageSearcher(codes, desc, config)

    def add(self, codes: np.ndarray, desc: np.ndarray) -> None:
        self.size += len(codes)
        if self.real is not None:
            self.real.add(codes, desc)

    def search(self, query_codes: np.ndarray, query_desc: np.ndarray, k: int) -> SearchResult:
        if self.real is not None:
            result = self.real.search(query_codes, query_desc, k)
            self.replay.answers.append((query_codes.tobytes(), self.size, k, result))
            return result
        if self.calls >= len(self.replay.answers):
            raise RuntimeError("replayed detector run searched more often than the recorded run")
        code, size, recorded_k, result = self.replay.answers[self.calls]
        if (code, size, recorded_k) != (query_codes.tobytes(), self.size, k):
            raise RuntimeError(
                f"replayed search {self.calls} differs from the recorded one (another query, k={k} vs "
                f"{recorded_k} or {self.size} vs {size} keyframes): the detector settings changed what is searched"
            )
        self.calls += 1
        return result


def detect_loops(
    codes: np.ndarray,
    desc: np.ndarray,
    config: LoopConfig,
    rate_hz: float = 1.0,
    replay: SearchReplay | None = None,
    contrast: np.ndarray | None = None,
) -> tuple[list[LoopCandidate], LoopDetector]:
    """Feed the encoded sequence to a fresh detector; keyframe i has id i and stamp i / rate_hz
    (and image contrast ``contrast[i]`` when given)."""
    detector = LoopDetector(config, searcher_factory=replay)
    found = []
    for i in range(len(codes)):
        candidate = detector.update(Keyframe(id=i, stamp=i / rate_hz, desc=desc[i], code=codes[i],
                                             contrast=None if contrast is None else float(contrast[i])))
        if candidate is not None:
            found.append(candidate)
    if replay is not None:
        replay.recorded = True
    return found, detector


def judge(candidates: Sequence[LoopCandidate], truth: Sequence[np.ndarray]) -> tuple[int, int]:
    """(true positives, false positives) of the emitted candidates."""
    tp = sum(1 for c in candidates if np.isin(c.match_id, truth[c.query_id]))
    return tp, len(candidates) - tp


def sweep_thresholds(best_scores: np.ndarray, steps: int, keep: Sequence[float] = ()) -> np.ndarray:
    """Thresholds at the observed best scores: the detector's decisions only change there (every
    gate sees the same top-1 at every threshold). Quantiles of them when there are more than
    ``steps``; ``keep`` (the default threshold) is always included, and one above every score."""
    scores = np.unique(best_scores[np.isfinite(best_scores)])
    if scores.size > steps:
        scores = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, steps)))
    above = np.nextafter(np.float64(scores.max()), np.inf) if scores.size else 1.0
    return np.unique(np.concatenate([scores, np.asarray(keep, np.float64), [above]]))


def pr_curve(
    codes: np.ndarray,
    desc: np.ndarray,
    truth: Sequence[np.ndarray],
    config: LoopConfig,
    thresholds: np.ndarray,
    rate_hz: float = 1.0,
    label: str = "",
    replay: SearchReplay | None = None,
    contrast: np.ndarray | None = None,
) -> list[OperatingPoint]:
    """One operating point per ``min_score`` threshold, all other settings from ``config``."""
    loop_frames = sum(1 for t in truth if t.size)
    replay = replay if replay is not None else SearchReplay()
    points = []
    for threshold in tqdm(thresholds, desc=f"sweep {label}".strip(), unit="threshold", leave=False):
        cfg = dataclasses.replace(config, min_score=float(threshold))
        found, _ = detect_loops(codes, desc, cfg, rate_hz, replay, contrast)
        tp, fp = judge(found, truth)
        points.append(OperatingPoint(float(threshold), tp, fp, loop_frames))
    return points


def summarize(points: Sequence[OperatingPoint], default_threshold: float) -> dict[str, Any]:
    """The figures the README reports for one curve."""
    perfect = [p for p in points if p.false_positives == 0 and p.true_positives > 0]
    at_100 = max(perfect, key=lambda p: (p.recall, -p.threshold), default=None)
    best = max(points, key=lambda p: (p.f1, p.threshold))
    default = next(p for p in points if p.threshold == default_threshold)
    return {
        "recall_at_100_precision": at_100.recall if at_100 else 0.0,
        "threshold_at_100_precision": at_100.threshold if at_100 else None,
        "best_f1": best.f1,
        "best_f1_threshold": best.threshold,
        "best_f1_precision": best.precision,
        "best_f1_recall": best.recall,
        "default_threshold": default_threshold,
        "default_false_positives": default.false_positives,
        "default_true_positives": default.true_positives,
        "default_precision": default.precision,
        "default_recall": default.recall,
    }


def encode_sequence(sequence: LoopSequence, encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
    """Codes and descriptors of every frame of the sequence, in order."""
    parts = [encode_source(part, encoder, f"{sequence.name} part {i + 1}") for i, part in enumerate(sequence.parts)]
    codes = np.concatenate([p[0] for p in parts])
    desc = np.concatenate([p[1] for p in parts])
    if len(codes) != len(sequence):
        raise DataError(f"{sequence.name}: encoded {len(codes)} frames, the ground truth covers {len(sequence)}")
    return codes, desc


def sequence_contrast(sequence: LoopSequence) -> np.ndarray:
    """The image contrast of every frame, in order: a second pass over the images, so that
    ``encode_source`` stays the one encoding loop of every evaluation."""
    values = [image_contrast(frame.rgb) for part in sequence.parts for frame in part]
    if len(values) != len(sequence):
        raise DataError(f"{sequence.name}: read {len(values)} frames, the ground truth covers {len(sequence)}")
    return np.asarray(values, dtype=np.float64)


def describe_encoder(encoder: Encoder) -> dict[str, Any]:
    return {"model": encoder.config.model_name, "fingerprint": encoder.fingerprint,
            "backend": encoder.backend, "bits": encoder.bits, "dim": encoder.dim}


def evaluate_loops(
    sequence: LoopSequence,
    encoder: Encoder,
    config: LoopConfig,
    *,
    out_dir: Path | None = None,
    steps: int = 100,
    rate_hz: float = 1.0,
) -> dict[str, Any]:
    """Encode the sequence and evaluate its loop closures (see ``evaluate_encoded``)."""
    codes, desc = encode_sequence(sequence, encoder)
    return evaluate_encoded(sequence, codes, desc, config, describe_encoder(encoder),
                            out_dir=out_dir, steps=steps, rate_hz=rate_hz, contrast=sequence_contrast(sequence))


def evaluate_encoded(
    sequence: LoopSequence,
    codes: np.ndarray,
    desc: np.ndarray,
    config: LoopConfig,
    encoder_info: dict[str, Any],
    *,
    out_dir: Path | None = None,
    steps: int = 100,
    rate_hz: float = 1.0,
    contrast: np.ndarray | None = None,
) -> dict[str, Any]:
    """Sweep the score threshold with temporal consistency as configured and with it off (k = 1),
    and write the curves (CSV + PNG) and the summary (JSON) to ``out_dir``."""
    if len(codes) != len(sequence) or len(desc) != len(sequence):
        raise ValueError(f"{sequence.name}: {len(codes)} codes and {len(desc)} descriptors for {len(sequence)} frames")
    variants = {"consistency on": config}
    if config.consistency_k > 1:
        variants["consistency off"] = dataclasses.replace(config, consistency_k=1)
    # Any threshold's top-1 is the same, so one open run gives every score the sweep can meet; it
    # also records the searches that every run of the sweep replays.
    replay = SearchReplay()
    probe_config = dataclasses.replace(config, min_score=-1.0, max_records=len(codes))
    _, probe = detect_loops(codes, desc, probe_config, rate_hz, replay, contrast)
    best_scores = np.array([np.nan if r.best_score is None else r.best_score for r in probe.records])
    thresholds = sweep_thresholds(best_scores, steps, keep=[config.min_score])
    curves = {
        name: pr_curve(codes, desc, sequence.truth, cfg, thresholds, rate_hz, name, replay, contrast)
        for name, cfg in variants.items()
    }
    results = {
        "sequence": {"name": sequence.name, "frames": len(sequence), "loop_frames": sequence.loop_frames,
                     "rule": sequence.rule, "rate_hz": rate_hz},
        "encoder": encoder_info,
        "config": dataclasses.asdict(config),
        "curves": {
            name: {
                **summarize(points, config.min_score),
                "consistency": [variants[name].consistency_k, variants[name].consistency_n,
                                variants[name].consistency_window],
            }
            for name, points in curves.items()
        },
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_curve_csv(curves, out_dir / CURVE_CSV)
        plot_curves(curves, results, out_dir / CURVE_PNG)
        write_json(out_dir / RESULTS_FILE, to_jsonable(results))
    return results


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


def default_out_dir(sequence: LoopSequence) -> Path:
    return Path("out") / "eval_loops" / (re.sub(r"[^A-Za-z0-9]+", "_", sequence.name).strip("_") or "sequence")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sequence", required=True,
                        help="a folder with images/ and loop_pairs.csv (e.g. ../shared/data/rtabmap_loop) or a "
                             "data set spec read as database then queries "
                             "(e.g. 'seasons:../shared/data/nordland_tiny?split=test')")
    add_encoder_arguments(parser)
    loop = parser.add_argument_group("loop detector (defaults: LoopConfig)")
    defaults = LoopConfig()
    for name in ("min_score", "ratio_max", "min_departure", "min_contrast", "exclude_recent_frames",
                 "exclude_recent_seconds", "neighbourhood", "consistency_k", "consistency_n", "consistency_window", "nms_radius",
                 "min_interval_s"):
        value = getattr(defaults, name)
        note = "; also the threshold the summary reports at" if name == "min_score" else ""
        loop.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                          help=f"LoopConfig.{name} (default {value}){note}")
    parser.add_argument("--rate-hz", type=float, default=1.0, help="frame rate that gives frames their stamps")
    parser.add_argument("--steps", type=int, default=100, help="most thresholds in the sweep")
    parser.add_argument("--out", type=Path, help="output folder (default: out/eval_loops/<sequence name>)")


def run(args: argparse.Namespace) -> int:
    try:
        if not args.rate_hz > 0:
            raise ValueError(f"--rate-hz must be > 0, got {args.rate_hz}")
        if args.steps < 2:
            raise ValueError(f"--steps must be >= 2, got {args.steps}")
        loop_fields = {f.name for f in dataclasses.fields(LoopConfig)}
        config = LoopConfig(**{k: v for k, v in vars(args).items() if k in loop_fields})
        sequence = open_loop_sequence(args.sequence)
        encoder = create_encoder(encoder_config(args))
    except (ValueError, OSError, BackendUnavailable) as err:  # DataError is a ValueError
        print(f"vpr eval-loops: error: {err}", file=sys.stderr)
        return 2
    out_dir = args.out if args.out is not None else default_out_dir(sequence)
    results = evaluate_loops(sequence, encoder, config, out_dir=out_dir, steps=args.steps, rate_hz=args.rate_hz)
    print(format_summary(results))
    print(f"curve: {out_dir / CURVE_PNG}, {out_dir / CURVE_CSV}; results: {out_dir / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr eval-loops"))
