"""What the FoL++ local branch costs at encode time, per backend: the shipped lite0-nordland heads
alone vs the same heads with the lite0-nordland-local branch (one backbone pass for both outputs).

Prints batch-1 latency (median / p95 of ``encode`` vs ``encode_local`` on real corridor images,
preprocessing, bit packing and patch selection included) and their ratio, each pair measured back
to back in one run; backends: torch and ONNX Runtime here, TensorRT where it is installed with a GPU.

Usage: .venv/bin/python bench/local_encoder.py [--images 40] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vpr_core.data.images import list_images, read_rgb  # noqa: E402
from vpr_core.engine import EncoderConfig, create_encoder  # noqa: E402
from vpr_core.engine.local_engines import create_local_encoder  # noqa: E402

DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))
HEADS = REPO / "checkpoints" / "lite0-nordland"
BRANCH = REPO / "checkpoints" / "lite0-nordland-local"


def latencies_ms(encode, images: list[np.ndarray]) -> np.ndarray:
    encode(images[:1])  # warm-up: first-call allocations
    out = []
    for image in images:
        start = time.perf_counter()
        encode([image])
        out.append(time.perf_counter() - start)
    return np.asarray(out) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="backend threads (0 = the library's default)")
    args = parser.parse_args()
    images = [read_rgb(p) for p in list_images(DATA / "corridor" / "query")[: args.images]]
    backends = ["torch", "onnxruntime"]
    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        backends.append("tensorrt")
    print(f"date {datetime.date.today()}, {os.cpu_count()} cores, threads={args.threads or 'default'}, "
          f"{len(images)} corridor images {images[0].shape[1]}x{images[0].shape[0]}, batch 1")
    print("| backend | global only ms p50 / p95 | with local branch ms p50 / p95 | ratio (p50) |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as cache:
        for backend in backends:
            config = EncoderConfig(checkpoint=str(HEADS), backend=backend, threads=args.threads, cache_dir=cache,
                                   device="cuda" if backend == "tensorrt" else "cpu")
            plain = create_encoder(config)
            local = create_local_encoder(config, BRANCH)
            a = latencies_ms(plain.encode, images)
            b = latencies_ms(local.encode_local, images)
            print(f"| {backend} | {np.median(a):.1f} / {np.percentile(a, 95):.1f} | "
                  f"{np.median(b):.1f} / {np.percentile(b, 95):.1f} | {np.median(b) / np.median(a):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
