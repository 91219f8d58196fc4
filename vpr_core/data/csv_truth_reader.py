"""Reader for the VPR-Bench layout: ``query/`` and ``ref/`` image folders and ``ground_truth.csv``
with rows ``query_index,ref_indices`` (space-separated reference indices, both counted in the sorted
file lists). A query without a row has no positives.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_core.data.dataset import EvalDataset, check_part
from vpr_core.data.frame import DataError
from vpr_core.data.images import ImageFiles, list_images

FOLDERS = {"database": "ref", "queries": "query"}
GROUND_TRUTH = "ground_truth.csv"


@dataclass
class Config:
    part: str = "database"
    ground_truth: str = GROUND_TRUTH

    def __post_init__(self) -> None:
        check_part(self.part)


def open_source(path: Path, config: Config) -> ImageFiles:
    folder = path / FOLDERS[config.part]
    return ImageFiles(folder, list_images(folder), camera=config.part)


def open_dataset(path: Path, config: Config) -> EvalDataset:
    database = open_source(path, Config(part="database"))
    queries = open_source(path, Config(part="queries"))
    positives = read_ground_truth(path / config.ground_truth, len(queries), len(database))
    return EvalDataset(
        name=path.name,
        database=database,
        queries=queries,
        positive_lists=positives,
        rule=f"reference indices listed in {config.ground_truth}",
    )


def read_ground_truth(path: Path, num_queries: int, num_refs: int) -> list[np.ndarray]:
    """Parse the ground-truth file; any malformed row is an error that names the file and line."""
    if not path.is_file():
        raise DataError(f"ground-truth file {path} does not exist")
    positives: list[np.ndarray | None] = [None] * num_queries
    with path.open(newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or (line_no == 1 and row[0].strip() == "query_index"):
                continue
            where = f"{path}, line {line_no}"
            if len(row) != 2:
                raise DataError(f"{where}: expected 'query_index,ref_indices', got {','.join(row)!r}")
            try:
                query = int(row[0])
                refs = np.array([int(v) for v in row[1].split()], dtype=np.int64)
            except ValueError:
                raise DataError(f"{where}: indices must be integers, got {','.join(row)!r}") from None
            if not 0 <= query < num_queries:
                raise DataError(f"{where}: query index {query} outside [0, {num_queries}) (query images)")
            bad = refs[(refs < 0) | (refs >= num_refs)]
            if bad.size:
                raise DataError(
                    f"{where}: reference indices {bad.tolist()} outside [0, {num_refs}) (reference images)"
                )
            if positives[query] is not None:
                raise DataError(f"{where}: query {query} appears a second time")
            positives[query] = np.unique(refs)
    return [np.empty(0, dtype=np.int64) if p is None else p for p in positives]
