"""Loop-closure evaluation: ground truth reading, precision/recall bookkeeping, the sweep's replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vpr_core.data import DataError
from vpr_core.eval.loop_metrics import judge, summarize, sweep_thresholds
from vpr_core.eval.loop_sequence import open_loop_sequence, read_loop_pairs
from vpr_core.eval.loops import pr_curve
from vpr_core.eval.search_replay import SearchReplay
from vpr_core.loop import LoopConfig

DIMS = 128


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_route(seed: int = 0):
    """60 new places; then a true revisit of places 10..39 (close views, cosine ~0.99); then five
    frames of a new street that looks like places 45..49 (farther views, cosine ~0.8), which the
    ground truth says are not loops. Truth: revisit frame 60 + j closes with frames 9 + j .. 11 + j."""
    rng = np.random.default_rng(seed)
    places = unit(rng.standard_normal((60, DIMS)))

    def view(place: int, noise: float) -> np.ndarray:
        return unit(places[place] + noise * rng.standard_normal(DIMS) / np.sqrt(DIMS))

    desc = list(places)
    desc += [view(10 + j, 0.1) for j in range(30)]
    desc += [view(45 + j, 0.75) for j in range(5)]
    desc = np.stack(desc)
    truth = [np.empty(0, np.int64)] * 60 + [np.arange(9 + j, 12 + j) for j in range(30)]
    truth += [np.empty(0, np.int64)] * 5
    return np.packbits(desc > 0, axis=1), desc, truth


BASE = dict(exclude_recent_frames=5, exclude_recent_seconds=0.0, ratio_max=0.95, neighbourhood=2,
            consistency_k=2, consistency_n=3, consistency_window=3)


def test_precision_and_recall_count_true_and_false_loops():
    codes, desc, truth = synthetic_route()
    thresholds = np.array([0.5, 0.9, 0.999])
    on = pr_curve(codes, desc, truth, LoopConfig(**BASE), thresholds)
    off = pr_curve(codes, desc, truth, LoopConfig(**{**BASE, "consistency_k": 1}), thresholds)
    by_threshold = {p.threshold: p for p in off}
    # Above every score nothing is emitted: precision 1 by convention, recall 0.
    assert (by_threshold[0.999].true_positives, by_threshold[0.999].false_positives) == (0, 0)
    # Between the lookalikes' and the revisit's scores: every revisit frame, no false loop.
    assert (by_threshold[0.9].true_positives, by_threshold[0.9].false_positives) == (30, 0)
    assert by_threshold[0.9].recall == 1.0 and by_threshold[0.9].precision == 1.0
    # Low threshold: the five lookalike frames become false loops.
    assert (by_threshold[0.5].true_positives, by_threshold[0.5].false_positives) == (30, 5)
    assert by_threshold[0.5].precision == pytest.approx(30 / 35)
    # Consistency costs the first frame of each run of matches: one revisit frame, one lookalike.
    on_low = {p.threshold: p for p in on}[0.5]
    assert (on_low.true_positives, on_low.false_positives) == (29, 4)

    summary = summarize(off, default_threshold=0.5)
    assert summary["recall_at_100_precision"] == 1.0
    assert summary["threshold_at_100_precision"] == 0.9
    assert summary["default_false_positives"] == 5
    assert summary["best_f1"] == 1.0


def test_replayed_searches_give_the_same_curve_as_fresh_detectors():
    codes, desc, truth = synthetic_route(seed=1)
    thresholds = np.array([0.3, 0.7, 0.85, 0.95])
    config = LoopConfig(**BASE)
    replay = SearchReplay()
    replayed = pr_curve(codes, desc, truth, config, thresholds, replay=replay)
    assert replay.recorded and len(replay.answers) > 0
    fresh = [pr_curve(codes, desc, truth, config, thresholds[i : i + 1])[0] for i in range(len(thresholds))]
    assert [(p.true_positives, p.false_positives) for p in replayed] == [
        (p.true_positives, p.false_positives) for p in fresh
    ]
    # A replay recorded under other exclusion settings no longer matches what is searched.
    other = LoopConfig(**{**BASE, "exclude_recent_frames": 8})
    with pytest.raises(RuntimeError, match="changed what is searched"):
        pr_curve(codes, desc, truth, other, thresholds[:1], replay=replay)


def test_judge_counts_matches_against_the_truth():
    truth = [np.empty(0, np.int64), np.empty(0, np.int64), np.array([0])]

    class Candidate:
        def __init__(self, query_id: int, match_id: int) -> None:
            self.query_id, self.match_id = query_id, match_id

    assert judge([Candidate(2, 0)], truth) == (1, 0)
    assert judge([Candidate(2, 1), Candidate(1, 0)], truth) == (0, 2)


def test_thresholds_cover_every_score_and_keep_the_default():
    scores = np.array([0.2, np.nan, 0.5, 0.5, 0.9])
    thresholds = sweep_thresholds(scores, steps=10, keep=[0.6])
    assert set(thresholds[:-1]) == {0.2, 0.5, 0.6, 0.9}
    assert thresholds[-1] > 0.9
    many = sweep_thresholds(np.linspace(0, 1, 1000), steps=20, keep=[0.333])
    assert len(many) <= 22 and 0.333 in many and many.min() == 0.0


def test_rtabmap_loop_pairs_are_read_as_ground_truth(data_dir):
    sequence = open_loop_sequence(str(data_dir / "rtabmap_loop"))
    assert len(sequence) == 84
    assert sequence.loop_frames == 44  # frames 40..83 revisit the start
    assert sum(t.size for t in sequence.truth) == 228
    assert all(t.size == 0 for t in sequence.truth[:40])
    assert list(sequence.truth[40]) == [0, 1, 2]


def test_a_benchmark_is_read_as_database_then_queries(data_dir):
    sequence = open_loop_sequence(f"seasons:{data_dir / 'nordland_tiny'}?split=test")
    places = 715  # images-28620 .. images-35760, every 10th frame
    assert [len(p) for p in sequence.parts] == [places, places]
    assert len(sequence) == 2 * places and sequence.loop_frames == places
    assert all(t.size == 0 for t in sequence.truth[:places])
    assert list(sequence.truth[places + 10]) == [9, 10, 11]  # winter i closes with summer i +- 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("query,match\n5,1\n", "header"),
        ("query_frame,match_frame\n5,x\n", "integers"),
        ("query_frame,match_frame\n1,5\n", "match_frame < query_frame"),
        ("query_frame,match_frame\n50,1\n", "frame count"),
    ],
)
def test_bad_loop_pairs_are_refused_with_the_line(tmp_path, text, message):
    path = tmp_path / "loop_pairs.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_loop_pairs(path, 10)
    with pytest.raises(DataError, match="missing"):
        read_loop_pairs(tmp_path / "nope.csv", 10)


def test_eval_loops_command_writes_curve_and_summary(data_dir, tmp_path, capsys):
    """End to end with the real lite0 encoder on 20 places of the Nordland development section."""
    import csv
    import json

    from vpr_core.cli import main

    out = tmp_path / "loops"
    spec = f"seasons:{data_dir / 'nordland_tiny'}?first=images-01000&last=images-01190"
    code = main(["eval-loops", "--sequence", spec, "--backend", "torch", "--exclude-recent-frames", "5",
                 "--steps", "12", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["sequence"]["frames"] == 40 and results["sequence"]["loop_frames"] == 20
    assert set(results["curves"]) == {"consistency on", "consistency off"}
    with open(out / "pr_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert (out / "pr_curve.png").stat().st_size > 10_000
    for name, summary in results["curves"].items():
        points = [r for r in rows if r["variant"] == name]
        assert 2 <= len(points) <= 12 + 2
        default = [r for r in points if float(r["threshold"]) == pytest.approx(summary["default_threshold"])]
        assert len(default) == 1
        assert int(default[0]["false_positives"]) == summary["default_false_positives"]
        top = max(points, key=lambda r: float(r["threshold"]))
        assert int(top["true_positives"]) + int(top["false_positives"]) == 0  # above every score
        for r in points:
            tp, fp = int(r["true_positives"]), int(r["false_positives"])
            assert tp <= 20 and float(r["recall"]) == pytest.approx(tp / 20)
    assert "R@100%P" in capsys.readouterr().out
