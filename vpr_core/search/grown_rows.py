"""Rows of a searcher's codes or descriptors: a base array plus the places added since."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class GrownRows:
    """A base array (memory map or RAM) plus rows appended later, addressed by one id space."""

    def __init__(self, base: np.ndarray, dtype: np.dtype) -> None:
        self.base = base
        self.extra = np.empty((0, base.shape[1]), dtype)
        self.n_extra = 0

    def __len__(self) -> int:
        return len(self.base) + self.n_extra

    def append(self, rows: np.ndarray) -> None:
        need = self.n_extra + len(rows)
        if need > len(self.extra):
            grown = np.empty((max(need, 2 * len(self.extra), 256), self.extra.shape[1]), self.extra.dtype)
            grown[: self.n_extra] = self.extra[: self.n_extra]
            self.extra = grown
        self.extra[self.n_extra : need] = rows
        self.n_extra = need

    def take(self, ids: np.ndarray) -> np.ndarray:
        nb = len(self.base)
        if self.n_extra == 0 or (len(ids) and ids.max() < nb):
            return self.base[ids]
        out = np.empty((len(ids), self.base.shape[1]), self.extra.dtype)
        low = ids < nb
        out[low] = self.base[ids[low]]
        out[~low] = self.extra[ids[~low] - nb]
        return out

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Consecutive blocks for a full scan, each valid until the next is yielded. A memory-mapped
        base is read with plain reads into one reused buffer: the scan then neither leaves the file
        mapped into this process's resident memory nor pays a page fault per fresh 4 KB."""
        nb = len(self.base)
        if isinstance(self.base, np.memmap):
            buf = np.empty((min(rows, nb), self.base.shape[1]), self.base.dtype)
            with open(self.base.filename, "rb") as f:
                f.seek(self.base.offset)
                for start in range(0, nb, rows):
                    n = min(rows, nb - start)
                    f.readinto(memoryview(buf[:n]).cast("B"))
                    yield start, buf[:n]
        else:
            for start in range(0, nb, rows):
                yield start, self.base[start : start + rows]
        for start in range(0, self.n_extra, rows):
            yield nb + start, self.extra[start : min(self.n_extra, start + rows)]

    def all(self) -> np.ndarray:
        return self.base if self.n_extra == 0 else np.concatenate([self.base, self.extra[: self.n_extra]])

