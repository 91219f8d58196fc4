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

With ``adapt`` the map adaptation of ``vpr build-map`` is fitted on the sequence's own frames (no
labels; as for a map built from the same route) and applied to every frame. The node's loop closure
searches its slam keyframes with the encoder's own outputs, so the default (none) is what it does.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vpr_core.adapt import AdaptConfig, fit_adaptation
from vpr_core.cli_options import add_adapt_arguments, add_encoder_arguments, adapt_config, encoder_config
from vpr_core.engine import BackendUnavailable, Encoder, create_encoder
from vpr_core.eval.loop_metrics import OperatingPoint, judge, summarize, sweep_thresholds
from vpr_core.eval.loop_report import format_summary, plot_curves, write_curve_csv
from vpr_core.eval.loop_sequence import LoopSequence, encode_sequence, open_loop_sequence, sequence_contrast
from vpr_core.eval.recall import to_jsonable, write_json
from vpr_core.eval.search_replay import SearchReplay
from vpr_core.loop import Keyframe, LoopCandidate, LoopConfig, LoopDetector
from vpr_core.cli import run_module

RESULTS_FILE = "results.json"
CURVE_CSV = "pr_curve.csv"
CURVE_PNG = "pr_curve.png"


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
    adapt: AdaptConfig | None = None,
) -> dict[str, Any]:
    """Encode the sequence and evaluate its loop closures (see ``evaluate_encoded``); an enabled
    ``adapt`` is fitted on the sequence's frames and applied to all of them first."""
    codes, desc = encode_sequence(sequence, encoder)
    info = describe_encoder(encoder)
    if adapt is not None and adapt.enabled:
        adaptation = fit_adaptation(desc, encoder.bits, adapt, encoder.fingerprint)
        codes, desc = adaptation.apply(codes, desc)
        info["adaptation"] = {k: adaptation.summary()[k] for k in ("method", "components", "bits_used", "places")}
    return evaluate_encoded(sequence, codes, desc, config, info,
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
    replay = SearchReplay()
    thresholds = _sweep_for(codes, desc, config, steps, rate_hz, replay, contrast)
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


def _sweep_for(
    codes: np.ndarray,
    desc: np.ndarray,
    config: LoopConfig,
    steps: int,
    rate_hz: float,
    replay: SearchReplay,
    contrast: np.ndarray | None,
) -> np.ndarray:
    """The thresholds of the sweep. Any threshold's top-1 is the same, so one open run gives every
    score the sweep can meet; it also records the searches that every run of the sweep replays."""
    probe_config = dataclasses.replace(config, min_score=-1.0, max_records=len(codes))
    _, probe = detect_loops(codes, desc, probe_config, rate_hz, replay, contrast)
    best_scores = np.array([np.nan if r.best_score is None else r.best_score for r in probe.records])
    return sweep_thresholds(best_scores, steps, keep=[config.min_score])


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
    add_adapt_arguments(parser, "none", "default none, as the node's loop closure; else fitted on the sequence's "
                        "own frames, like a map of the same route")
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
    results = evaluate_loops(sequence, encoder, config, out_dir=out_dir, steps=args.steps, rate_hz=args.rate_hz,
                             adapt=adapt_config(args))
    print(format_summary(results))
    print(f"curve: {out_dir / CURVE_PNG}, {out_dir / CURVE_CSV}; results: {out_dir / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr eval-loops"))
