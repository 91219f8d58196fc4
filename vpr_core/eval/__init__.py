"""Evaluation: Recall@N of place retrieval and JSON-friendly results."""

from vpr_core.eval.recall import (
    DEFAULT_NS,
    RecallResult,
    evaluate_recall,
    first_positive_rank,
    format_recall,
    recall_at_n,
    to_jsonable,
    write_json,
)

__all__ = [
    "DEFAULT_NS",
    "RecallResult",
    "evaluate_recall",
    "first_positive_rank",
    "format_recall",
    "recall_at_n",
    "to_jsonable",
    "write_json",
]
