"""Encoder speed per backend: batch-1 latency (p50/p95) and images/s at batch 1, 4 and 16.

Models: lite0 and lite0-mix (real backbone weights), ViT-S/14 @224 (the random-weight test preset) and ViT-B/14 @322
(SelaVPR++-B layout with seeded random weights: speed does not depend on the weights). Backends:
every one available here (torch and ONNX Runtime on the CPU; on a GPU also torch fp16 with and
without CUDA graphs, ONNX Runtime CUDA and TensorRT). Timings are of ``Encoder.encode`` on real
images (rtabmap_loop, 512x384), so preprocessing and bit packing are included, as the node sees them.
The ratios onnxruntime/torch come from the same run, each cell measured back to back.

Usage: .venv/bin/python bench/encoder.py [--quick] [--models lite0,vit-s14,vit-b14] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vpr_core.data.images import list_images, read_rgb  # noqa: E402
from vpr_core.engine import BACKENDS, EncoderConfig  # noqa: E402
from vpr_core.engine.model_source import load_model  # noqa: E402

DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))
MODELS = {  # label -> (preset, backbone weights)
    "lite0": ("lite0", ""),
    "lite0-mix": ("lite0-mix", ""),
    "vit-s14": ("vits14-test", ""),
    "vit-b14": ("selavpr++-b", "random"),
}
BATCHES = (1, 4, 16)


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    backend: str
    overrides: dict


def variants(threads: int) -> list[Variant]:
    """Every backend configuration this machine can run."""
    cpu = {"device": "cpu", "threads": threads}
    found = [Variant("torch cpu fp32", "torch", cpu), Variant("onnxruntime cpu fp32", "onnxruntime", cpu)]
    if torch.cuda.is_available():
        found += [Variant("torch cuda fp32", "torch", {"device": "cuda"}),
                  Variant("torch cuda fp16", "torch", {"device": "cuda", "precision": "fp16"}),
                  Variant("torch cuda fp16 graphs", "torch",
                          {"device": "cuda", "precision": "fp16", "cuda_graphs": True})]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            found += [Variant("onnxruntime cuda fp32", "onnxruntime", {"device": "cuda"}),
                      Variant("onnxruntime cuda fp16", "onnxruntime", {"device": "cuda", "precision": "fp16"})]
        if importlib.util.find_spec("tensorrt") is not None:
            found += [Variant("tensorrt fp32", "tensorrt", {"device": "cuda"}),
                      Variant("tensorrt fp16", "tensorrt", {"device": "cuda", "precision": "fp16"})]
    return found


def timed_calls(encoder, images: list[np.ndarray], batch: int, min_calls: int, budget_s: float) -> list[float]:
    """Seconds per encode() call of ``batch`` images, until both min_calls and budget_s are reached."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < budget_s:
        chunk = [images[(len(times) * batch + i) % len(images)] for i in range(batch)]
        t = time.perf_counter()
        encoder.encode(chunk)
        times.append(time.perf_counter() - t)
    return times


def bench_model(label: str, args: argparse.Namespace, images: list[np.ndarray], chosen: list[Variant]) -> dict:
    preset, weights = MODELS[label]
    base = EncoderConfig(preset=preset, backbone_weights=weights, max_batch=max(BATCHES), cache_dir=args.cache_dir)
    model = load_model(base)
    encoders = {}
    for variant in chosen:
        config = dataclasses.replace(base, backend=variant.backend, **variant.overrides)
        encoders[variant.label] = importlib.import_module(BACKENDS[variant.backend][0]).create(config, model=model)
    results = {name: {} for name in encoders}
    min_latency_calls, min_batch_calls, budget = (5, 1, 2.0) if args.quick else (20, 3, 10.0)
    for batch in BATCHES:
        for name, encoder in encoders.items():  # each cell back to back for every backend
            if batch == 1:
                timed_calls(encoder, images, 1, 2, 0.0)  # warm-up: first calls allocate
                times = timed_calls(encoder, images, 1, min_latency_calls, budget)
                results[name]["p50_ms"] = float(np.percentile(times, 50) * 1e3)
                results[name]["p95_ms"] = float(np.percentile(times, 95) * 1e3)
            else:
                # Warm up a new batch shape unless one call is known to take longer than the budget.
                if results[name]["p50_ms"] * batch / 1e3 < budget:
                    timed_calls(encoder, images, batch, 1, 0.0)
                times = timed_calls(encoder, images, batch, min_batch_calls, budget)
            results[name][f"ips_{batch}"] = batch * len(times) / sum(times)
        print(f"  {label}: batch {batch} done", file=sys.stderr, flush=True)
    return results


def print_table(all_results: dict[str, dict]) -> None:
    header = "| model | backend | p50 ms b1 | p95 ms b1 | " + " | ".join(f"img/s b{b}" for b in BATCHES) + " |"
    print(header)
    print("|" + "---|" * (4 + len(BATCHES)))
    for model, results in all_results.items():
        for name, r in results.items():
            cells = " | ".join(f"{r[f'ips_{b}']:.1f}" for b in BATCHES)
            print(f"| {model} | {name} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {cells} |")
    print()
    print("onnxruntime / torch (same device and precision, same run; throughput > 1 and latency < 1 = "
          "onnxruntime faster):")
    for model, results in all_results.items():
        for name, r in results.items():
            if not name.startswith("onnxruntime"):
                continue
            torch_name = name.replace("onnxruntime", "torch", 1)
            if torch_name not in results:
                continue
            t = results[torch_name]
            ratios = ", ".join(f"b{b} {r[f'ips_{b}'] / t[f'ips_{b}']:.2f}" for b in BATCHES)
            print(f"  {model} {name.split(' ', 1)[1]}: p50 latency {r['p50_ms'] / t['p50_ms']:.2f}; "
                  f"images/s {ratios}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per cell (about 2 s instead of 10 s)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--backends", default="", help="only variants whose label contains one of these words")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for both torch and onnxruntime (default: all cores)")
    parser.add_argument("--cache-dir", default="", help="ONNX/engine cache (default: the encoder's)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    chosen = variants(args.threads)
    if args.backends:
        words = args.backends.split(",")
        chosen = [v for v in chosen if any(w in v.label for w in words)]
    folder = DATA / "rtabmap_loop" / "images"
    if not folder.is_dir():
        parser.error(f"the images are missing: expected {folder} (set VPR_DATA to the data folder)")
    images = [read_rgb(p) for p in list_images(folder)[:16]]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"# encoder benchmark {datetime.date.today().isoformat()}: {cpu}, {os.cpu_count()} logical CPUs, "
          f"GPU {gpu}; torch {torch.__version__}, onnxruntime {ort.__version__}; {args.threads} threads; "
          f"load average at start {os.getloadavg()[0]:.2f}; {'quick' if args.quick else 'full'} run; "
          f"images {images[0].shape[1]}x{images[0].shape[0]} from rtabmap_loop")
    all_results = {}
    start = time.perf_counter()
    for label in models:
        all_results[label] = bench_model(label, args, images, chosen)
    print_table(all_results)
    print(f"\n(wall time {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
