"""FoL++ local branch: per-patch reliability and dense local descriptors on the frozen backbone's map.

Why a separate branch with its own checkpoint: global heads and maps already exist and must keep
working unchanged; the local branch only reads the same backbone features (so it can be trained on
the same feature cache) and adds a third, optional search stage. Its checkpoint records the backbone
digest it was trained on, and loading refuses another backbone.

What it computes from a CNN feature map [N, C, h, w] (Lite0's 1280-channel head map, 8 x 10 at
240 x 320):
  multi-scale input  each location's feature next to its 3 x 3 neighbourhood mean (the context a
                     single location lacks), each L2-normalised per location;
  reliability        1x1 conv -> ReLU -> 1x1 conv -> sigmoid: one value in (0, 1) per patch, meant to
                     be low where matches are not repeatable (occluders, dynamic objects, sky);
  local descriptor   1x1 conv to ``dim`` channels, L2-normalised per patch.
Patches are numbered row-major (index = y * w + x). ``select_patches`` keeps the top
``keep_fraction`` by reliability, which is what a map stores per place.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vpr_core.choices import TORCH
from vpr_core.fsio import atomic_write, atomic_write_json
from vpr_core.local_features import LocalFeatures
from vpr_core.model.preprocess import preprocess
from vpr_core.model.state import WeightsError, check_state_dict, read_state_dict, tensor_digest
from vpr_core.model.vpr_model import VPRModel, pack_codes

FORMAT = "vpr_ros.local_branch"
FORMAT_VERSION = 1
CONFIG_FILE = "local_branch.json"
WEIGHTS_FILE = "local_branch.safetensors"


@dataclass(frozen=True)
class LocalBranchConfig:
    """Shape of the local branch; ``keep_fraction`` is how many patches per image are kept for
    matching and storage (FoL++ discriminative region guidance; 40 % by default)."""

    in_channels: int = 1280
    dim: int = 128
    hidden: int = 64
    keep_fraction: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.in_channels, self.dim, self.hidden) < 1:
            raise ValueError(f"local branch: in_channels, dim and hidden must be >= 1; got {self}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"local branch: keep_fraction must be in (0, 1], got {self.keep_fraction}")

    def kept(self, patches: int) -> int:
        """Patches kept out of ``patches`` (at least one)."""
        return max(1, math.ceil(self.keep_fraction * patches - 1e-9))


class LocalBranch(nn.Module):
    def __init__(self, config: LocalBranchConfig) -> None:
        super().__init__()
        self.config = config
        width = 2 * config.in_channels
        self.reliability = nn.Sequential(nn.Conv2d(width, config.hidden, 1), nn.ReLU(inplace=True),
                                         nn.Conv2d(config.hidden, 1, 1))
        self.descriptor = nn.Conv2d(width, config.dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Seeded start: an orthogonal descriptor projection (an approximate isometry of the
        normalised backbone features, so untrained local descriptors already match like the backbone)
        and a reliability of 0.5 everywhere (last layer zero), so selection starts unbiased."""
        generator = torch.Generator().manual_seed(self.config.seed)
        with torch.no_grad():
            w = torch.empty(self.descriptor.weight.shape[:2])
            nn.init.orthogonal_(w, generator=generator)
            self.descriptor.weight.copy_(w[:, :, None, None])
            self.descriptor.bias.zero_()
            first = self.reliability[0]
            bound = 1.0 / math.sqrt(first.weight.shape[1])
            first.weight.copy_(torch.empty_like(first.weight).uniform_(-bound, bound, generator=generator))
            first.bias.zero_()
            self.reliability[2].weight.zero_()
            self.reliability[2].bias.zero_()

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local descriptors [N, h*w, dim] unit, reliability [N, h*w] in (0, 1)) from [N, C, h, w]."""
        if features.ndim != 4 or features.shape[1] != self.config.in_channels:
            raise ValueError(f"local branch expects a feature map [N, {self.config.in_channels}, h, w]; "
                             f"got shape {tuple(features.shape)}")
        x = multiscale(features.to(self.descriptor.weight.dtype))
        rel = torch.sigmoid(self.reliability(x)).flatten(1)
        desc = F.normalize(self.descriptor(x).flatten(2).transpose(1, 2), dim=-1)
        return desc, rel


def multiscale(features: torch.Tensor) -> torch.Tensor:
    """[N, 2C, h, w]: each location's feature and its 3 x 3 neighbourhood mean, each L2-normalised
    per location and scaled by 1/sqrt(2), so the result is a unit vector per location (its inner
    products are cosines, which the pseudo-correspondences threshold)."""
    context = F.avg_pool2d(features, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([F.normalize(features, dim=1), F.normalize(context, dim=1)], dim=1) / math.sqrt(2.0)


def patch_positions(grid: tuple[int, int]) -> np.ndarray:
    """int16 [h*w, 2]: (row, column) of each patch in row-major patch order."""
    h, w = grid
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.int16)


def select_patches(desc: np.ndarray, rel: np.ndarray, grid: tuple[int, int], keep: int,
                   saliency: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``keep`` most reliable patches of each image, most reliable first.

    ``saliency`` [N, P] (an aggregator's per-patch weight, where one exists) is fused with the
    reliability by a geometric mean before ranking; the stored reliability stays the branch's own.
    Returns (descriptors float16 [N, keep, dim], reliability float16 [N, keep], positions int16
    [N, keep, 2]).
    """
    n, p, _ = desc.shape
    if rel.shape != (n, p) or p != grid[0] * grid[1]:
        raise ValueError(f"descriptors {desc.shape}, reliability {rel.shape} and grid {grid} disagree")
    if not 1 <= keep <= p:
        raise ValueError(f"keep must be in [1, {p}], got {keep}")
    rank = rel if saliency is None else np.sqrt(np.clip(rel, 0, None) * np.clip(saliency, 0, None))
    order = np.argsort(-rank, axis=1, kind="stable")[:, :keep]
    positions = patch_positions(grid)
    return (np.take_along_axis(desc, order[:, :, None], 1).astype(np.float16),
            np.take_along_axis(rel, order, 1).astype(np.float16), positions[order])


class LocalEncoder:
    """Global codes and descriptors plus the kept local patches, from one backbone pass.

    This class runs the torch model (the reference every backend is checked against); the ONNX
    Runtime and TensorRT variants (vpr_core/engine/local_engines.py) replace ``_run`` only, so
    preprocessing, batching, code packing and patch selection are the same for all of them. It also
    honours the ``Encoder`` contract (``encode`` -> codes, descriptors), so the localizer can hold it
    in place of a global-only encoder and still run the backbone once per frame.
    """

    backend = TORCH
    batch_dependent = False  # the local branch reads CNN feature maps, never an InteractHead

    def __init__(self, model: VPRModel, branch: LocalBranch, *, max_batch: int = 16) -> None:
        if model.backbone.kind != "cnn":
            raise ValueError(f"the local branch reads a CNN feature map; model {model.config.preset!r} has a "
                             f"{model.backbone.kind} backbone")
        check_branch_fits(branch, model)
        self.model = model.eval()
        self.branch = branch.eval()
        self.model_config = model.config
        self.max_batch = max_batch
        self.fingerprint = model.fingerprint()
        self.local_fingerprint = branch_fingerprint(branch)
        self.bits = int(model.config.bits)
        self.dim = int(model.config.dim)
        self.grid: tuple[int, int] | None = None

    @property
    def keep(self) -> int:
        if self.grid is None:
            raise RuntimeError("the patch grid is known after the first encode")
        return self.branch.config.kept(self.grid[0] * self.grid[1])

    def encode(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The global outputs only (the ``Encoder`` contract)."""
        codes, desc, _ = self.encode_local(images)
        return codes, desc

    def encode_local(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, LocalFeatures]:
        """(codes uint8 [N, bits/8], descriptors float32 [N, D] unit, kept patches: descriptors
        float16 [N, K, dim], reliability float16 [N, K], positions int16 [N, K, 2]) for RGB images."""
        codes, descs, local = [], [], []
        for start in range(0, len(images), self.max_batch):
            chunk = list(images[start:start + self.max_batch])
            same = all(im.shape == chunk[0].shape for im in chunk)
            x = preprocess(np.stack(chunk), self.model.config) if same else np.concatenate(
                [preprocess(im[None], self.model.config) for im in chunk])
            logits, desc, ldesc, rel = self._run(np.ascontiguousarray(x))
            codes.append(pack_codes(logits))
            desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), np.finfo(np.float32).tiny)
            descs.append(desc.astype(np.float32, copy=False))
            local.append(select_patches(ldesc, rel, self.grid, self.keep))
        return (np.concatenate(codes), np.concatenate(descs),
                LocalFeatures(*(np.concatenate([part[i] for part in local]) for i in range(3))))

    @torch.inference_mode()
    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(binary logits, descriptors, every patch's local descriptor, reliability) as float32
        arrays for a preprocessed batch; sets ``grid``."""
        device = next(self.branch.parameters()).device
        features = self.model.backbone_features(torch.from_numpy(batch).to(device))
        logits, desc = self.model.heads(features)
        self.grid = (int(features.shape[2]), int(features.shape[3]))
        ldesc, rel = self.branch(features)
        return tuple(t.float().cpu().numpy() for t in (logits, desc, ldesc, rel))


# ---- checkpoint ---------------------------------------------------------------------------------
def check_branch_fits(branch: LocalBranch, model: VPRModel) -> None:
    channels = model.backbone.out_channels if model.backbone.kind == "cnn" else model.backbone.embed_dim
    if branch.config.in_channels != channels:
        raise ValueError(f"local branch reads {branch.config.in_channels} channels; model "
                         f"{model.config.preset!r} gives {channels}")


def branch_fingerprint(branch: LocalBranch) -> str:
    """sha256 of the branch config and its tensors: equal iff local descriptors are interchangeable."""
    text = json.dumps(asdict(branch.config), sort_keys=True) + tensor_digest(branch.state_dict())
    return hashlib.sha256(text.encode()).hexdigest()


def save_local_branch(branch: LocalBranch, path: str | Path, *, backbone_digest: str,
                      extra: dict | None = None) -> None:
    """``path/local_branch.safetensors`` then ``path/local_branch.json`` (config, backbone digest,
    tensor digest, fingerprint, and ``extra`` such as training figures), each written atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in branch.state_dict().items()}
    description = {"format": FORMAT, "version": FORMAT_VERSION, "config": asdict(branch.config),
                   "backbone_digest": backbone_digest, "weights_digest": tensor_digest(state),
                   "fingerprint": branch_fingerprint(branch), **({"extra": extra} if extra else {})}
    atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    atomic_write_json(path / CONFIG_FILE, description, indent=2, sort_keys=True)


def load_local_branch(path: str | Path, model: VPRModel | None = None) -> LocalBranch:
    """The branch saved at ``path``; with ``model``, refuses a branch trained on another backbone."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    try:
        description = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{config_path} is not a readable local branch description: {exc}") from exc
    if description.get("format") != FORMAT or description.get("version") != FORMAT_VERSION:
        raise WeightsError(f"{config_path} is not a {FORMAT} v{FORMAT_VERSION} description")
    branch = LocalBranch(LocalBranchConfig(**description["config"]))
    state = read_state_dict(path / WEIGHTS_FILE)
    check_state_dict(branch.state_dict(), state, "local branch", path / WEIGHTS_FILE)
    if tensor_digest(state) != description.get("weights_digest"):
        raise WeightsError(f"{path / WEIGHTS_FILE} does not hold the tensors recorded in {config_path}")
    branch.load_state_dict(state, strict=True)
    if model is not None:
        if model.backbone_digest() != description.get("backbone_digest"):
            raise WeightsError(f"local branch {path} was trained on another backbone (digest "
                               f"{str(description.get('backbone_digest'))[:12]}..., model has "
                               f"{model.backbone_digest()[:12]}...)")
        check_branch_fits(branch, model)
    return branch.eval()
