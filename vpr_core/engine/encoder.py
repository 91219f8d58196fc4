"""The ``Encoder`` contract: uint8 RGB images in, packed binary codes and L2-normalised descriptors out.

Everything that must be identical across backends lives here, once: input checks, preprocessing (the
model package's ``preprocess``), splitting into batches of at most ``max_batch``, packing the codes
and the final float32 L2 normalisation. A backend only turns a preprocessed float32 batch into the
two raw model outputs, so backends can differ in speed but not in what they compute around the net.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import numpy as np

from vpr_core.engine.config import EncoderConfig
from vpr_core.model import ModelConfig, pack_codes
from vpr_core.model.preprocess import preprocess


class Encoder(ABC):
    """One model behind one backend; ``encode`` is the only call the node and the offline tools need."""

    backend: ClassVar[str]

    def __init__(self, config: EncoderConfig, model_config: ModelConfig) -> None:
        self.config = config
        self.model_config = model_config
        # The map database stores this and refuses maps built by another encoder.
        self.fingerprint: str = model_config.fingerprint()
        self.bits: int = int(model_config.bits)
        self.dim: int = int(model_config.dim)
        self.batch_dependent: bool = bool(model_config.batch_dependent)
        self.input_hw: tuple[int, int] = tuple(model_config.image_size)

    def encode(self, images: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Codes uint8 [N, bits/8] and descriptors float32 [N, D] (unit length) for N RGB uint8 images.

        ``images`` is a stacked [N, H, W, 3] array or a list of [H, W, 3] arrays of any sizes. Batches
        larger than ``max_batch`` are split; for a batch-dependent model that changes the result, so
        callers of such models pass at most ``max_batch`` images.
        """
        batch = self.preprocess(images)
        step = self.config.max_batch
        logits, descs = [], []
        for start in range(0, len(batch), step):
            raw_logits, raw_desc = self._infer(np.ascontiguousarray(batch[start:start + step]))
            logits.append(np.asarray(raw_logits, dtype=np.float32))
            descs.append(np.asarray(raw_desc, dtype=np.float32))
        logit = np.concatenate(logits)
        desc = np.concatenate(descs)
        self._check_outputs(logit, desc, len(batch))
        # Renormalised in float32 here because fp16/bf16 backends return descriptors whose norm is
        # off by their rounding error, and the search assumes exactly unit vectors.
        desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        return pack_codes(logit), desc

    def preprocess(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """float32 [N, 3, h, w]: the one preprocessing every backend shares."""
        arrays = check_images(images)
        if isinstance(arrays, np.ndarray):
            return preprocess(arrays, self.model_config)
        shapes = {a.shape for a in arrays}
        if len(shapes) == 1:
            return preprocess(np.stack(arrays), self.model_config)
        return np.concatenate([preprocess(a[None], self.model_config) for a in arrays])

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(binary logits [n, bits], descriptors [n, D]) for a preprocessed batch of n <= max_batch."""

    def _check_outputs(self, logits: np.ndarray, desc: np.ndarray, n: int) -> None:
        if logits.shape != (n, self.bits) or desc.shape != (n, self.dim):
            raise RuntimeError(
                f"{self.backend} backend returned logits {logits.shape} and descriptors {desc.shape}; "
                f"expected ({n}, {self.bits}) and ({n}, {self.dim}) for model {self.fingerprint}"
            )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(preset={self.config.preset!r}, checkpoint={self.config.checkpoint!r}, "
                f"precision={self.config.precision!r}, fingerprint={self.fingerprint!r})")


def check_images(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """The images as given, or a ValueError that names what is wrong (the caller's data is not touched)."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            hint = " (a single image: pass images[None])" if images.ndim == 3 else ""
            raise ValueError(f"images must be a [N, H, W, 3] array or a list of [H, W, 3] arrays; "
                             f"got an array of shape {images.shape}{hint}")
        if images.shape[0] == 0:
            raise ValueError("images is empty: nothing to encode")
        _check_one(images[0], "images", images.shape[1:], images.dtype)
        return images
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise ValueError(f"images must be a numpy array or a list of arrays; got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("images is empty: nothing to encode")
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            raise ValueError(f"images[{i}] is a {type(image).__name__}, not a numpy array")
        _check_one(image, f"images[{i}]", image.shape, image.dtype)
    return list(images)


def _check_one(image: np.ndarray, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB; got dtype {dtype}")
    if len(shape) != 3:
        raise ValueError(f"{name} must be [H, W, 3]; got shape {shape}")
    if shape[2] != 3:
        raise ValueError(f"{name} must have 3 channels (RGB); got {shape[2]} in shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} has no pixels: shape {shape}")
