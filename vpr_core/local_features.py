"""Kept local patches of places or queries (FoL++): what a map stores per place for local re-ranking.

Why a module of its own at the top: the model's local branch makes them, the map database stores and
memory-maps them, the search stage reads them; all three share this one container without depending
on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LocalFeatures:
    """Kept patches of N images: descriptors [N, K, d] (unit, float16 or float32), reliability
    [N, K] and patch positions (row, column) int16 [N, K, 2]."""

    desc: np.ndarray
    rel: np.ndarray
    pos: np.ndarray

    def __post_init__(self) -> None:
        if self.desc.ndim != 3 or self.rel.shape != self.desc.shape[:2] or self.pos.shape != (*self.rel.shape, 2):
            raise ValueError(f"local features disagree: desc {self.desc.shape}, rel {self.rel.shape}, "
                             f"pos {self.pos.shape} (want [N, K, d], [N, K], [N, K, 2])")

    def __len__(self) -> int:
        return len(self.desc)

    @property
    def patches(self) -> int:
        return int(self.desc.shape[1])

    @property
    def dim(self) -> int:
        return int(self.desc.shape[2])

    def take(self, ids: np.ndarray) -> "LocalFeatures":
        return LocalFeatures(self.desc[ids], self.rel[ids], self.pos[ids])

    @staticmethod
    def bytes_per_place(patches: int, dim: int) -> int:
        """Stored bytes per place: float16 descriptors, float16 reliability, int16 (row, column)."""
        return patches * (2 * dim + 2 + 4)
