"""Backbone features computed once and kept on disk (float16, memory mapped).

The backbone is frozen, so what it outputs for an image never changes during training; computing it
once turns an epoch into a pass over the small heads only (SelaVPR++'s memory-efficient adaptation).
A cache is keyed by the backbone (name and tensor digest), the input size and normalisation, the
image list (names and sizes) and the augmentation: change any of them and a new cache is built
instead of silently reusing a stale one. ``meta.json`` is written last, so an interrupted build is
never mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from vpr_core.data.images import read_rgb
from vpr_core.model import VPRModel
from vpr_core.model.preprocess import preprocess

FEATURES_FILE = "features.npy"
META_FILE = "meta.json"


@dataclass(frozen=True)
class AugmentConfig:
    """Extra cached views per image: view 0 is always the plain image, views 1.. are jittered.

    Photometric jitter and a mild crop (the scale kept) stand in for the appearance and framing
    changes between traversals; they are applied before preprocessing so each view is cached once.
    """

    views: int = 1
    brightness: float = 0.2
    contrast: float = 0.2
    crop: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"augment.views must be >= 1, got {self.views}")
        if not 0.0 < self.crop <= 1.0:
            raise ValueError(f"augment.crop must be in (0, 1], got {self.crop}")


@dataclass
class FeatureCache:
    """features[view, image] -> the backbone's output for that image (float16 memory map)."""

    path: Path
    features: np.ndarray          # [views, N, ...] float16, memory mapped read-only
    names: list[str]

    @property
    def views(self) -> int:
        return int(self.features.shape[0])

    def __len__(self) -> int:
        return int(self.features.shape[1])

    def batch(self, rows: np.ndarray, views: np.ndarray | None = None) -> torch.Tensor:
        """Features of images ``rows`` (view 0, or one view per row) as a float16 tensor."""
        rows = np.asarray(rows, dtype=np.int64)
        views = np.zeros_like(rows) if views is None else np.asarray(views, dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.features[views, rows]))


def model_key(model: VPRModel, augment: AugmentConfig) -> dict:
    """What decides the cached values besides the images: the backbone, its input and the views."""
    cfg = model.config
    return {
        "backbone": cfg.backbone,
        "backbone_digest": model.backbone_digest(),
        "image_size": list(cfg.image_size),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "augment": asdict(augment),
    }


def cache_key(model: VPRModel, files: Sequence[Path], root: Path, augment: AugmentConfig) -> dict:
    """Everything that decides the cached values of image files; its digest names the cache directory."""
    listing = hashlib.sha256()
    for f in files:
        listing.update(f"{Path(f).relative_to(root).as_posix()}|{Path(f).stat().st_size}\n".encode())
    return {**model_key(model, augment), "images": len(files), "image_list_digest": listing.hexdigest()}


def build_feature_cache(model: VPRModel, files: Sequence[Path], root: Path, cache_root: Path, name: str, *,
                        augment: AugmentConfig = AugmentConfig(), batch_size: int = 32) -> FeatureCache:
    """The cache of ``files`` (paths under ``root``) for ``model``'s backbone, built if missing or stale."""
    files = [Path(f) for f in files]
    if not files:
        raise ValueError(f"feature cache {name!r}: no image files given")
    key = cache_key(model, files, Path(root), augment)
    cached = open_cache(cache_root, name, key)
    if cached is not None:
        return cached
    names = [f.relative_to(root).as_posix() for f in files]
    return write_cache(model, key, cache_root, name, names, (read_rgb(f) for f in files), augment=augment,
                       batch_size=batch_size)


def cache_path(cache_root: Path, name: str, key: dict) -> Path:
    return Path(cache_root) / f"{name}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}"


def open_cache(cache_root: Path, name: str, key: dict) -> FeatureCache | None:
    """The complete cache built under ``key``, or None when there is none (or a stale one)."""
    path = cache_path(cache_root, name, key)
    meta_path = path / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return _open(path, meta)
    return None


def write_cache(model: VPRModel, key: dict, cache_root: Path, name: str, names: Sequence[str],
                images: Iterable[np.ndarray], *, augment: AugmentConfig = AugmentConfig(),
                batch_size: int = 32) -> FeatureCache:
    """Runs the backbone over ``images`` (one per name, in order, read lazily) and writes the cache
    under ``key``; ``key`` must decide the images (see ``cache_key``)."""
    names = list(names)
    if not names:
        raise ValueError(f"feature cache {name!r}: no image given")
    path = cache_path(cache_root, name, key)
    path.mkdir(parents=True, exist_ok=True)
    (path / META_FILE).unlink(missing_ok=True)
    rng = np.random.default_rng(augment.seed)
    model.eval()
    out = None
    done = 0
    source = iter(images)
    with tqdm(total=len(names) * augment.views, desc=f"caching {name}", unit="img") as bar:
        while batch_images := list(itertools.islice(source, batch_size)):
            if done + len(batch_images) > len(names):
                raise ValueError(f"feature cache {name!r}: more images than the {len(names)} names given")
            for view in range(augment.views):
                feats = model.backbone_features(torch.from_numpy(_preprocessed(batch_images, view, augment, rng,
                                                                               model)))
                if out is None:   # the first batch tells the feature shape
                    shape = (augment.views, len(names), *feats.shape[1:])
                    out = np.lib.format.open_memmap(path / FEATURES_FILE, mode="w+", dtype=np.float16, shape=shape)
                out[view, done:done + len(batch_images)] = feats.numpy().astype(np.float16)
                bar.update(len(batch_images))
            done += len(batch_images)
    if done != len(names):
        raise ValueError(f"feature cache {name!r}: {done} images for {len(names)} names")
    out.flush()
    del out
    meta = {"key": key, "shape": list(shape), "names": names}
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(path / META_FILE)
    return _open(path, meta)


def _preprocessed(images: list[np.ndarray], view: int, augment: AugmentConfig, rng: np.random.Generator,
                  model: VPRModel) -> np.ndarray:
    views = [_view(im, view, augment, rng) for im in images]
    if _same_shape(views):
        return preprocess(np.stack(views), model.config)
    return np.concatenate([preprocess(im[None], model.config) for im in views])


def _open(path: Path, meta: dict) -> FeatureCache:
    features = np.load(path / FEATURES_FILE, mmap_mode="r", allow_pickle=False)
    if list(features.shape) != meta["shape"] or features.dtype != np.float16:
        raise ValueError(f"feature cache {path}: {FEATURES_FILE} has shape {features.shape} {features.dtype}, "
                         f"{META_FILE} says {meta['shape']} float16; delete the directory to rebuild it")
    return FeatureCache(path, features, list(meta["names"]))


def _same_shape(images: list[np.ndarray]) -> bool:
    return all(im.shape == images[0].shape for im in images)


def _view(image: np.ndarray, view: int, augment: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    if view == 0:
        return image
    h, w = image.shape[:2]
    scale = rng.uniform(augment.crop, 1.0)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = cv2.resize(image[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    gain = 1.0 + rng.uniform(-augment.contrast, augment.contrast)
    shift = 255.0 * rng.uniform(-augment.brightness, augment.brightness)
    mean = crop.mean()
    return np.clip((crop - mean) * gain + mean + shift, 0, 255).astype(np.uint8)
