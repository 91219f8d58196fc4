"""An evaluation data set: database frames, query frames, and which database frames each query should find."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vpr_core.data.frame import FrameSource


@dataclass
class EvalDataset:
    """Database and queries of one benchmark, with the layout's rule for a correct retrieval.

    The positives of every query are computed once when the data set is opened (from file names or
    a ground-truth file, never from pixels), so evaluation can ask for them in any order.
    """

    name: str
    database: FrameSource
    queries: FrameSource
    positive_lists: Sequence[np.ndarray]
    rule: str

    def __post_init__(self) -> None:
        if len(self.positive_lists) != len(self.queries):
            raise ValueError(
                f"{self.name}: {len(self.positive_lists)} positive lists for {len(self.queries)} queries"
            )
        self.positive_lists = [np.asarray(p, dtype=np.int64) for p in self.positive_lists]
        n_db = len(self.database)
        for q, pos in enumerate(self.positive_lists):
            if pos.ndim != 1 or (pos.size and (pos.min() < 0 or pos.max() >= n_db)):
                raise ValueError(
                    f"{self.name}: positives of query {q} must be database indices in [0, {n_db}), "
                    f"got {pos.tolist()}"
                )

    def positives(self, query_index: int) -> np.ndarray:
        """Sorted database indices that count as a correct retrieval for this query (may be empty)."""
        return self.positive_lists[query_index]

    def summary(self) -> dict:
        """JSON-friendly description for result files."""
        return {
            "name": self.name,
            "database_frames": len(self.database),
            "query_frames": len(self.queries),
            "queries_without_positives": sum(1 for p in self.positive_lists if p.size == 0),
            "positive_rule": self.rule,
        }


PARTS = ("database", "queries")


def check_part(part: str) -> None:
    """Benchmark readers serve either half of a data set as a plain frame source (for map building)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
