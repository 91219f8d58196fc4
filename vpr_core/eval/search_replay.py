"""Searches of a loop-closure threshold sweep, recorded once and replayed (see ``SearchReplay``)."""

from __future__ import annotations

import numpy as np

from vpr_core.search import SearchConfig, SearchResult, TwoStageSearcher


class SearchReplay:
    """Searcher factory for a threshold sweep: the first detector run searches for real and keeps
    every answer; later runs get the same answers back without searching.

    Valid because what the detector searches (the keyframes old enough) and for what (the query,
    k) do not depend on ``min_score`` or the consistency settings, so run after run asks the same
    questions in the same order; each replayed answer is checked against the query's code, k and
    the searcher size.
    It turns a sweep of T thresholds from T * N searches into N.
    """

    def __init__(self) -> None:
        self.answers: list[tuple[bytes, int, int, SearchResult]] = []
        self.recorded = False

    def __call__(self, codes: np.ndarray, desc: np.ndarray, config: SearchConfig) -> "_ReplayingSearcher":
        return _ReplayingSearcher(self, codes, desc, config)


class _ReplayingSearcher:
    def __init__(self, replay: SearchReplay, codes: np.ndarray, desc: np.ndarray, config: SearchConfig) -> None:
        self.replay = replay
        self.size = len(codes)
        self.calls = 0
        self.real = None if replay.recorded else TwoStageSearcher(codes, desc, config)

    def add(self, codes: np.ndarray, desc: np.ndarray) -> None:
        self.size += len(codes)
        if self.real is not None:
            self.real.add(codes, desc)

    def search(self, query_codes: np.ndarray, query_desc: np.ndarray, k: int) -> SearchResult:
        if self.real is not None:
            result = self.real.search(query_codes, query_desc, k)
            self.replay.answers.append((query_codes.tobytes(), self.size, k, result))
            return result
        if self.calls >= len(self.replay.answers):
            raise RuntimeError("replayed detector run searched more often than the recorded run")
        code, size, recorded_k, result = self.replay.answers[self.calls]
        if (code, size, recorded_k) != (query_codes.tobytes(), self.size, k):
            raise RuntimeError(
                f"replayed search {self.calls} differs from the recorded one (another query, k={k} vs "
                f"{recorded_k} or {self.size} vs {size} keyframes): the detector settings changed what is searched"
            )
        self.calls += 1
        return result
