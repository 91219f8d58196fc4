"""Frame sources and small data set layouts shared by several test modules."""

import shutil
from itertools import islice
from pathlib import Path

from vpr_core.data import open_dataset
from vpr_core.data.images import list_images


class FirstFrames:
    """The first `n` frames of a source; `stop_at` raises in the middle like a Ctrl-C would."""

    def __init__(self, source, n: int, stop_at: int | None = None) -> None:
        self.source, self.n, self.stop_at = source, n, stop_at
        self.name = source.name

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, frame in enumerate(islice(self.source, self.n)):
            if i == self.stop_at:
                raise KeyboardInterrupt
            yield frame


def small_corridor_layout(data_dir: Path, root: Path, n_queries: int, n_refs: int) -> Path:
    """The first queries and references of Corridor copied to ``root`` as a VPR-Bench folder, with the
    ground truth cut to those references: a real data set that encodes in seconds."""
    source = data_dir / "corridor"
    for folder, count in (("query", n_queries), ("ref", n_refs)):
        (root / folder).mkdir(parents=True)
        for path in list_images(source / folder)[:count]:
            shutil.copy(path, root / folder / path.name)
    full = open_dataset(f"vpr_bench:{source}")
    lines = ["query_index,ref_indices"]
    for q in range(n_queries):
        refs = full.positives(q)[full.positives(q) < n_refs]
        lines.append(f"{q},{' '.join(map(str, refs))}")
    (root / "ground_truth.csv").write_text("\n".join(lines) + "\n")
    return root
