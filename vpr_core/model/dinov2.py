"""DINOv2 vision transformers, frozen, with the parameter names of the official checkpoints.

Written here rather than taken from torch.hub because the hub code downloads at run time, uses
xFormers when it can import it, and interpolates the positional embeddings inside the forward pass
with sizes computed from the input: all three break offline use or ONNX/TensorRT export. This version
uses plain ``scaled_dot_product_attention`` and resamples the positional embeddings once, for the
fixed input size, whenever weights are loaded. The names (patch_embed.proj, cls_token, pos_embed,
register_tokens, mask_token, blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1|w12,
mlp.fc2|w3, ls2.gamma}, norm) let the official ``.pth`` files load with strict checking; Hugging Face
``facebook/dinov2-*`` weights load through ``convert_hf_state_dict``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.model.state import WeightsError, check_state_dict, read_state_dict

# How the pretrained 37x37 grid of positional embeddings is resampled to another grid:
#   offset    - bicubic with scale factors (n + 0.1) / 37, no antialiasing: official DINOv2 without
#               registers (and so SelaVPR++, whose weights were trained with it);
#   antialias - bicubic to the target size with antialiasing: official DINOv2 with registers, and
#               Hugging Face Dinov2WithRegistersModel;
#   size      - bicubic to the target size without antialiasing: Hugging Face Dinov2Model.
POS_INTERP_MODES = ("offset", "antialias", "size")


@dataclass(frozen=True)
class ViTArch:
    embed_dim: int
    depth: int
    num_heads: int
    swiglu: bool = False
    num_register_tokens: int = 0
    pos_interp: str = "offset"
    patch_size: int = 14
    pretrain_size: int = 518          # the pretrained positional grid is pretrain_size / patch_size


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """ViT-g's feed-forward: two thirds of 4*dim, rounded up to a multiple of 8, as in DINOv2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, swiglu: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLUFFN(dim) if swiglu else Mlp(dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """[1, 1 + M*M, D] positional embeddings (class token first) resampled to a (h, w) patch grid."""
    if mode not in POS_INTERP_MODES:
        raise ValueError(f"pos_interp must be one of {POS_INTERP_MODES}; got {mode!r}")
    n, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    h, w = grid
    if (h, w) == (m, m):
        return pos_embed
    patch = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if mode == "offset":
        resize = {"scale_factor": ((h + 0.1) / m, (w + 0.1) / m)}
    else:
        resize = {"size": (h, w)}
    patch = F.interpolate(patch, mode="bicubic", align_corners=False, antialias=mode == "antialias", **resize)
    patch = patch.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


class DinoVisionTransformer(nn.Module):
    """A frozen DINOv2 ViT for one fixed input size, returning the token maps the heads read.

    ``forward`` returns the outputs after k blocks for every k in ``taps`` (k = 0: the embeddings),
    stacked as [N, len(taps), tokens, dim]; it stops after the deepest tap.
    """

    kind = "vit"

    def __init__(self, arch: ViTArch, image_size: tuple[int, int], taps: Sequence[int],
                 pos_interp: str | None = None) -> None:
        super().__init__()
        h, w = image_size
        p = arch.patch_size
        if h % p or w % p:
            raise ValueError(f"image_size {image_size} must be a multiple of the patch size {p} in both axes")
        if not taps or min(taps) < 0 or max(taps) > arch.depth:
            raise ValueError(f"taps {tuple(taps)} must lie in 0..{arch.depth}")
        self.arch = arch
        self.image_size = (h, w)
        self.grid = (h // p, w // p)
        self.taps = tuple(taps)
        self.pos_interp = pos_interp or arch.pos_interp
        if self.pos_interp not in POS_INTERP_MODES:
            raise ValueError(f"pos_interp must be one of {POS_INTERP_MODES}; got {self.pos_interp!r}")
        self.embed_dim = dim = arch.embed_dim
        self.num_prefix_tokens = 1 + arch.num_register_tokens
        m = arch.pretrain_size // p

        self.patch_embed = PatchEmbed(dim, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, m * m + 1, dim))
        if arch.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, arch.num_register_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # unused; kept so official files load strictly
        self.blocks = nn.ModuleList(Block(dim, arch.num_heads, arch.swiglu) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.register_buffer("pos_embed_fixed", torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim),
                             persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.refresh_pos_embed())

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """Shape of one image's features: (taps, tokens, dim)."""
        return (len(self.taps), self.num_prefix_tokens + self.grid[0] * self.grid[1], self.embed_dim)

    @torch.no_grad()
    def init_random(self) -> None:
        """DINOv2's own initialisation (layer scale 1) of every tensor, for random-weight models in
        tests and benchmarks; it does not rely on the constructors' defaults, so the model may be
        built on the meta device and materialised with ``to_empty`` first."""
        # DINOv2 calls trunc_normal_(std=0.02) with the default bounds of +-2 (absolute), a hundred
        # standard deviations: the same distribution as normal_, which costs a fifth of the time.
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.arch.num_register_tokens:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        self.patch_embed.proj.reset_parameters()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, LayerScale):
                module.gamma.fill_(1.0)
        self.refresh_pos_embed()

    @torch.no_grad()
    def refresh_pos_embed(self) -> None:
        if not self.pos_embed.is_meta:
            self.pos_embed_fixed.copy_(resample_pos_embed(self.pos_embed, self.grid, self.pos_interp))

    def load_weights(self, path: str | Path) -> None:
        """Official ``.pth``/``.safetensors`` or a Hugging Face directory; strict, clear errors."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"DINOv2 weights not found at {path}. Nothing is downloaded at run time: fetch the official "
                f"file (e.g. https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth) "
                f"or a Hugging Face facebook/dinov2-* directory on a machine with network access and pass its path")
        state = read_state_dict(path)
        if is_hf_state_dict(state):
            state = convert_hf_state_dict(state)
        self.load_checked(state, source=path)

    def load_checked(self, state: dict[str, torch.Tensor], source: str | Path) -> None:
        expected = self.state_dict()
        pos = state.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape and pos.ndim == 3:
            # Any square pretrained grid works: it is resampled to our fixed grid anyway.
            expected["pos_embed"] = pos
        check_state_dict(expected, state, f"DINOv2 {self._describe()}", source)
        if pos is not None and pos.shape != self.pos_embed.shape:
            self.pos_embed = nn.Parameter(torch.empty_like(pos), requires_grad=self.pos_embed.requires_grad)
        self.load_state_dict(state, strict=True)

    def _describe(self) -> str:
        a = self.arch
        regs = f", {a.num_register_tokens} registers" if a.num_register_tokens else ""
        return f"ViT (dim {a.embed_dim}, depth {a.depth}{regs})"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"the backbone takes [N, 3, {self.image_size[0]}, {self.image_size[1]}] "
                             f"(its positional embeddings are fixed to that size); got {list(x.shape)}")
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed_fixed
        if self.arch.num_register_tokens:
            t = torch.cat([t[:, :1], self.register_tokens.expand(t.shape[0], -1, -1), t[:, 1:]], dim=1)
        return t

    def run_blocks(self, t: torch.Tensor, start: int, stop: int,
                   after_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Tokens after blocks[start:stop]; ``after_block(i, t)`` may rewrite them after block i."""
        for i in range(start, stop):
            t = self.blocks[i](t)
            if after_block is not None:
                t = after_block(i, t)
        return t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        outputs = [t] if 0 in self.taps else []
        for i in range(max(self.taps)):
            t = self.blocks[i](t)
            if i + 1 in self.taps:
                outputs.append(t)
        return torch.stack(outputs, dim=1)

    def final_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the last block and the final norm (DINOv2's x_norm)."""
        return self.norm(self.run_blocks(self.embed(x), 0, len(self.blocks)))

    def train(self, mode: bool = True) -> DinoVisionTransformer:
        return super().train(False)  # frozen: always in inference behaviour


# --- Hugging Face weights ------------------------------------------------------------------------

# (pattern on the HF name, our name, part index, number of parts). Parts are concatenated along dim 0:
# q, k, v -> attn.qkv; SwiGLU gate, up -> mlp.w12. Both the names on the Hub and the renamed ones
# transformers >= 5 uses in memory are accepted.
_HF_RULES: list[tuple[str, str, int, int]] = [
    (r"embeddings\.cls_token", "cls_token", 0, 1),
    (r"embeddings\.mask_token", "mask_token", 0, 1),
    (r"embeddings\.position_embeddings", "pos_embed", 0, 1),
    (r"embeddings\.register_tokens", "register_tokens", 0, 1),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1", 0, 1),
    (r"layernorm\.(weight|bias)", r"norm.\1", 0, 1),
    (r"encoder\.layer\.(\d+)\.(norm[12])\.(weight|bias)", r"blocks.\1.\2.\3", 0, 1),
    (r"encoder\.layer\.(\d+)\.attention\.(?:attention\.query|q_proj)\.(weight|bias)", r"blocks.\1.attn.qkv.\2", 0, 3),
    (r"encoder\.layer\.(\d+)\.attention\.(?:attention\.key|k_proj)\.(weight|bias)", r"blocks.\1.attn.qkv.\2", 1, 3),
    (r"encoder\.layer\.(\d+)\.attention\.(?:attention\.value|v_proj)\.(weight|bias)", r"blocks.\1.attn.qkv.\2", 2, 3),
    (r"encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2", 0, 1),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma", 0, 1),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3", 0, 1),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.w12.\2", 0, 1),
    (r"encoder\.layer\.(\d+)\.mlp\.gate_proj\.(weight|bias)", r"blocks.\1.mlp.w12.\2", 0, 2),
    (r"encoder\.layer\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"blocks.\1.mlp.w12.\2", 1, 2),
    (r"encoder\.layer\.(\d+)\.mlp\.(?:weights_out|down_proj)\.(weight|bias)", r"blocks.\1.mlp.w3.\2", 0, 1),
]
_HF_COMPILED = [(re.compile(p), t, i, n) for p, t, i, n in _HF_RULES]


def is_hf_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return any(k.removeprefix("dinov2.").startswith(("embeddings.", "encoder.layer.")) for k in state)


def convert_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face Dinov2Model / Dinov2WithRegistersModel tensors under the official DINOv2 names."""
    parts: dict[str, list[torch.Tensor | None]] = {}
    for key, value in state.items():
        name = key.removeprefix("dinov2.")
        for pattern, target, index, count in _HF_COMPILED:
            match = pattern.fullmatch(name)
            if match:
                slots = parts.setdefault(match.expand(target), [None] * count)
                if len(slots) != count or slots[index] is not None:
                    raise WeightsError(f"Hugging Face weights: {key!r} maps onto {match.expand(target)!r} twice")
                slots[index] = value
                break
        else:
            raise WeightsError(f"Hugging Face weights: no DINOv2 equivalent for {key!r}")
    out = {}
    for name, slots in parts.items():
        if any(s is None for s in slots):
            raise WeightsError(f"Hugging Face weights: {name!r} is incomplete (a q/k/v or gate/up part is missing)")
        out[name] = slots[0] if len(slots) == 1 else torch.cat(slots, dim=0)
    return out
