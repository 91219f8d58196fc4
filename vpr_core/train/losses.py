"""The losses of SelaVPR++: multi-similarity loss (float branch, and binary branch on straight-through
sign codes) and the similarity-constrained quantization loss L_Q (Eq. 11 and 15).

Written here rather than taken from pytorch-metric-learning: that package is not among the pinned
dependencies, and these are a few lines over a similarity matrix with explicit positive/negative masks
(sequence data needs an "ignore" band between them, which label-based miners cannot express).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vpr_core.model import sign_ste


@dataclass(frozen=True)
class MSLossConfig:
    """Multi-similarity loss (Wang et al., CVPR 2019) as used by GSV-Cities / SelaVPR++."""

    alpha: float = 1.0     # weight of positive pairs
    beta: float = 50.0     # weight of negative pairs
    base: float = 0.0      # similarity margin lambda
    epsilon: float = 0.1   # pair mining margin


def multi_similarity_loss(sim: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                          cfg: MSLossConfig = MSLossConfig()) -> torch.Tensor:
    """Mean over anchors of the MS loss, after MS pair mining.

    ``sim`` [B, B] similarities; ``positive``/``negative`` [B, B] bool masks (diagonal ignored). Mining
    keeps a negative when sim + eps > the anchor's hardest (smallest) positive similarity, and a
    positive when sim - eps < the anchor's hardest (largest) negative similarity. Anchors left with
    no pair contribute 0 and still count in the mean.
    """
    b = sim.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    positive = positive & ~eye
    negative = negative & ~eye
    inf = torch.tensor(float("inf"), dtype=sim.dtype, device=sim.device)
    s = sim.detach()
    hardest_pos = torch.where(positive, s, inf).min(dim=1, keepdim=True).values
    hardest_neg = torch.where(negative, s, -inf).max(dim=1, keepdim=True).values
    neg_kept = negative & (s + cfg.epsilon > hardest_pos)
    pos_kept = positive & (s - cfg.epsilon < hardest_neg)
    zero = torch.zeros((), dtype=sim.dtype, device=sim.device)
    pos_term = torch.where(pos_kept, torch.exp(-cfg.alpha * (sim - cfg.base)), zero).sum(dim=1)
    neg_term = torch.where(neg_kept, torch.exp(cfg.beta * (sim - cfg.base)), zero).sum(dim=1)
    loss = torch.log1p(pos_term) / cfg.alpha + torch.log1p(neg_term) / cfg.beta
    return loss.mean()


def code_similarity(binary_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign codes with straight-through gradient, their similarity <b_i, b_j> / d)."""
    codes = sign_ste(binary_logits)
    return codes, codes @ codes.T / codes.shape[1]


def quantization_loss(real: torch.Tensor, codes: torch.Tensor, *, pair_fraction: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """L_Q = mean over sampled pairs i<j of (<f_i, f_j> - <b_i, b_j> / d)^2.

    ``real`` are the hash branch's unit real-valued outputs f, ``codes`` their signs b (+-1). Pulling the
    cosine of the real outputs towards the Hamming similarity of the codes keeps the ranking that the
    float loss shaped once the sign is taken. ``pair_fraction`` of the B(B-1)/2 pairs is sampled.
    """
    if not 0.0 < pair_fraction <= 1.0:
        raise ValueError(f"pair_fraction must be in (0, 1], got {pair_fraction}")
    i, j = torch.triu_indices(real.shape[0], real.shape[0], offset=1, device=real.device)
    if pair_fraction < 1.0:
        keep = max(1, round(pair_fraction * len(i)))
        pick = torch.randperm(len(i), generator=generator, device=real.device)[:keep]
        i, j = i[pick], j[pick]
    gap = (real[i] * real[j]).sum(-1) - (codes[i] * codes[j]).sum(-1) / codes.shape[1]
    return (gap ** 2).mean()
