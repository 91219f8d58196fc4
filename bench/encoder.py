"""Encoder speed per backend and thread count: batch-1 latency (p50/p95), images/s at batch 1, 4 and
16, the model's MACs per image and the fraction of this machine's measured matrix-multiply peak.

Models: lite0, lite1 and lite2 (real backbone weights, GeM heads of the presets); lite0-fused, the
shipped default checkpoint checkpoints/lite0-fused (lite0 backbone, trained mixing heads and a GeM
branch), and lite0-mix, checkpoints/lite0-nordland (the same without the GeM branch), both also run
as INT8; ViT-S/14 @224
(the random-weight test preset) and ViT-B/14 @322 (SelaVPR++-B layout with seeded random weights:
speed does not depend on the weights). Backends: every one available here (torch and ONNX Runtime on
the CPU, ONNX Runtime INT8 for the trained checkpoints; on a GPU also torch fp16 with and without CUDA graphs, ONNX
Runtime CUDA and TensorRT). Timings are of ``Encoder.encode`` on real images (rtabmap_loop, 512x384),
so preprocessing and bit packing are included, as the node sees them.

Why the calls alternate: on a shared machine the load changes from second to second, so the encoders
of one model (every backend, precision and thread count) are called in turn within each round, the
order rotating every round, and the INT8/fp32 and thread-scaling ratios are medians of per-round
ratios: load hits both sides alike. torch encoders take their rounds separately, right after the
others for the same batch (their OpenMP workers spin after each call and would slow the next call),
so onnxruntime/torch is a ratio of medians. images/s is the batch over the median call time.

Roofline (bench/roofline.py): MACs per image are counted from the model's fp32 ONNX graph (Conv,
MatMul, Gemm; INT8 does the same MACs); achieved GMAC/s = MACs x images/s; the peak is a dense
1024^3 matrix multiply through ONNX Runtime at the same thread count, measured in the same run just
before and after that thread count's rows, the higher of the two (fp32 MatMul; int8 MatMulInteger
u8 x s8). fp32 rows (torch too) are divided by the fp32 peak, INT8 rows by the int8 one.

Usage: .venv/bin/python bench/encoder.py [--quick] [--models lite0,lite0-mix] [--threads 0,1,2]
       [--backends onnxruntime] [--calibration SPEC]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)
from roofline import PEAK_KINDS, count_macs_file, isa_flags, measure_peak  # noqa: E402  (bench/roofline.py)
from vpr_core.data.images import list_images, read_rgb  # noqa: E402
from vpr_core.engine import BACKENDS, Encoder, EncoderConfig  # noqa: E402
from vpr_core.engine.model_source import load_model  # noqa: E402
from vpr_core.engine.onnx_export import cached_onnx  # noqa: E402

DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))
# torch's thread count before any encoder changed it: what threads 0 (the library default) means for torch.
TORCH_DEFAULT_THREADS = torch.get_num_threads()
# INT8 calibration images: Corridor's database (reference) images, never the timed rtabmap_loop ones.
CALIBRATION = "vpr_bench:{data}/corridor?part=database"
BATCHES = (1, 4, 16)
INT8_PEAK = "int8 u8s8"  # the int8 peak INT8 rows are divided by (the library quantizes to u8 x s8)


@dataclasses.dataclass(frozen=True)
class Model:
    """A benched model: a preset or a checkpoint folder (relative to the repository); ``int8`` adds
    the ONNX Runtime INT8 row (presets with untrained heads are not worth calibrating)."""

    preset: str = ""
    checkpoint: str = ""
    backbone_weights: str = ""
    int8: bool = False


MODELS = {
    "lite0": Model("lite0"),
    "lite1": Model("lite1"),
    "lite2": Model("lite2"),
    "lite0-fused": Model(checkpoint="checkpoints/lite0-fused", int8=True),
    "lite0-mix": Model(checkpoint="checkpoints/lite0-nordland", int8=True),
    "vit-s14": Model("vits14-test"),
    "vit-b14": Model("selavpr++-b", backbone_weights="random"),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    backend: str
    overrides: dict


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long each cell runs: at least ``latency_rounds`` rounds at batch 1 and ``batch_rounds`` at
    larger batches, and at least ``seconds`` per encoder; ``peak_s`` per peak micro-benchmark."""

    latency_rounds: int
    batch_rounds: int
    seconds: float
    peak_s: float


Row = tuple[int, str]  # (thread count, variant label): one line of the speed table

QUICK = Budget(latency_rounds=5, batch_rounds=1, seconds=2.0, peak_s=0.3)
FULL = Budget(latency_rounds=20, batch_rounds=3, seconds=10.0, peak_s=2.0)


def variants(threads: int, int8: bool, calibration: str, gpu: bool) -> list[Variant]:
    """Every backend configuration this machine can run for one model at ``threads``; the GPU ones only
    when ``gpu`` (they do not depend on the CPU thread count, so they are built once)."""
    cpu = {"device": "cpu", "threads": threads}
    found = [Variant("torch cpu fp32", "torch", cpu), Variant("onnxruntime cpu fp32", "onnxruntime", cpu)]
    if int8:
        found.append(Variant("onnxruntime cpu int8", "onnxruntime", {**cpu, "precision": "int8",
                                                                    "calibration": calibration}))
    if gpu and torch.cuda.is_available():
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


def parse_threads(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]: distinct thread counts >= 0 in the given order; 0 is the library
    default, the node's ``model.threads: 0`` (ONNX Runtime: one thread per physical core, pinned to
    cores; torch: its own default)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"thread counts must be integers, got {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"give one or more thread counts >= 0, e.g. 1,2; got {text!r}")
    return list(dict.fromkeys(counts))


def thread_label(threads: int) -> str:
    return "0 (default)" if threads == 0 else str(threads)


def encode(encoder: Encoder, images: list[np.ndarray]) -> float:
    """Seconds of one ``encode`` call. torch has one process-wide pool, so a torch encoder gets its
    thread count back before each call (outside the timing); its backend leaves the pool alone for 0."""
    if encoder.backend == "torch":
        torch.set_num_threads(encoder.config.threads or TORCH_DEFAULT_THREADS)
    start = time.perf_counter()
    encoder.encode(images)
    return time.perf_counter() - start


def timed_rounds(encoders: dict[Row, Encoder], images: list[np.ndarray], batch: int, min_rounds: int,
                 budget_s: float) -> dict[Row, list[float]]:
    """Seconds per ``encode`` call of ``batch`` images for every encoder, called in turn within each
    round (the order rotated every round), until ``min_rounds`` rounds and ``budget_s`` seconds per
    encoder are done."""
    rows = list(encoders)
    times: dict[Row, list[float]] = {row: [] for row in rows}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < budget_s * len(rows):
        chunk = [images[(rounds * batch + i) % len(images)] for i in range(batch)]
        shift = rounds % len(rows)
        for row in rows[shift:] + rows[:shift]:
            times[row].append(encode(encoders[row], chunk))
        rounds += 1
    return times


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow/fast call time: > 1 when ``fast`` is faster."""
    return float(np.median(np.array(slow) / np.array(fast)))


def model_config(model: Model, cache_dir: str) -> EncoderConfig:
    checkpoint = str(REPO / model.checkpoint) if model.checkpoint else ""
    return EncoderConfig(preset=model.preset, checkpoint=checkpoint, backbone_weights=model.backbone_weights,
                         max_batch=max(BATCHES), cache_dir=cache_dir)


def bench_model(label: str, args: argparse.Namespace, images: list[np.ndarray]) -> dict:
    """Times of every variant of model ``label`` at every thread count, and its MACs per image.

    Two groups, each called in turn per round: the torch encoders, and all others (ONNX Runtime at
    every thread count and precision), so that the INT8/fp32 and the thread-scaling ratios are paired.
    torch is kept out of the second group because its OpenMP workers spin for a while after each
    call and would slow whichever call comes next.
    """
    spec = MODELS[label]
    base = model_config(spec, args.cache_dir)
    model = load_model(base)
    words = [word for word in args.backends.split(",") if word]
    torch_group: dict[Row, Encoder] = {}
    others: dict[Row, Encoder] = {}
    for threads in args.threads:
        for variant in variants(threads, spec.int8, args.calibration.format(data=DATA), threads == args.threads[0]):
            if words and not any(word in variant.label for word in words):
                continue
            config = dataclasses.replace(base, backend=variant.backend, **variant.overrides)
            encoder = importlib.import_module(BACKENDS[variant.backend][0]).create(config, model=model)
            (torch_group if variant.backend == "torch" else others)[threads, variant.label] = encoder
    budget = QUICK if args.quick else FULL
    result: dict = {"macs": count_macs_file(cached_onnx(base, model.config, model)), "times": {}}
    for batch in BATCHES:
        result["times"][batch] = {}
        for group in (others, torch_group):
            if not group:
                continue
            if batch == 1:
                timed_rounds(group, images, 1, 2, 0.0)  # warm-up: first calls allocate
            else:
                # Warm up a new batch shape unless one call is known to take longer than the budget.
                quick_enough = {row: encoder for row, encoder in group.items()
                                if np.median(result["times"][1][row]) * batch < budget.seconds}
                if quick_enough:
                    timed_rounds(quick_enough, images, batch, 1, 0.0)
            rounds = budget.latency_rounds if batch == 1 else budget.batch_rounds
            result["times"][batch].update(timed_rounds(group, images, batch, rounds, budget.seconds))
        print(f"  {label}: batch {batch} done", file=sys.stderr, flush=True)
    return result


def measure_peaks(thread_counts: list[int], seconds: float) -> dict[int, dict[str, float]]:
    """GMAC/s of every PEAK_KINDS micro-benchmark at every thread count."""
    return {threads: {kind: measure_peak(kind, threads, budget_s=seconds) for kind in PEAK_KINDS}
            for threads in thread_counts}


def images_per_s(times: list[float], batch: int) -> float:
    return batch / float(np.median(times))


def peak_for(backend: str, peaks: dict[str, float]) -> float:
    """The peak a row is divided by: the int8 one for INT8 rows, the fp32 one for every other CPU row."""
    return peaks[INT8_PEAK] if backend.endswith("int8") else peaks["fp32"]


def speed_table(runs: dict[str, dict], peaks: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    """One row per model, thread count and backend: latency, images/s, achieved GMAC/s, % of peak."""
    lines = ["| model | threads | backend | GMAC/image | p50 ms b1 | p95 ms b1 | "
             + " | ".join(f"img/s b{b}" for b in BATCHES) + " | GMAC/s " + " / ".join(f"b{b}" for b in BATCHES)
             + " | % of peak " + " / ".join(f"b{b}" for b in BATCHES) + " |",
             "|" + "---|" * (8 + len(BATCHES))]
    for model, result in runs.items():
        gmac = result["macs"] / 1e9
        for threads, name in sorted(result["times"][1], key=lambda row: row[0]):
            times = {b: result["times"][b][threads, name] for b in BATCHES}
            batch1 = np.array(times[1]) * 1e3
            achieved = [gmac * images_per_s(times[b], b) for b in BATCHES]
            # GPU rows have no CPU peak to compare with.
            fraction = ("-" if "cuda" in name or "tensorrt" in name else
                        " / ".join(f"{100 * x / peak_for(name, peaks[model][threads]):.1f}" for x in achieved))
            lines.append(f"| {model} | {thread_label(threads)} | {name} | {gmac:.2f} | "
                         f"{np.percentile(batch1, 50):.1f} | {np.percentile(batch1, 95):.1f} | "
                         + " | ".join(f"{x / gmac:.1f}" for x in achieved)
                         + " | " + " / ".join(f"{x:.1f}" for x in achieved) + f" | {fraction} |")
    return lines


def int8_table(runs: dict[str, dict], peaks: dict[str, dict[int, dict[str, float]]],
               thread_counts: list[int]) -> list[str]:
    """fp32 and INT8 ONNX Runtime side by side per thread count and batch (empty when INT8 did not run)."""
    fp32, int8 = "onnxruntime cpu fp32", "onnxruntime cpu int8"
    lines = []
    for model, result in runs.items():
        gmac = result["macs"] / 1e9
        for threads in thread_counts:
            if (threads, int8) not in result["times"][1] or (threads, fp32) not in result["times"][1]:
                continue
            for b in BATCHES:
                t32, t8 = result["times"][b][threads, fp32], result["times"][b][threads, int8]
                ips32, ips8 = images_per_s(t32, b), images_per_s(t8, b)
                peak = peaks[model][threads]
                lines.append(f"| {model} | {thread_label(threads)} | {b} | {ips32:.1f} | {ips8:.1f} | "
                             f"{paired_ratio(t32, t8):.2f}x | {100 * gmac * ips32 / peak['fp32']:.1f} | "
                             f"{100 * gmac * ips8 / peak[INT8_PEAK]:.1f} |")
    if not lines:
        return []
    return ["INT8 vs fp32, ONNX Runtime on the CPU (calls alternated; ratio = median of per-round ratios, "
            "> 1 = INT8 faster; % of the fp32 and of the int8 peak):",
            "| model | threads | batch | fp32 img/s | INT8 img/s | INT8/fp32 | fp32 % of fp32 peak | "
            "INT8 % of int8 peak |",
            "|" + "---|" * 8] + lines


def scaling_lines(runs: dict[str, dict], thread_counts: list[int]) -> list[str]:
    """images/s at each further thread count over the first one, per backend (paired: same group)."""
    lines = []
    first = thread_counts[0]
    for model, result in runs.items():
        rows = result["times"][1]
        for threads in thread_counts[1:]:
            for base_threads, name in rows:
                if base_threads != first or (threads, name) not in rows:
                    continue
                ratios = ", ".join(
                    f"b{b} {paired_ratio(result['times'][b][first, name], result['times'][b][threads, name]):.2f}"
                    for b in BATCHES)
                lines.append(f"  {model} {name}, threads {thread_label(threads)} / {thread_label(first)}: "
                             f"images/s {ratios}")
    if not lines:
        return []
    return ["Thread scaling (calls alternated; median of per-round ratios, > 1 = more threads faster):"] + lines


def torch_ratio_lines(runs: dict[str, dict]) -> list[str]:
    """onnxruntime / torch images/s per batch for every onnxruntime row that has a torch twin."""
    lines = []
    for model, result in runs.items():
        rows = result["times"][1]
        for threads, name in rows:
            torch_name = name.replace("onnxruntime", "torch", 1)
            if not name.startswith("onnxruntime") or (threads, torch_name) not in rows:
                continue
            ratios = ", ".join(f"b{b} {np.median(times[threads, torch_name]) / np.median(times[threads, name]):.2f}"
                               for b, times in result["times"].items())
            lines.append(f"  {model} {name.split(' ', 1)[1]}, threads {thread_label(threads)}: images/s {ratios}")
    if not lines:
        return []
    return ["onnxruntime / torch images/s (same device, precision and threads; torch timed in its own rounds "
            "right after; > 1 = onnxruntime faster):"] + lines


def print_tables(runs: dict[str, dict], points: list[dict[int, dict[str, float]]], thread_counts: list[int]) -> None:
    """The speed table, the peaks, the INT8/fp32 table, thread scaling and the onnxruntime/torch ratios.

    ``points``: the peaks measured before the first model, between models and after the last; a
    model's peak is the higher of the two measurements around its rows.
    """
    peaks = {model: {threads: {kind: max(before[threads][kind], after[threads][kind]) for kind in PEAK_KINDS}
                     for threads in thread_counts}
             for model, before, after in zip(runs, points, points[1:])}
    peak_lines = ["Peak (ONNX Runtime, 1024^3 matrix multiply, constant right operand, median call; measured "
                  "before / after each model's rows, the higher one used), GMAC/s:"]
    for model, before, after in zip(runs, points, points[1:]):
        peak_lines += [f"  {model}, threads {thread_label(threads)}: "
                       + ", ".join(f"{kind} {before[threads][kind]:.1f} / {after[threads][kind]:.1f}"
                                   for kind in PEAK_KINDS) for threads in thread_counts]
    sections = [speed_table(runs, peaks), peak_lines, int8_table(runs, peaks, thread_counts),
                scaling_lines(runs, thread_counts), torch_ratio_lines(runs)]
    print("\n\n".join("\n".join(section) for section in sections if section))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per cell (about 2 s instead of 10 s)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--backends", default="", help="only variants whose label contains one of these words")
    parser.add_argument("--threads", type=parse_threads, default=parse_threads(f"1,{os.cpu_count() or 1}"),
                        help="comma-separated CPU thread counts for torch and onnxruntime, all measured in the "
                             "same rounds; 0 = the library default, as the node's model.threads: 0 "
                             "(default: 1 and all cores)")
    parser.add_argument("--calibration", default=CALIBRATION,
                        help="frame source the INT8 encoder is calibrated on ({data} = the data folder; "
                             "default: %(default)s)")
    parser.add_argument("--cache-dir", default="", help="ONNX/engine cache (default: the encoder's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    folder = DATA / "rtabmap_loop" / "images"
    if not folder.is_dir():
        parser.error(f"the images are missing: expected {folder} (set VPR_DATA to the data folder)")
    images = [read_rgb(p) for p in list_images(folder)[:16]]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"# encoder benchmark {datetime.date.today().isoformat()}: {cpu_model()} ({isa_flags()}), "
          f"{os.cpu_count()} logical CPUs, GPU {gpu}; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"threads {','.join(map(str, args.threads))}; load average at start {load_average()}; "
          f"{'quick' if args.quick else 'full'} run; images {images[0].shape[1]}x{images[0].shape[0]} "
          "from rtabmap_loop")
    budget = QUICK if args.quick else FULL
    start = time.perf_counter()
    # The peaks are measured before, between and after the models: the higher of the two around a
    # model's rows is its peak (what the machine can do), and the pair shows whether the load changed
    # meanwhile (with another job on the other core the int8 peak fell 5x on a shared VM, fp32 2x).
    points = [measure_peaks(args.threads, budget.peak_s)]
    runs = {}
    for label in models:
        runs[label] = bench_model(label, args, images)
        points.append(measure_peaks(args.threads, budget.peak_s))
    print_tables(runs, points, args.threads)
    print(f"\n(load average at the end {load_average()}; wall time {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
