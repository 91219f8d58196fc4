"""FoL++ training signals for the local branch, weakly supervised from image pairs of one place.

No patch-level ground truth exists in VPR data, only "these two images show the same place". So:
  pseudo-correspondences  from the frozen backbone's multi-scale patch features of the two images:
                          a patch's nearest neighbour in the other image counts when its cosine is
                          above a threshold and it passes Lowe's ratio test on distances; each is
                          weighted by its cosine. They come from fixed features, so the branch cannot
                          move its own targets;
  reliability alignment   binary cross-entropy between the predicted reliability and the matching
                          evidence at each patch (pseudo-match weight times the probability the current
                          local descriptors give that match), so patches that match repeatably across
                          seasons rise and the rest fall;
  contrast                InfoNCE that pulls each pseudo-matched anchor's descriptor toward its match
                          and away from the other image's patches, from the anchor image's own
                          low-reliability patches and (in-batch) from the patches of other places,
                          weighted by the anchor's (detached) reliability, so the salient regions
                          learn to be distinctive between places, which is what re-ranking needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PseudoMatches:
    """For each patch of image A (per pair): its match in image B, the match weight, and validity."""

    target: torch.Tensor      # [B, P] long, patch index in image B
    weight: torch.Tensor      # [B, P] float, cosine of the match (0 where invalid)
    valid: torch.Tensor       # [B, P] bool


def pseudo_correspondences(feat_a: torch.Tensor, feat_b: torch.Tensor, *, threshold: float = 0.5,
                           ratio: float = 0.9) -> PseudoMatches:
    """Matches from unit patch features feat_a, feat_b [B, P, C] (e.g. ``multiscale`` of the frozen
    backbone map): nearest neighbour j of each patch i of A in B, kept when cos >= ``threshold`` and
    the distance to it is below ``ratio`` times the distance to the second nearest."""
    sim = torch.einsum("bic,bjc->bij", feat_a.float(), feat_b.float())
    top = sim.topk(2, dim=2)
    s1, s2 = top.values[..., 0], top.values[..., 1]
    d1 = torch.sqrt((2 - 2 * s1).clamp_min(0))
    d2 = torch.sqrt((2 - 2 * s2).clamp_min(0))
    valid = (s1 >= threshold) & (d1 < ratio * d2)
    return PseudoMatches(top.indices[..., 0], torch.where(valid, s1, torch.zeros_like(s1)), valid)


def correspondence_precision(matches: PseudoMatches, grid: tuple[int, int], tolerance: int = 1) -> tuple[int, int]:
    """(matches whose positions agree within ``tolerance`` patches in row and column, all matches):
    the check for data with a fixed viewpoint, where the true match of a patch is the same patch."""
    w = grid[1]
    src = torch.arange(matches.target.shape[1])
    dy = (matches.target // w - (src // w)[None]).abs()
    dx = (matches.target % w - (src % w)[None]).abs()
    good = matches.valid & (dy <= tolerance) & (dx <= tolerance)
    return int(good.sum()), int(matches.valid.sum())


def match_logits(desc_a: torch.Tensor, desc_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """[B, P, P] cosine / temperature between every patch of A and every patch of B."""
    return torch.einsum("bid,bjd->bij", desc_a, desc_b) / temperature


def matching_evidence(desc_a: torch.Tensor, desc_b: torch.Tensor, matches: PseudoMatches,
                      temperature: float = 0.1) -> torch.Tensor:
    """[B, P] in [0, 1], no gradient: pseudo-match weight times the softmax probability the current
    descriptors give that match (0 for patches without a pseudo match)."""
    with torch.no_grad():
        prob = match_logits(desc_a, desc_b, temperature).softmax(dim=2)
        hit = torch.gather(prob, 2, matches.target[..., None])[..., 0]
        return (matches.weight * hit).clamp(0, 1)


def reliability_alignment_loss(rel: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the reliability map [B, P] against the matching evidence [B, P]."""
    return F.binary_cross_entropy(rel.clamp(1e-6, 1 - 1e-6), evidence)


def contrast_loss(desc_a: torch.Tensor, desc_b: torch.Tensor, rel_a: torch.Tensor, matches: PseudoMatches,
                  grid: tuple[int, int], *, temperature: float = 0.1, low_fraction: float = 0.3) -> torch.Tensor:
    """Reliability-weighted InfoNCE from image A's pseudo-matched patches to image B.

    Positive: the pseudo match. Negatives: B's patches more than one patch away from the match (its
    immediate neighbours share most of their receptive field, so they are not pushed away), the
    ``low_fraction`` least reliable patches of A itself and, when the batch holds several pairs of
    different places, every patch of the other pairs' B images. Anchor weight: match weight times A's
    reliability (detached: this loss trains descriptors, the alignment loss trains reliability).
    """
    b, p, _ = desc_a.shape
    h, w = grid
    logits_b = match_logits(desc_a, desc_b, temperature)                           # [B, P, P]
    rows = torch.arange(p)
    ty, tx = matches.target // w, matches.target % w                                 # [B, P]
    near = ((ty[..., None] - (rows // w)[None, None]).abs() <= 1) & \
           ((tx[..., None] - (rows % w)[None, None]).abs() <= 1)
    is_target = F.one_hot(matches.target, p).bool()
    logits_b = logits_b.masked_fill(near & ~is_target, float("-inf"))
    n_low = max(1, int(round(low_fraction * p)))
    low = rel_a.detach().topk(n_low, dim=1, largest=False).indices                   # [B, n_low]
    own = torch.einsum("bid,bjd->bij", desc_a, torch.gather(desc_a, 1, low[..., None].expand(-1, -1, desc_a.shape[2])))
    own = (own / temperature).masked_fill(low[:, None, :] == rows[None, :, None], float("-inf"))
    parts = [logits_b, own]
    if b > 1:
        others = torch.einsum("bid,cjd->bicj", desc_a, desc_b) / temperature              # [B, P, B, P]
        same = torch.eye(b, dtype=torch.bool)[:, None, :, None].expand(b, p, b, p)
        parts.append(others.masked_fill(same, float("-inf")).reshape(b, p, b * p))
    logits = torch.cat(parts, dim=2)
    nll = -(torch.gather(logits_b, 2, matches.target[..., None])[..., 0] - torch.logsumexp(logits, dim=2))
    weight = matches.weight * rel_a.detach()
    return (weight * nll).sum() / weight.sum().clamp_min(1e-6)
