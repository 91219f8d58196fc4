"""Aggregation of a patch grid into one descriptor: SelaVPR++'s GeM branch, SAGE's SoftP, and
MixVPR's feature mixing.

GeM and SoftP compute what the released code computes, operation for operation (including the order
of normalisations), so released weights give the released descriptors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.model.config import MixConfig, SoftPConfig


class GeM(nn.Module):
    """Generalised mean pooling over the spatial grid, learnable exponent p (released: p=3, eps=1e-6)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, C]. The released avg_pool2d over the whole map is this mean; a mean
        keeps the exported graph free of kernel sizes computed from the input shape."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class GeMBranch(nn.Module):
    """proj (per-location linear) -> channel L2 -> GeM -> fc -> L2.

    SelaVPR++'s float head (linear1, aggregation.1.p, linear2) and hash head (linear3,
    aggregation_hashing.1.p, linear4); on a CNN map ``proj`` is the 1x1 projection.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, in_dim)
        self.gem = GeM()
        self.fc = nn.Linear(in_dim, out_dim)

    def reset_parameters(self) -> None:
        """Identity projection and orthogonal fc: the untrained branch keeps the frozen GeM geometry.

        With proj = I the map stays non-negative where the backbone's is (GeM clamps negatives), and
        an fc with orthonormal columns (out >= in) is an isometry, so untrained descriptors have
        exactly the cosines of the frozen GeM features; with out < in (the 512-bit branch) the rows
        are orthonormal, a random projection whose signs are an LSH of the same features.
        """
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(self.proj.in_features))
            nn.init.zeros_(self.proj.bias)
            nn.init.orthogonal_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)
            self.gem.p.fill_(3.0)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """[N, h, w, C] -> [N, out] unit vectors."""
        z = self.proj(grid).permute(0, 3, 1, 2)
        z = self.gem(F.normalize(z, p=2, dim=1))
        return F.normalize(self.fc(z), p=2, dim=-1)


class MixBranch(nn.Module):
    """proj (per-location linear) -> ``depth`` residual MLPs across locations -> channel and row
    reductions -> flatten -> L2 (MixVPR's Feature-Mixer, after a projection that stands in for the
    side network as in ``GeMBranch``).

    Each mixer sees one channel's whole grid, so the descriptor keeps where things are in the image;
    its LayerNorm normalises over the locations, as in MixVPR. Output: rows x (out / rows) values.
    """

    def __init__(self, in_dim: int, grid: tuple[int, int], out_dim: int, cfg: MixConfig) -> None:
        super().__init__()
        if out_dim % cfg.rows:
            raise ValueError(f"mix rows {cfg.rows} must divide the branch output {out_dim}")
        locations = int(grid[0]) * int(grid[1])
        hidden = max(1, round(cfg.mlp_ratio * locations))
        self.proj = nn.Linear(in_dim, cfg.proj_dim)
        self.mixers = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(locations), nn.Linear(locations, hidden), nn.ReLU(),
                          nn.Linear(hidden, locations))
            for _ in range(cfg.depth))
        self.dropout = nn.Dropout(cfg.dropout)
        self.channel_proj = nn.Linear(cfg.proj_dim, out_dim // cfg.rows)
        self.row_proj = nn.Linear(locations, cfg.rows)

    def reset_parameters(self) -> None:
        """MixVPR's initialisation: truncated-normal weights (std 0.02), zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """[N, h, w, C] -> [N, out] unit vectors."""
        x = self.proj(grid.flatten(1, 2)).transpose(1, 2)     # [N, proj_dim, h*w]
        for mixer in self.mixers:
            x = x + self.dropout(mixer(x))
        x = self.channel_proj(x.transpose(1, 2))               # [N, h*w, out/rows]
        x = self.row_proj(x.transpose(1, 2))                   # [N, out/rows, rows]
        return F.normalize(x.flatten(1), p=2, dim=-1)


class DPN(nn.Module):
    """SAGE's dynamic power normalisation: x <- sign(x) (|x| + eps)^p + x, p = sigmoid(MLP(mean_L x))."""

    def __init__(self, channels: int, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.projection = nn.Sequential(nn.Linear(channels, hidden), nn.Dropout(0.1), nn.ReLU(), nn.Linear(hidden, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, D] -> same shape; one exponent per sample, from the mean over L."""
        p = torch.sigmoid(self.projection(x.mean(dim=1))).unsqueeze(-1)
        return torch.sign(x) * torch.pow(torch.abs(x) + self.eps, p) + x


class SoftWeighting(nn.Module):
    """SoftP's residual patch weighting: x <- x (1 + alpha * sigmoid(MLP(||x||)))."""

    def __init__(self, hidden: int = 128, alpha: float = 0.5, eps: float = 1e-6) -> None:
        super().__init__()
        self.alpha = alpha
        self.eps = eps
        self.predictor = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        """[N, P, C] patch descriptors -> same shape."""
        beta = self.predictor(torch.norm(desc, p=2, dim=-1, keepdim=True) + self.eps) * self.alpha
        return desc + beta * desc


class SoftP(nn.Module):
    """SAGE's Soft Probing aggregation as released (bilinear, remove_mean, softmax, DPN post-norm,
    class token, final L2): [cls token features (token_dim) | clusters x cluster_dim]."""

    def __init__(self, channels: int, cfg: SoftPConfig, dropout: float = 0.3) -> None:
        super().__init__()
        self.cfg = cfg
        self.soft_weighting = SoftWeighting()
        self.token_features = nn.Sequential(nn.Linear(channels, 512), nn.ReLU(), nn.Linear(512, cfg.token_dim))
        self.cluster_features = nn.Sequential(
            nn.Conv2d(channels, 512, 1), nn.Dropout(dropout), nn.ReLU(), nn.Conv2d(512, cfg.cluster_dim, 1))
        self.score = nn.Sequential(
            nn.Conv2d(channels, 512, 1), nn.Dropout(dropout), nn.ReLU(), nn.Conv2d(512, cfg.num_clusters, 1))
        self.gpn = DPN(cfg.num_clusters, cfg.num_clusters // 2)

    def forward(self, grid: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
        """[N, h, w, C] patch grid and [N, C] class token -> [N, token_dim + clusters * cluster_dim]."""
        b, h, w, c = grid.shape
        x = self.soft_weighting(grid.reshape(b, h * w, c)).transpose(1, 2).reshape(b, c, h, w)
        f = self.cluster_features(x).flatten(2)
        p = self.score(x).flatten(2)
        # The released code removes the mean with adaptive_avg_pool2d on these 3-D tensors, which
        # PyTorch reads as one unbatched [C, H, W] image per sample: a scalar mean per sample.
        f = f - f.mean(dim=(1, 2), keepdim=True)
        p = p - p.mean(dim=(1, 2), keepdim=True)
        n = p.shape[2]
        fp = torch.bmm(f, F.softmax(p, dim=2).transpose(1, 2))
        fp = F.normalize(self.gpn((1.0 / n) * fp), dim=1).flatten(1)
        token = F.normalize(self.token_features(cls_token), p=2, dim=-1)
        return F.normalize(torch.cat([token, fp], dim=-1), p=2, dim=-1)
