"""The trainable heads: backbone features in, (binary logits, float descriptor) out.

Two independent branches, as in SelaVPR++: a 512-bit hash branch whose sign is the code (straight-
through estimation in training) and a float branch whose unit vector re-ranks. What feeds them
depends on the head type:
  selavpr - one side network of MultiConv adapters per branch over the tapped ViT token maps, then
            the backbone's (frozen) final norm;
  sage    - the last ``recalib_blocks`` frozen blocks each followed by a dynamic power norm, then a
            trainable copy of the final norm; SoftP or GeM for the float branch;
  cnn     - the CNN feature map directly (each branch's 1x1 projection stands in for the side network).
The branches aggregate with GeM, or (float branch only) SoftP, or (both branches) feature mixing.
With fusion (cnn + mix), a third, frozen GeM branch joins the float descriptor (``FusedGeM``).
An optional InteractHead (SAGE) mixes descriptors across the batch, which makes them batch dependent.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.model.adapters import SideNetwork
from vpr_core.model.aggregation import DPN, GeMBranch, MixBranch, SoftP
from vpr_core.model.config import FusionConfig, InteractConfig, ModelConfig


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def sign_ste(logits: torch.Tensor) -> torch.Tensor:
    """+1 where logits >= 0, else -1; the gradient passes straight through (identity), as in SelaVPR++."""
    return _SignSTE.apply(logits)


class Recalibration(nn.Module):
    """SAGE's recalibration: blocks [start, start + k) of the frozen backbone, each followed by a DPN.

    The block weights stay the backbone's (frozen, never copied); gradients pass through them to the
    DPNs, as in SAGE. Only these last k blocks are run here; the earlier ones are cached features.
    """

    def __init__(self, dim: int, start: int, count: int) -> None:
        super().__init__()
        self.start = start
        self.dpn = nn.ModuleList(DPN(dim, 16) for _ in range(count))

    def forward(self, tokens: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
        return backbone.run_blocks(tokens, self.start, self.start + len(self.dpn),
                                   lambda i, t: self.dpn[i - self.start](t))


class InteractHead(nn.Module):
    """SAGE's cross-image encoder: the descriptor, cut into d_model-sized pieces, attends across the
    images of the batch (sequence-first layout, so the sequence axis is the batch). SAGE leaves the
    result unnormalised; here it is L2-normalised because every descriptor we return is a unit vector
    (cosine ranking is unchanged by that)."""

    def __init__(self, cfg: InteractConfig) -> None:
        super().__init__()
        self.d_model = cfg.d_model
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, dim_feedforward=cfg.ff_dim, dropout=0.1,
                                           activation="gelu", batch_first=False)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        b = desc.shape[0]
        return F.normalize(self.encoder(desc.reshape(b, -1, self.d_model)).reshape(b, -1), p=2, dim=-1)


class FusedGeM(nn.Module):
    """The frozen GeM branch of a fused model, and the fusion of its descriptor with the mix one.

    The branch is preset ``lite0``'s float branch (identity projection, orthogonal fc, as wide as the
    map): at its initialisation it is an exact isometry of the frozen backbone's GeM feature, the
    baseline that does no harm off any training route, so it is never trained. Its parameters do not
    require grad, and ``vpr train`` optimises only parameters that do: training a fused model trains
    the mix branches alone, through the fused descriptor.
    """

    def __init__(self, channels: int, cfg: FusionConfig, twin: ModelConfig) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):   # leaves the mix branches the draws they get unfused
            self.branch = GeMBranch(channels, channels)
        self.branch.requires_grad_(False)
        self.gem_scale = math.sqrt(cfg.gem_weight)
        self.mix_scale = math.sqrt(1.0 - cfg.gem_weight)
        self._twin = twin

    def reset_parameters(self, backbone: nn.Module) -> None:
        """The float branch of the GeM head ``twin`` as ``build_model`` seeds it (same seed, same order
        of draws), so the GeM part equals that preset's untrained float descriptor element by element.

        Drawn from a forked generator, as the branch was built: a fused model's mix branches start
        where the same model's unfused ones (``lite0-mix``) do.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._twin.seed)
            twin = VPRHead(self._twin, backbone)
            twin.reset_parameters(backbone)
        self.branch.load_state_dict(twin.float_branch.state_dict())

    def forward(self, grid: torch.Tensor, mix_desc: torch.Tensor) -> torch.Tensor:
        """[N, h, w, C] map and [N, D_mix] unit mix descriptor -> [N, C + D_mix] unit
        normalize([sqrt(w) g, sqrt(1 - w) m]) (already unit for unit g and m; normalised against rounding)."""
        gem = self.branch(grid)
        return F.normalize(torch.cat([self.gem_scale * gem, self.mix_scale * mix_desc], dim=-1), p=2, dim=-1)


def gem_twin(config: ModelConfig, channels: int) -> ModelConfig:
    """The GeM-branch model whose untrained float branch is the GeM part of fused ``config``
    (for ``lite0-fused``: preset ``lite0``'s layout and seed)."""
    return dataclasses.replace(config, aggregation="gem", mix=None, fusion=None, dim=channels, weights_digest=None)


class VPRHead(nn.Module):
    def __init__(self, config: ModelConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.head_type = config.head
        self.float_side = self.hash_side = self.recalib = self.norm = self.interact = None
        if backbone.kind == "vit":
            width = backbone.embed_dim
            self.num_prefix_tokens = backbone.num_prefix_tokens
            self.grid = backbone.grid
            if config.head == "selavpr":
                n = len(backbone.taps) - 1
                self.float_side = SideNetwork(width, config.side, n, self.num_prefix_tokens, self.grid)
                self.hash_side = SideNetwork(width, config.side, n, self.num_prefix_tokens, self.grid)
            else:
                if config.recalib_blocks:
                    self.recalib = Recalibration(width, backbone.taps[0], config.recalib_blocks)
                self.norm = nn.LayerNorm(width, eps=1e-6)   # SAGE trains the final norm: a copy of the backbone's
        else:
            width = backbone.out_channels
        if config.aggregation == "softp":
            if backbone.kind != "vit":
                raise ValueError(f"model config {config.preset!r}: SoftP needs a ViT (it reads the class token)")
            self.float_branch = SoftP(width, config.softp)
        elif config.aggregation == "mix":
            self.float_branch = MixBranch(width, backbone.grid, _mix_float_dim(config, width), config.mix)
        else:
            self.float_branch = GeMBranch(width, config.dim)
        # Mixing replaces GeM in the hash branch too: Hamming candidates from a layout-blind code
        # would miss the places the layout-aware float descriptor could re-rank.
        self.hash_branch = (MixBranch(width, backbone.grid, config.bits, config.mix) if config.aggregation == "mix"
                            else GeMBranch(width, config.bits))
        if config.interact is not None:
            self.interact = InteractHead(config.interact)
        self.fusion = None if config.fusion is None else FusedGeM(width, config.fusion, gem_twin(config, width))

    def reset_parameters(self, backbone: nn.Module) -> None:
        """The documented starting point (adapters as SelaVPR++, branches geometry-preserving)."""
        for side in (self.float_side, self.hash_side):
            if side is not None:
                side.reset_parameters()
        for branch in (self.float_branch, self.hash_branch):
            if isinstance(branch, (GeMBranch, MixBranch)):
                branch.reset_parameters()
        if self.norm is not None:
            self.norm.load_state_dict(backbone.norm.state_dict())
        if self.fusion is not None:
            self.fusion.reset_parameters(backbone)

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens.shape
        return tokens[:, self.num_prefix_tokens:].reshape(b, self.grid[0], self.grid[1], d)

    def forward(self, features: torch.Tensor, backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(binary logits [N, bits] (L2-normalised; the code is their sign), descriptor [N, D] unit)."""
        if self.head_type == "cnn":
            grid_f = grid_h = features.permute(0, 2, 3, 1)
            cls_token = None
        elif self.head_type == "selavpr":
            tokens = backbone.norm(self.float_side(features))
            grid_f, cls_token = self._grid(tokens), tokens[:, 0]
            grid_h = self._grid(backbone.norm(self.hash_side(features)))
        else:
            tokens = features[:, 0]
            if self.recalib is not None:
                tokens = self.recalib(tokens, backbone)
            tokens = self.norm(tokens)
            grid_f = grid_h = self._grid(tokens)
            cls_token = tokens[:, 0]
        desc = self.float_branch(grid_f, cls_token) if isinstance(self.float_branch, SoftP) else self.float_branch(grid_f)
        if self.interact is not None:
            desc = self.interact(desc)
        if self.fusion is not None:
            desc = self.fusion(grid_f, desc)
        return self.hash_branch(grid_h), desc


def _mix_float_dim(config: ModelConfig, channels: int) -> int:
    """The mix float branch's width: ``dim``, less the GeM part's ``channels`` when fused."""
    if config.fusion is None:
        return config.dim
    mix_dim = config.dim - channels
    if mix_dim < config.mix.rows or mix_dim % config.mix.rows:
        raise ValueError(f"model config {config.preset!r}: with fusion, dim is the mix float width plus the "
                         f"backbone map's {channels} channels (the GeM part); dim {config.dim} leaves {mix_dim} for "
                         f"the mix branch, which must be a positive multiple of mix.rows {config.mix.rows} "
                         f"(e.g. dim {channels + 1280} for a 1280-D mix descriptor)")
    return mix_dim
