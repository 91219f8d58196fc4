"""Reader for paired season folders (Nordland): the same file name in two folders is the same place.

A query's positives are the database files within ``tolerance`` positions of its own file in the
sorted list (+-1 file is the standard Nordland protocol). ``split`` or ``first``/``last`` slice both
folders by file name, inclusive, so the development and held-out test sections are never mixed up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_core.data.dataset import EvalDataset, check_part
from vpr_core.data.frame import DataError
from vpr_core.data.images import ImageFiles, list_images, natural_key


@dataclass(frozen=True)
class FileRange:
    """Inclusive range of file stems, compared in natural order."""

    first: str
    last: str

    def contains(self, stem: str) -> bool:
        return natural_key(self.first) <= natural_key(stem) <= natural_key(self.last)


# Nordland sections fixed by the data set's rules: tune on DEV only, report TEST separately.
NORDLAND_DEV = FileRange("images-00010", "images-28610")
NORDLAND_TEST = FileRange("images-28620", "images-35760")
SPLITS: dict[str, FileRange] = {"dev": NORDLAND_DEV, "test": NORDLAND_TEST}


@dataclass
class Config:
    database: str = "summer"
    queries: str = "winter"
    split: str | None = None
    first: str | None = None
    last: str | None = None
    tolerance: int = 1
    part: str = "database"

    def __post_init__(self) -> None:
        check_part(self.part)
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.split is not None and (self.first is not None or self.last is not None):
            raise ValueError("give either split or first/last, not both")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")

    def file_range(self) -> FileRange | None:
        if self.split is not None:
            return SPLITS[self.split]
        if self.first is None and self.last is None:
            return None
        return FileRange(self.first or "", self.last or "\U0010ffff")


def _season_files(root: Path, season: str, file_range: FileRange | None) -> list[Path]:
    folder = root / season
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DataError(
            f"season folder {folder} does not exist"
            + (f"; folders in {root}: {', '.join(present)}" if present else "")
        )
    files = list_images(folder)
    if file_range is not None:
        files = [p for p in files if file_range.contains(p.stem)]
        if not files:
            raise DataError(f"{folder}: no image named from {file_range.first} to {file_range.last}")
    return files


def open_source(path: Path, config: Config) -> ImageFiles:
    season = config.database if config.part == "database" else config.queries
    return ImageFiles(path / season, _season_files(path, season, config.file_range()), camera=season)


def open_dataset(path: Path, config: Config) -> EvalDataset:
    file_range = config.file_range()
    db_files = _season_files(path, config.database, file_range)
    query_files = _season_files(path, config.queries, file_range)
    db_names = [p.name for p in db_files]
    query_names = [p.name for p in query_files]
    if db_names != query_names:
        only_db = sorted(set(db_names) - set(query_names), key=natural_key)
        only_q = sorted(set(query_names) - set(db_names), key=natural_key)
        raise DataError(
            f"seasons {path / config.database} and {path / config.queries} must hold the same file "
            f"names; only in {config.database}: {only_db[:5]}{'...' if len(only_db) > 5 else ''}, "
            f"only in {config.queries}: {only_q[:5]}{'...' if len(only_q) > 5 else ''}"
        )
    n, t = len(db_files), config.tolerance
    positives = [np.arange(max(0, q - t), min(n, q + t + 1), dtype=np.int64) for q in range(n)]
    section = f" ({config.split} split)" if config.split else ""
    return EvalDataset(
        name=f"{path.name}{section}: {config.database} -> {config.queries}",
        database=ImageFiles(path / config.database, db_files, camera=config.database),
        queries=ImageFiles(path / config.queries, query_files, camera=config.queries),
        positive_lists=positives,
        rule=f"same file name within +-{t} file(s)",
    )
