"""Encoding every frame of a source in batches, timing only the encoder (image decoding excluded)."""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from vpr_core.data import FrameSource
from vpr_core.engine import Encoder
from vpr_core.model.local_branch import LocalEncoder
from vpr_core.search.local_rerank import LocalFeatures

ENCODE_BATCH = 32  # images read and handed to the encoder at once; it splits them by max_batch


def encode_source(source: FrameSource, encoder: Encoder, label: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Codes and descriptors of every frame, in source order, with the seconds spent inside
    ``encode`` (image decoding excluded, so the figure is the encoder's own cost)."""
    codes, desc, _, seconds = encode_source_with_local(source, encoder, label)
    return codes, desc, seconds


def encode_source_with_local(
    source: FrameSource, encoder: Encoder | LocalEncoder, label: str
) -> tuple[np.ndarray, np.ndarray, LocalFeatures | None, float]:
    """Codes, descriptors and (for a LocalEncoder) kept local patches of every frame, in source
    order, with the seconds spent inside ``encode`` (image decoding excluded, so the figure is the
    encoder's own cost)."""
    codes, descs, locals_, seconds = [], [], [], 0.0
    batch: list[np.ndarray] = []

    def flush() -> None:
        nonlocal seconds
        start = time.perf_counter()
        out = encoder.encode_local(batch) if isinstance(encoder, LocalEncoder) else encoder.encode(batch)
        seconds += time.perf_counter() - start
        codes.append(out[0])
        descs.append(out[1])
        if len(out) == 3:
            locals_.append(out[2])
        batch.clear()

    with tqdm(total=len(source), desc=f"encode {label}", unit="img", leave=False) as bar:
        for frame in source:
            batch.append(frame.rgb)
            if len(batch) == ENCODE_BATCH:
                flush()
                bar.update(ENCODE_BATCH)
        if batch:
            bar.update(len(batch))
            flush()
    local = LocalFeatures(*(np.concatenate([getattr(part, f) for part in locals_]) for f in ("desc", "rel", "pos"))) \
        if locals_ else None
    return np.concatenate(codes), np.concatenate(descs), local, seconds
