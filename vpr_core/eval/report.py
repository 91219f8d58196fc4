"""The picture of an evaluation: example queries beside their top retrievals, correct in green, wrong in red.

A table of recalls says how often retrieval fails; the picture says how (a neighbouring place, a
look-alike corridor, a season change), which is what a user needs to judge a model. Drawn with
matplotlib's Agg canvas directly, so no display or global pyplot state is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vpr_core.data import EvalDataset, FrameSource

CORRECT = "#00a000"
WRONG = "#d7191c"
NEUTRAL = "#808080"
TILE_INCHES = 1.7
DPI = 100


def save_examples(
    path: Path | str,
    dataset: EvalDataset,
    predictions: np.ndarray,
    scores: np.ndarray,
    queries: Sequence[int],
    *,
    top: int = 5,
    title: str = "",
) -> list[dict[str, Any]]:
    """Draw one row per query: the query, its ``top`` retrievals and, last, a true match for reference.

    ``predictions``/``scores`` are [Q, k] over all queries (best first, -1 for empty slots). Returns
    what each row shows (query, retrieved ids, which of them are correct) for the results file.
    """
    queries = [int(q) for q in queries]
    if not queries:
        raise ValueError("no queries to draw")
    top = min(top, predictions.shape[1])
    rows = [_example_row(dataset, predictions, scores, q, top) for q in queries]
    query_images = frames_at(dataset.queries, queries)
    needed = {i for row in rows for i in row["retrieved"] + [row["truth"]] if i >= 0}
    db_images = frames_at(dataset.database, sorted(needed))

    first = query_images[queries[0]][1]
    aspect = first.shape[0] / first.shape[1]
    cols = top + 2
    fig = Figure(figsize=(cols * TILE_INCHES, len(rows) * (TILE_INCHES * aspect + 0.45) + 0.5), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, row in enumerate(rows):
        _draw_row(axes[r], row, query_images, db_images)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return rows


def _example_row(dataset: EvalDataset, predictions: np.ndarray, scores: np.ndarray, q: int, top: int) -> dict[str, Any]:
    ids = [int(i) for i in predictions[q, :top]]
    positives = dataset.positives(q)
    return {
        "query": q,
        "retrieved": ids,
        "scores": [float(s) for s in scores[q, :top]],
        "correct": [bool(i >= 0 and i in positives) for i in ids],
        # The middle positive: for a +-1 tolerance it is the query's own place.
        "truth": int(positives[len(positives) // 2]) if positives.size else -1,
    }


def _draw_row(axes, row: dict[str, Any], query_images: dict[int, tuple[str, np.ndarray]],
              db_images: dict[int, tuple[str, np.ndarray]]) -> None:
    """The query, its retrievals (green correct, red wrong) and a true match on one row of axes."""
    name, image = query_images[row["query"]]
    _tile(axes[0], image, f"query {row['query']}\n{name}", "black")
    for c, (i, score, ok) in enumerate(zip(row["retrieved"], row["scores"], row["correct"]), start=1):
        if i < 0:
            axes[c].set_axis_off()
            continue
        colour = CORRECT if ok else WRONG
        _tile(axes[c], db_images[i][1], f"{c}. #{i}  {score:.3f}\n{db_images[i][0]}", colour, colour)
    truth = row["truth"]
    if truth >= 0:
        _tile(axes[-1], db_images[truth][1], f"a true match #{truth}\n{db_images[truth][0]}", NEUTRAL, NEUTRAL)
    else:
        axes[-1].set_axis_off()


def frames_at(source: FrameSource, indices: Sequence[int]) -> dict[int, tuple[str, np.ndarray]]:
    """(name, RGB) of the given frames; random access where the source has it, else one pass."""
    wanted = set(indices)
    if hasattr(source, "__getitem__"):
        frames = (source[i] for i in sorted(wanted))
    else:
        frames = (f for f in source if f.index in wanted)
    return {f.index: (f.name, f.rgb) for f in frames}


def _tile(ax, image: np.ndarray, label: str, text_colour: str, border: str | None = None) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(label, fontsize=7, color=text_colour)
    if border is not None:
        ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=border,
                               linewidth=5, clip_on=False))
