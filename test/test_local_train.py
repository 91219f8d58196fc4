"""FoL++ training signals: pseudo-correspondences with threshold and ratio test, their precision
count, and which parts of the local branch each loss trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpr_core.model.local_branch import LocalBranch, LocalBranchConfig
from vpr_core.train.local_losses import (PseudoMatches, contrast_loss, correspondence_precision, matching_evidence,
                                         pseudo_correspondences, reliability_alignment_loss)

pytestmark = pytest.mark.usefixtures("torch_threads")
GRID = (3, 4)


def shifted_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image B is image A's patches shifted one column right (wrapping), plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(1, 12, 16, generator=g), dim=-1)
    b = a.reshape(1, 3, 4, 16).roll(1, dims=2).reshape(1, 12, 16)
    return a, F.normalize(b + 0.05 * torch.randn(b.shape, generator=g), dim=-1)


def test_pseudo_correspondences_find_the_shifted_patches():
    a, b = shifted_pair()
    m = pseudo_correspondences(a, b, threshold=0.5, ratio=0.9)
    src = torch.arange(12)
    expected = (src // 4) * 4 + (src % 4 + 1) % 4
    assert m.valid.all() and torch.equal(m.target[0], expected)
    assert (m.weight > 0.9).all()
    # Within one patch: all but the wrapped column (which moves 3 columns) agree.
    assert correspondence_precision(m, GRID) == (9, 12)
    assert correspondence_precision(m, GRID, tolerance=3) == (12, 12)


def test_threshold_and_ratio_test_drop_weak_and_ambiguous_matches():
    a, b = shifted_pair()
    b = b.clone()
    b[0, 5] = b[0, 6]                                  # two identical patches in B: A's patch 5 is ambiguous
    m = pseudo_correspondences(a, b, threshold=0.5, ratio=0.9)
    assert not m.valid[0, 5] and m.weight[0, 5] == 0 and m.valid.sum() < 12
    none = pseudo_correspondences(a, F.normalize(torch.randn(1, 12, 16, generator=torch.Generator().manual_seed(9)),
                                                 dim=-1), threshold=0.9, ratio=0.9)
    assert not none.valid.any()


def test_contrast_trains_descriptors_and_alignment_trains_reliability():
    branch = LocalBranch(LocalBranchConfig(in_channels=8, dim=16, hidden=4))
    g = torch.Generator().manual_seed(0)
    fa = torch.randn(2, 8, *GRID, generator=g)
    fb = fa + 0.1 * torch.randn(fa.shape, generator=g)
    da, ra = branch(fa)
    db, _ = branch(fb)
    matches = PseudoMatches(torch.arange(12).repeat(2, 1), torch.full((2, 12), 0.9),
                            torch.ones(2, 12, dtype=torch.bool))
    contrast = contrast_loss(da, db, ra, matches, GRID)
    grads = torch.autograd.grad(contrast, [branch.descriptor.weight, branch.reliability[2].weight], allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1] is None
    evidence = matching_evidence(da, db, matches)
    assert evidence.shape == (2, 12) and not evidence.requires_grad and (evidence <= 0.9 + 1e-6).all()
    align = reliability_alignment_loss(ra, evidence)
    grads = torch.autograd.grad(align, [branch.descriptor.weight, branch.reliability[2].weight], allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0


def test_a_few_steps_lower_the_contrast_loss():
    torch.manual_seed(0)
    branch = LocalBranch(LocalBranchConfig(in_channels=8, dim=16, hidden=4))
    g = torch.Generator().manual_seed(1)
    fa = torch.randn(4, 8, *GRID, generator=g)
    fb = fa + 0.5 * torch.randn(fa.shape, generator=g)
    matches = PseudoMatches(torch.arange(12).repeat(4, 1), torch.ones(4, 12), torch.ones(4, 12, dtype=torch.bool))
    optimizer = torch.optim.Adam(branch.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        da, ra = branch(fa)
        db, _ = branch(fb)
        loss = contrast_loss(da, db, ra, matches, GRID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
