"""Recall@N: the share of queries with at least one correct database image among their top N results.

Queries that have no positive at all in the database are left out of the denominator (no method
could retrieve a correct image for them) and counted separately in ``RecallResult``, so a result
file always says how many queries it was computed on. Predictions are database ids, best first;
``-1`` marks an empty slot (faiss pads with it when the database has fewer than k entries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpr_core.fsio import atomic_write_json

DEFAULT_NS = (1, 5, 10, 20, 100)


@dataclass(frozen=True)
class RecallResult:
    """Recall@N as fractions in [0, 1], on ``num_queries`` queries; ``num_without_positives``
    further queries were excluded because the database holds no positive for them."""

    recall: dict[int, float]
    num_queries: int
    num_without_positives: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "recall": {f"R@{n}": value for n, value in self.recall.items()},
            "num_queries": self.num_queries,
            "num_queries_without_positives": self.num_without_positives,
        }


def first_positive_rank(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """Per query, the rank (0 = best) of the first correct prediction, or -1 when none is correct.

    Also what a report needs to colour each shown retrieval as right or wrong.
    """
    predictions = _check_predictions(predictions, positives)
    ranks = np.full(len(predictions), -1, dtype=np.int64)
    for q, (row, pos) in enumerate(zip(predictions, positives)):
        hits = np.flatnonzero(np.isin(row, pos))
        if hits.size:
            ranks[q] = hits[0]
    return ranks


def evaluate_recall(
    predictions: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = DEFAULT_NS
) -> RecallResult:
    """Recall@N for each N in ``ns``, with the number of queries used and excluded."""
    predictions = _check_predictions(predictions, positives)
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ValueError(f"ns must be positive integers, got {ns}")
    if ns[-1] > predictions.shape[1]:
        raise ValueError(
            f"Recall@{ns[-1]} needs at least {ns[-1]} predictions per query, got {predictions.shape[1]}; "
            "search with k >= max(ns) (empty slots may be -1)"
        )
    has_positive = np.array([np.asarray(p).size > 0 for p in positives], dtype=bool)
    if not has_positive.any():
        raise ValueError(f"none of the {len(positives)} queries has a positive; recall is undefined")
    ranks = first_positive_rank(predictions, positives)[has_positive]
    found = ranks >= 0
    recall = {n: float(np.mean(found & (ranks < n))) for n in ns}
    return RecallResult(
        recall=recall,
        num_queries=int(has_positive.sum()),
        num_without_positives=int((~has_positive).sum()),
    )


def recall_at_n(
    predictions: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = DEFAULT_NS
) -> dict[int, float]:
    """Recall@N as fractions; queries without positives are excluded (``evaluate_recall`` counts them).

    ``predictions``: int [Q, K] database ids per query, best first. ``positives``: Q arrays of the
    database ids that count as correct for each query.
    """
    return evaluate_recall(predictions, positives, ns).recall


def format_recall(result: RecallResult) -> str:
    """One line for logs and the terminal, in percent as VPR papers report it."""
    values = "  ".join(f"R@{n} {100 * v:.1f}" for n, v in result.recall.items())
    excluded = (
        f" ({result.num_without_positives} without positives excluded)"
        if result.num_without_positives
        else ""
    )
    return f"{values}  on {result.num_queries} queries{excluded}"


def to_jsonable(value: Any) -> Any:
    """Turn results into plain JSON types (numpy scalars and arrays, paths); NaN and inf become null."""
    if isinstance(value, RecallResult):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(path: Path | str, payload: Any) -> None:
    """Write ``payload`` as indented JSON atomically, so an interrupted run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, to_jsonable(payload), indent=2, allow_nan=False)


def _check_predictions(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or not np.issubdtype(predictions.dtype, np.integer):
        raise ValueError(
            f"predictions must be integer ids of shape [Q, K], got {predictions.dtype} {predictions.shape}"
        )
    if len(positives) != len(predictions):
        raise ValueError(f"{len(predictions)} prediction rows but {len(positives)} positive lists")
    return predictions
