"""FoL++ third stage: region-aware local re-ranking of the best global candidates.

Why: global descriptors alias where places look alike as a whole (similar corridors, repeated
facades); the few reliable, discriminative patches of two images of the same place still match one
to one. The stage runs after the two-stage search and touches only a handful of candidates:

  scheduler  per query, the candidates whose global cosine is within ``margin`` of the best, clamped
             to [min_candidates, max_candidates]; a pool of one means the best stands out and the
             stage is skipped (an easy query costs one comparison of scores);
  score      mutual nearest neighbours between the kept patches of query and candidate, each
             match weighted by sqrt(r_query * r_candidate) and by its cosine, normalised by
             sqrt(sum r_query * sum r_candidate) so identical patch sets score 1 and the score is
             at most 1 (Cauchy-Schwarz over the one-to-one matches);
  fusion     fused = (1 - local_weight) * global cosine + local_weight * local score, which orders
             the pool; candidates beyond the pool keep their global order below it.

Places without local features (a map appended to after its local features were stored) keep their
global cosine as their local score, so they neither win nor lose by the missing data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vpr_core.local_features import LocalFeatures
from vpr_core.search.config import SearchResult

__all__ = ["LocalFeatures", "LocalRerankConfig", "LocalReranker", "mutual_nn_scores", "pool_size"]


@dataclass(frozen=True)
class LocalRerankConfig:
    """Defaults: the values chosen by Recall@1 on the Nordland-tiny development section's validation
    slice for checkpoints/lite0-nordland-local (its train_report.json holds the grid), never on test
    or evaluation sets. Re-tune them (``vpr train-local`` does) for another model or data."""

    margin: float = 0.02            # candidates within this cosine of the best get re-ranked
    min_candidates: int = 1
    max_candidates: int = 20
    local_weight: float = 0.5       # fusion weight of the local score
    min_similarity: float = 0.5     # mutual matches below this patch cosine are not counted

    def __post_init__(self) -> None:
        if not self.margin >= 0:
            raise ValueError(f"LocalRerankConfig.margin must be >= 0, got {self.margin}")
        if not 1 <= self.min_candidates <= self.max_candidates:
            raise ValueError(f"LocalRerankConfig needs 1 <= min_candidates <= max_candidates, got "
                             f"{self.min_candidates}, {self.max_candidates}")
        if not 0.0 <= self.local_weight <= 1.0:
            raise ValueError(f"LocalRerankConfig.local_weight must be in [0, 1], got {self.local_weight}")


def mutual_nn_scores(q_desc: torch.Tensor, q_rel: torch.Tensor, c_desc: torch.Tensor, c_rel: torch.Tensor,
                     min_similarity: float = 0.0) -> torch.Tensor:
    """Reliability-weighted mutual-nearest-neighbour score of one query against M candidates.

    q_desc [K1, d], q_rel [K1], c_desc [M, K2, d], c_rel [M, K2] -> scores [M] in [-1, 1] (>= 0
    with min_similarity >= 0). See the module docstring for the formula.
    """
    sim = torch.matmul(c_desc, q_desc.T).transpose(1, 2)                    # [M, K1, K2]
    s, best_j = sim.max(dim=2)                                              # query patch -> candidate
    best_i = sim.argmax(dim=1)                                              # candidate patch -> query
    mutual = torch.gather(best_i, 1, best_j) == torch.arange(sim.shape[1])[None, :]
    keep = mutual & (s >= min_similarity)
    weight = torch.sqrt(q_rel[None, :] * torch.gather(c_rel, 1, best_j))
    num = (weight * s * keep).sum(dim=1)
    norm = torch.sqrt(q_rel.sum() * c_rel.sum(dim=1)).clamp_min(1e-12)
    return num / norm


def pool_size(scores: np.ndarray, config: LocalRerankConfig) -> int:
    """Candidates to re-rank for one query: those within ``margin`` of the best global cosine,
    clamped to [min_candidates, max_candidates] and to the candidates there are. ``scores`` are
    best first; -inf marks a missing candidate."""
    found = int(np.count_nonzero(np.isfinite(scores)))
    if found == 0:
        return 0
    within = int(np.count_nonzero(scores[:found] >= scores[0] - config.margin))
    return min(max(within, config.min_candidates), config.max_candidates, found)


class LocalReranker:
    """The third stage over a map's stored local features (``covered`` first places have them)."""

    def __init__(self, features: LocalFeatures, config: LocalRerankConfig = LocalRerankConfig()) -> None:
        self.features = features
        self.config = config

    @property
    def covered(self) -> int:
        return len(self.features)

    def rerank(self, result: SearchResult, query: LocalFeatures, k: int) -> SearchResult:
        """The top-k of each query after local re-ranking of its scheduled pool. ``result`` holds
        the global candidates best first (at least max_candidates of them where the map has them);
        ``result.pool`` becomes the number of candidates re-ranked (0 where the stage was skipped),
        ``scores`` the fused scores of the re-ranked ones and the global cosine of the rest."""
        if len(query) != len(result.ids):
            raise ValueError(f"{len(query)} queries' local features for {len(result.ids)} results")
        if len(self.features) and query.dim != self.features.dim:
            raise ValueError(f"query local descriptors are {query.dim}-D, the map's {self.features.dim}-D")
        n = len(result.ids)
        out = SearchResult.empty(n, k)
        out.pool = np.zeros(n, np.int32)
        for i in range(n):
            ids, scores, ham = result.ids[i], result.scores[i], result.hamming[i]
            p = pool_size(scores, self.config)
            order = np.arange(len(ids))
            fused = scores.astype(np.float32).copy()
            if p > 1:
                local = self._local_scores(query, i, ids[:p], scores[:p])
                w = self.config.local_weight
                fused[:p] = (1.0 - w) * scores[:p] + w * local
                order = np.concatenate([np.argsort(-fused[:p], kind="stable"), np.arange(p, len(ids))])
                out.pool[i] = p
            m = min(k, len(ids))
            out.ids[i, :m] = ids[order[:m]]
            out.scores[i, :m] = fused[order[:m]]
            out.hamming[i, :m] = ham[order[:m]]
        return out

    def _local_scores(self, query: LocalFeatures, i: int, ids: np.ndarray, global_scores: np.ndarray) -> np.ndarray:
        local = global_scores.astype(np.float32).copy()
        has = (ids >= 0) & (ids < self.covered)
        if not has.any():
            return local
        cand = self.features.take(ids[has])
        scores = mutual_nn_scores(
            _float32(query.desc[i]), _float32(query.rel[i]), _float32(cand.desc), _float32(cand.rel),
            self.config.min_similarity,
        )
        local[has] = scores.numpy()
        return local


def _float32(rows: np.ndarray) -> torch.Tensor:
    """torch's half->float upcast is several times faster than numpy's astype (see searcher.py)."""
    return torch.from_numpy(np.ascontiguousarray(rows)).to(torch.float32)
