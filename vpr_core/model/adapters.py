"""SelaVPR++'s side network: MultiConv adapters refining the frozen backbone's intermediate tokens.

The chain runs beside the backbone (y <- y + A(y + x_l), Eq. 6 of the paper) and reads only the
token maps the backbone already produced, so no gradient ever flows into the backbone. Module and
parameter names (D_fc1, branch1.conv/bn, branch2.0/1, branch3.0/1, D_fc2) are those of the released
code, so released adapters load by renaming their prefix only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.model.config import SideConfig


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class MulConvAdapter(nn.Module):
    """D_fc1 -> ReLU -> (1x1 | 1x1->3x3 | 1x1->5x5) on the patch grid, concatenated, + skip -> D_fc2.

    Prefix tokens (class token, registers) skip the convolutions: they enter the sum as themselves,
    so after the skip connection they are doubled, exactly as in the released adapter.
    """

    def __init__(self, dim: int, side: SideConfig, num_prefix_tokens: int, grid: tuple[int, int]) -> None:
        super().__init__()
        if side.ch1x1 + side.ch3x3 + side.ch5x5 != side.hidden:
            raise ValueError(f"adapter branches give {side.ch1x1}+{side.ch3x3}+{side.ch5x5} channels; "
                             f"they must add up to hidden={side.hidden} for the skip connection")
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = grid
        self.D_fc1 = nn.Linear(dim, side.hidden)
        self.branch1 = ConvBNReLU(side.hidden, side.ch1x1, 1)
        self.branch2 = nn.Sequential(ConvBNReLU(side.hidden, side.ch3x3red, 1), ConvBNReLU(side.ch3x3red, side.ch3x3, 3))
        self.branch3 = nn.Sequential(ConvBNReLU(side.hidden, side.ch5x5red, 1), ConvBNReLU(side.ch5x5red, side.ch5x5, 5))
        self.D_fc2 = nn.Linear(side.hidden, dim)

    def reset_parameters(self) -> None:
        """SelaVPR++'s start: D_fc2 zero (the chain starts as the identity), convolutions 1e-5.

        D_fc1 is normal with std 0.02 (the released code's trunc_normal_ with bounds +-2 absolute is
        the same distribution)."""
        nn.init.normal_(self.D_fc1.weight, std=0.02)
        nn.init.zeros_(self.D_fc1.bias)
        nn.init.zeros_(self.D_fc2.weight)
        nn.init.zeros_(self.D_fc2.bias)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.constant_(module.weight, 1e-5)
                nn.init.constant_(module.bias, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.D_fc1(x))
        b, _, c = h.shape
        p = self.num_prefix_tokens
        grid = h[:, p:].reshape(b, self.grid[0], self.grid[1], c).permute(0, 3, 1, 2)
        conv = torch.cat([self.branch1(grid), self.branch2(grid), self.branch3(grid)], dim=1)
        out = torch.cat([h[:, :p], conv.flatten(2).transpose(1, 2)], dim=1) + h
        return self.D_fc2(out)


class SideNetwork(nn.Module):
    """y_0 = x_start; y_i = y_{i-1} + A_i(y_{i-1} + x_i) over the tapped token maps [N, L, T, D]."""

    def __init__(self, dim: int, side: SideConfig, num_adapters: int, num_prefix_tokens: int,
                 grid: tuple[int, int]) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(MulConvAdapter(dim, side, num_prefix_tokens, grid) for _ in range(num_adapters))

    def reset_parameters(self) -> None:
        for adapter in self.adapters:
            adapter.reset_parameters()

    def forward(self, taps: torch.Tensor) -> torch.Tensor:
        y = taps[:, 0]
        for i, adapter in enumerate(self.adapters):
            y = y + adapter(y + taps[:, i + 1])
        return y
