"""Recall@N against hand-computed cases, a brute-force definition, and its JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpr_core.eval import (
    evaluate_recall,
    first_positive_rank,
    format_recall,
    recall_at_n,
    to_jsonable,
    write_json,
)

# Four queries, three predictions each (best first):
#   q0: first correct at rank 1        q1: first correct at rank 2
#   q2: no positive in the database -> excluded and counted
#   q3: positives exist, none retrieved
PREDICTIONS = np.array([[3, 1, 2], [0, 4, 5], [7, 8, 9], [2, 2, 1]])
POSITIVES = [np.array([1, 6]), np.array([5]), np.array([], dtype=np.int64), np.array([9])]


def test_hand_computed_case() -> None:
    assert first_positive_rank(PREDICTIONS, POSITIVES).tolist() == [1, 2, -1, -1]
    assert recall_at_n(PREDICTIONS, POSITIVES, ns=(1, 2, 3)) == {1: 0.0, 2: 1 / 3, 3: 2 / 3}
    result = evaluate_recall(PREDICTIONS, POSITIVES, ns=(3, 1, 2, 2))
    assert list(result.recall) == [1, 2, 3]
    assert (result.num_queries, result.num_without_positives) == (3, 1)


def test_second_hand_computed_case_with_padding() -> None:
    # Database of 2 images searched with k=5: faiss pads with -1.
    predictions = np.array([[0, 1, -1, -1, -1], [1, 0, -1, -1, -1], [1, 0, -1, -1, -1]])
    positives = [np.array([0]), np.array([0]), np.array([0, 1])]
    assert recall_at_n(predictions, positives, ns=(1, 2, 5)) == {1: 2 / 3, 2: 1.0, 5: 1.0}
    assert recall_at_n(np.array([[-1, -1]]), [np.array([0])], ns=(1, 2)) == {1: 0.0, 2: 0.0}


def test_default_ns() -> None:
    predictions = np.tile(np.arange(100), (2, 1))
    positives = [np.array([0]), np.array([57])]
    assert recall_at_n(predictions, positives) == {1: 0.5, 5: 0.5, 10: 0.5, 20: 0.5, 100: 1.0}


def naive_recall(predictions: np.ndarray, positives: list[np.ndarray], n: int) -> float:
    kept = [(row, set(pos.tolist())) for row, pos in zip(predictions, positives) if len(pos)]
    return sum(bool(set(row[:n].tolist()) & pos) for row, pos in kept) / len(kept)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_matches_brute_force_definition(data: st.DataObject) -> None:
    num_db = data.draw(st.integers(1, 12))
    num_q = data.draw(st.integers(1, 8))
    k = data.draw(st.integers(1, 6))
    predictions = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(-1, num_db - 1), min_size=k, max_size=k), min_size=num_q, max_size=num_q
            )
        )
    )
    positives = [
        np.array(sorted(data.draw(st.sets(st.integers(0, num_db - 1), max_size=num_db))), dtype=np.int64)
        for _ in range(num_q)
    ]
    positives[0] = np.array([data.draw(st.integers(0, num_db - 1))])  # at least one query counts
    ns = sorted(data.draw(st.sets(st.integers(1, k), min_size=1)))
    result = evaluate_recall(predictions, positives, ns)
    for n in ns:
        assert result.recall[n] == pytest.approx(naive_recall(predictions, positives, n))
    assert result.num_without_positives == sum(1 for p in positives if p.size == 0)
    values = [result.recall[n] for n in ns]
    assert values == sorted(values)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"Recall@5 needs at least 5 predictions per query, got 3"):
        recall_at_n(PREDICTIONS, POSITIVES, ns=(1, 5))
    with pytest.raises(ValueError, match="4 prediction rows but 3 positive lists"):
        recall_at_n(PREDICTIONS, POSITIVES[:3], ns=(1,))
    with pytest.raises(ValueError, match="integer ids of shape"):
        recall_at_n(PREDICTIONS.astype(np.float32), POSITIVES, ns=(1,))
    with pytest.raises(ValueError, match="none of the 1 queries has a positive"):
        recall_at_n(PREDICTIONS[2:3], POSITIVES[2:3], ns=(1,))
    with pytest.raises(ValueError, match="ns must be positive"):
        recall_at_n(PREDICTIONS, POSITIVES, ns=(0, 1))


def test_json_helpers(tmp_path: Path) -> None:
    result = evaluate_recall(PREDICTIONS, POSITIVES, ns=(1, 2, 3))
    assert format_recall(result) == "R@1 0.0  R@2 33.3  R@3 66.7  on 3 queries (1 without positives excluded)"
    payload = {
        "dataset": "hand",
        "result": result,
        "latency_ms": np.float32(1.5),
        "ranks": first_positive_rank(PREDICTIONS, POSITIVES),
        "path": tmp_path / "x",
        "bad": float("nan"),
    }
    out = tmp_path / "results" / "recall.json"
    write_json(out, payload)
    loaded = json.loads(out.read_text())
    assert loaded["result"] == {
        "recall": {"R@1": 0.0, "R@2": 1 / 3, "R@3": 2 / 3},
        "num_queries": 3,
        "num_queries_without_positives": 1,
    }
    assert loaded["latency_ms"] == 1.5 and loaded["ranks"] == [1, 2, -1, -1]
    assert loaded["path"] == str(tmp_path / "x") and loaded["bad"] is None
    assert to_jsonable({1: np.int64(3)}) == {"1": 3}
    assert [p.name for p in out.parent.iterdir()] == ["recall.json"]  # no temporary file left behind
