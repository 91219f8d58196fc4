"""Loop-closure ground truth: an image sequence in capture order with, per frame, the earlier
frames that truly close a loop with it (the layouts are described in ``loops``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_core.data import DataError, FrameSource, get_reader
from vpr_core.engine import Encoder
from vpr_core.eval.encoding import encode_source
from vpr_core.eval.evaluate import open_eval_dataset
from vpr_core.loop import image_contrast

PAIRS_FILE = "loop_pairs.csv"


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
