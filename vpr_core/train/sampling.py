"""Batch construction: plain random places, or SAGE's geo-visual graph with greedy clique batches.

SAGE rebuilds, before each epoch, an affinity graph over places from geographic proximity and the
current descriptors, keeps the top-k neighbours of each place, and fills each batch with a clique of
strongly connected places, so every batch is full of hard, confusable places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SageConfig:
    top_k: int = 16              # neighbours kept per place
    geo_weight: float = 0.5      # affinity = geo_weight * geo + (1 - geo_weight) * visual
    geo_scale: float = 10.0      # geo proximity = exp(-distance / geo_scale), in position units
    exclude_radius: float = 0.0  # places this close are the same place: not neighbours

    def __post_init__(self) -> None:
        if self.top_k < 1 or not 0.0 <= self.geo_weight <= 1.0 or self.geo_scale <= 0:
            raise ValueError(f"bad SAGE config {self}: top_k >= 1, geo_weight in [0, 1], geo_scale > 0")


def random_batches(num_places: int, places_per_batch: int, rng: np.random.Generator,
                   limit: int | None = None) -> list[np.ndarray]:
    """Places shuffled and cut into batches (the last, partial one dropped); ``limit`` places at most."""
    order = rng.permutation(num_places)[: limit or num_places]
    n = len(order) // places_per_batch
    return [order[b * places_per_batch:(b + 1) * places_per_batch] for b in range(n)]


def affinity_graph(positions: np.ndarray, descriptors: np.ndarray, cfg: SageConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sparse top-k graph: (neighbour index [P, k], affinity [P, k]), affinity >= 0.

    Computed in row blocks so the dense P x P matrix is never held at once.
    """
    p = len(positions)
    k = min(cfg.top_k, p - 1)
    if k < 1:
        raise ValueError("the affinity graph needs at least two places")
    pos = np.asarray(positions, dtype=np.float64).reshape(p, -1)
    desc = np.asarray(descriptors, dtype=np.float32)
    nbr = np.empty((p, k), dtype=np.int64)
    aff = np.empty((p, k), dtype=np.float64)
    for start in range(0, p, 1024):
        stop = min(p, start + 1024)
        dist = np.linalg.norm(pos[start:stop, None] - pos[None], axis=-1)
        visual = np.clip(desc[start:stop] @ desc.T, 0.0, 1.0)
        a = cfg.geo_weight * np.exp(-dist / cfg.geo_scale) + (1.0 - cfg.geo_weight) * visual
        a[dist <= cfg.exclude_radius] = -np.inf                   # itself and its own place
        top = np.argpartition(-a, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(a, top, axis=1)
        order = np.argsort(-vals, axis=1)
        nbr[start:stop] = np.take_along_axis(top, order, axis=1)
        aff[start:stop] = np.maximum(np.take_along_axis(vals, order, axis=1), 0.0)
    return nbr, aff


def greedy_clique_batches(neighbours: np.ndarray, affinity: np.ndarray, places_per_batch: int,
                          limit: int | None = None) -> list[np.ndarray]:
    """Batches by greedy weighted clique expansion over the sparse graph.

    Seed: the unused place with the highest mean affinity to its neighbours. Then repeatedly add the
    unused place with the largest summed affinity to the clique (edges taken in both directions);
    when no unused place is connected, the next seed starts a new group inside the same batch. Every
    place is used at most once per epoch; a last partial batch is dropped. Ties go to the lower index.
    """
    p = len(neighbours)
    dense: list[dict[int, float]] = [dict() for _ in range(p)]
    for i in range(p):
        for j, a in zip(neighbours[i], affinity[i]):
            j = int(j)
            if j != i and a > 0:
                dense[i][j] = max(dense[i].get(j, 0.0), float(a))
                dense[j][i] = max(dense[j].get(i, 0.0), float(a))
    mean_aff = affinity.mean(axis=1)
    seed_order = [int(i) for i in np.lexsort((np.arange(p), -mean_aff))]
    used = np.zeros(p, dtype=bool)
    batches: list[np.ndarray] = []
    budget = p if limit is None else min(p, limit)
    next_seed = 0
    while (len(batches) + 1) * places_per_batch <= budget:
        batch: list[int] = []
        score: dict[int, float] = {}
        while len(batch) < places_per_batch:
            candidates = [(s, -j) for j, s in score.items() if not used[j]]
            if candidates:
                best = -max(candidates)[1]
            else:
                while next_seed < p and used[seed_order[next_seed]]:
                    next_seed += 1
                if next_seed == p:
                    return batches
                best = seed_order[next_seed]
            used[best] = True
            batch.append(best)
            score.pop(best, None)
            for j, a in dense[best].items():
                if not used[j]:
                    score[j] = score.get(j, 0.0) + a
        batches.append(np.array(batch, dtype=np.int64))
    return batches
