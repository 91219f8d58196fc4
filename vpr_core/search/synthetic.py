"""Synthetic maps with the neighbourhood structure of real VPR maps, for tests and benchmarks.

Uniform random descriptors make retrieval look easy and meaningless (every place is equally far from
every other). Real maps are routes: consecutive frames are very similar, frames of one route share
appearance, routes of one area share more than routes of different areas, and a revisit (query) is
close to one place and a little less close to its neighbours. That is modelled in a latent space:

    z = sqrt(w_region) * g_region + sqrt(w_route) * u_route + sqrt(1 - w_region - w_route) * y_t

with y_t an AR(1) walk along the route (correlation `step_corr` between consecutive places), and a
query of place i is sqrt(query_corr) * z_i + sqrt(1 - query_corr) * noise. Like the two heads of
SelaVPR++ (a float head and a hash head on one backbone), the float descriptor and the binary code are
two different random linear maps of z, the code with its own noise, so Hamming ranking agrees with
cosine ranking only approximately, which is what the two-stage search has to cope with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


@dataclass(frozen=True)
class SyntheticConfig:
    dim: int = 2048
    bits: int = 512
    latent: int = 256
    route_length: int = 100
    routes_per_region: int = 10
    w_region: float = 0.2
    w_route: float = 0.3
    step_corr: float = 0.95
    code_noise: float = 0.2  # std of the hash head's own noise, relative to its signal
    query_corr: float = 0.6
    seed: int = 0

    @property
    def places_per_region(self) -> int:
        return self.route_length * self.routes_per_region


@dataclass(frozen=True)
class Heads:
    """The two fixed linear maps (float head, hash head) from latent to outputs."""

    float_head: torch.Tensor  # [latent, dim]
    hash_head: torch.Tensor  # [latent, bits]


def make_heads(cfg: SyntheticConfig) -> Heads:
    g = torch.Generator().manual_seed(cfg.seed)
    return Heads(
        float_head=torch.randn(cfg.latent, cfg.dim, generator=g),
        hash_head=torch.randn(cfg.latent, cfg.bits, generator=g),
    )


def encode(
    cfg: SyntheticConfig, heads: Heads, z: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [N, bits/8], desc float32 [N, D] L2-normalised) of latent rows `z`."""
    zt = torch.from_numpy(np.ascontiguousarray(z, np.float32))
    desc = torch.nn.functional.normalize(zt @ heads.float_head, dim=1)
    logits = zt @ heads.hash_head
    scale = logits.std(dim=1, keepdim=True)
    logits += cfg.code_noise * scale * torch.from_numpy(rng.standard_normal(logits.shape, dtype=np.float32))
    codes = np.packbits((logits >= 0).numpy(), axis=1)
    return codes, desc.numpy()


def latent_chunks(cfg: SyntheticConfig, n: int, regions_per_chunk: int = 16) -> Iterator[np.ndarray]:
    """Latent rows of places 0..n-1 in chunks of whole regions; each chunk has its own seed, so the
    same place gets the same latent whatever the consumer does with earlier chunks."""
    rows_per_chunk = regions_per_chunk * cfg.places_per_region
    w_walk = 1.0 - cfg.w_region - cfg.w_route
    if w_walk <= 0:
        raise ValueError("w_region + w_route must be < 1")
    L = cfg.latent
    for c, start in enumerate(range(0, n, rows_per_chunk)):
        rng = np.random.default_rng([cfg.seed, c])
        R = regions_per_chunk * cfg.routes_per_region
        region = rng.standard_normal((regions_per_chunk, 1, 1, L), dtype=np.float32)
        route = rng.standard_normal((regions_per_chunk, cfg.routes_per_region, 1, L), dtype=np.float32)
        walk = np.empty((R, cfg.route_length, L), np.float32)
        walk[:, 0] = rng.standard_normal((R, L), dtype=np.float32)
        innov = np.sqrt(1 - cfg.step_corr**2)
        for t in range(1, cfg.route_length):
            walk[:, t] = cfg.step_corr * walk[:, t - 1] + innov * rng.standard_normal(
                (R, L), dtype=np.float32
            )
        walk = walk.reshape(regions_per_chunk, cfg.routes_per_region, cfg.route_length, L)
        z = np.sqrt(cfg.w_region) * region + np.sqrt(cfg.w_route) * route + np.sqrt(w_walk) * walk
        yield (z.reshape(-1, L) / np.sqrt(L))[: n - start]


def places(
    cfg: SyntheticConfig, n: int, heads: Heads | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(codes, desc float32, latent) chunks of an n-place map."""
    heads = heads or make_heads(cfg)
    for c, z in enumerate(latent_chunks(cfg, n)):
        codes, desc = encode(cfg, heads, z, np.random.default_rng([cfg.seed, c, 1]))
        yield codes, desc, z


def queries(
    cfg: SyntheticConfig, z_places: np.ndarray, seed: int, heads: Heads | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Revisits of the places whose latents are `z_places`: (codes, desc float32)."""
    heads = heads or make_heads(cfg)
    rng = np.random.default_rng([cfg.seed, seed, 2])
    noise = rng.standard_normal(z_places.shape, dtype=np.float32) / np.sqrt(cfg.latent)
    zq = np.sqrt(cfg.query_corr) * z_places + np.sqrt(1 - cfg.query_corr) * noise
    return encode(cfg, heads, zq, rng)


def small_map(
    cfg: SyntheticConfig, n: int, n_queries: int, seed: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All in RAM, for tests: (codes, desc, query_codes, query_desc, query_source_ids)."""
    heads = make_heads(cfg)
    parts = list(places(cfg, n, heads))
    codes = np.concatenate([p[0] for p in parts])
    desc = np.concatenate([p[1] for p in parts])
    z = np.concatenate([p[2] for p in parts])
    src = np.random.default_rng([cfg.seed, seed]).choice(n, size=n_queries, replace=n_queries > n)
    qc, qd = queries(cfg, z[src], seed, heads)
    return codes, desc, qc, qd, src
