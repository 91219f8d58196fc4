"""One-shot check of the GPU encoder paths that run with torch alone (no TensorRT, no onnxruntime-gpu).

For lite0-fused (the shipped default, checkpoints/lite0-fused, 240x320), ViT-S/14 and ViT-B/14 at
322x322 (seeded random backbone weights: no download, and speed and numerical parity do not depend on
the weights), on torch CUDA fp32, fp16, and fp16 replayed as CUDA graphs:

- parity against the same model in fp32 on the CPU, on 8 real images (rtabmap_loop): the lowest
  descriptor cosine and the lowest fraction of code bits that agree, checked against the floors of
  test/test_engine_gpu.py (cosine 0.999 for fp32, 0.99 for fp16; bits 0.99);
- images/s of ``Encoder.encode`` at batch 1, 8 and 32 (preprocessing on the CPU and bit packing
  included, as the node sees them), and of the network alone at batch 32 on preprocessed input
  (host-to-device copy included): the gap between the two is what the CPU preprocessing costs.

It prints the date, the GPU, the torch/CUDA/cuDNN versions and one markdown table (also written to
``--out``), in about 2-3 minutes (estimated; not yet run on a GPU); it exits 1 when a parity floor is
missed or a variant fails (its row then says why, and the other rows are still measured). Without a CUDA GPU it exits
2 at once, unless ``--dry-run``: that prints the plan and runs the parity and timing code on the CPU
with the smallest model on 2 images, so a machine without a GPU keeps the script working.

Usage: .venv/bin/python bench/gpu_check.py [--dry-run] [--out FILE] [--budget SECONDS] [--models ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_model  # noqa: E402  (bench/machine.py)
from vpr_core.data.images import list_images, read_rgb  # noqa: E402
from vpr_core.engine import EncoderConfig, torch_backend  # noqa: E402
from vpr_core.engine.encoder import Encoder  # noqa: E402
from vpr_core.model import VPRModel, build_model, load_checkpoint  # noqa: E402
from vpr_core.model.config import preset_config  # noqa: E402

DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))
SHIPPED = REPO / "checkpoints" / "lite0-fused"
BATCHES = (1, 8, 32)
PARITY_IMAGES = 8
MIN_COSINE = {"fp32": 0.999, "fp16": 0.99}  # as test/test_engine_gpu.py
MIN_BITS = 0.99
MIN_CALLS = 3  # timed calls per cell at least, however long they take


@dataclasses.dataclass(frozen=True)
class Model:
    label: str
    preset: str  # the EncoderConfig preset (the model itself comes from build)
    build: Callable[[], VPRModel]


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    precision: str
    cuda_graphs: bool


def _vit_s14_322() -> VPRModel:
    """The random-weight ViT-S/14 test preset at the ViT-B preset's 322x322 input."""
    return build_model(dataclasses.replace(preset_config("vits14-test"), image_size=(322, 322)),
                       backbone_weights="random")


MODELS = {
    "lite0-fused": Model("lite0-fused", "lite0-fused", lambda: load_checkpoint(SHIPPED)),
    "vit-s14": Model("vit-s14", "vits14-test", _vit_s14_322),
    "vit-b14": Model("vit-b14", "selavpr++-b", lambda: build_model("selavpr++-b", backbone_weights="random")),
}
VARIANTS = (Variant("cuda fp32", "fp32", False), Variant("cuda fp16", "fp16", False),
            Variant("cuda fp16 graphs", "fp16", True))
DRY_RUN_VARIANT = Variant("cpu fp32 (dry run)", "fp32", False)
DRY_RUN_BATCHES = (1, 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: print the plan, run parity and timing on the CPU on 2 images")
    parser.add_argument("--out", type=Path, help="also write the header and the table (markdown) to this file")
    parser.add_argument("--budget", type=float, default=2.0,
                        help=f"seconds of timed calls per cell (default 2; at least {MIN_CALLS} calls each)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"unknown or no model(s) {unknown}; choose from {', '.join(MODELS)}")
    if not args.budget > 0:
        parser.error(f"--budget must be > 0 seconds, got {args.budget}")
    return args


def plan(args: argparse.Namespace) -> list[str]:
    """What a GPU run measures, one line per model."""
    variants = ", ".join(v.label for v in VARIANTS)
    batches = "/".join(str(b) for b in BATCHES)
    return [f"- {name} ({MODELS[name].preset}): {variants}; parity on {PARITY_IMAGES} images vs cpu fp32; "
            f"encode images/s at batch {batches}, network alone at batch {BATCHES[-1]}; "
            f"{args.budget:g} s per timed cell" for name in args.models]


def load_images(n: int) -> list[np.ndarray]:
    folder = DATA / "rtabmap_loop" / "images"
    if not folder.is_dir():
        raise SystemExit(f"gpu_check: the images are missing: expected {folder} (set VPR_DATA to the data folder)")
    return [read_rgb(p) for p in list_images(folder)[:n]]


def parity(codes: np.ndarray, desc: np.ndarray, codes_ref: np.ndarray, desc_ref: np.ndarray) -> tuple[float, float]:
    """(lowest descriptor cosine, lowest fraction of equal code bits) over the images."""
    cosine = float((desc * desc_ref).sum(axis=1).min())
    bits = float((np.unpackbits(codes, axis=1) == np.unpackbits(codes_ref, axis=1)).mean(axis=1).min())
    return cosine, bits


def images_per_second(call: Callable[[], object], batch: int, budget: float, min_calls: int) -> float:
    """Throughput of ``call`` (one batch per call) after one warm-up call (allocation, graph capture)."""
    call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < budget:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return batch * len(times) / sum(times)


def columns(batches: tuple[int, ...]) -> tuple[str, ...]:
    return ("model", "input", "variant", "cos min", "bits min", "parity",
            *(f"img/s b{b}" for b in batches), f"net img/s b{batches[-1]}")


def measure(encoder: Encoder, variant: Variant, images: list[np.ndarray], reference: tuple[np.ndarray, np.ndarray],
            batches: tuple[int, ...], budget: float, min_calls: int) -> dict[str, object]:
    """One table row's numbers for ``encoder``: parity on the reference's images, then speed."""
    cosine, bits = parity(*encoder.encode(images[:len(reference[0])]), *reference)
    ok = cosine >= MIN_COSINE[variant.precision] and bits >= MIN_BITS
    row: dict[str, object] = {"cos min": f"{cosine:.4f}", "bits min": f"{bits:.4f}", "parity": "ok" if ok else "LOW"}
    for b in batches:
        row[f"img/s b{b}"] = f"{images_per_second(lambda: encoder.encode(images[:b]), b, budget, min_calls):.1f}"
    largest = batches[-1]
    # The network alone (the backend's own call on an already preprocessed batch): what the GPU does.
    pre = np.ascontiguousarray(encoder.preprocess(images[:largest]))
    row[f"net img/s b{largest}"] = f"{images_per_second(lambda: encoder._infer(pre), largest, budget, min_calls):.1f}"
    return row


def check_model(model: Model, variants: tuple[Variant, ...], device: str, images: list[np.ndarray],
                n_parity: int, batches: tuple[int, ...], budget: float, min_calls: int) -> list[dict[str, object]]:
    """Rows of one model: its CPU fp32 reference first, then each variant on ``device``."""
    net = model.build()
    h, w = net.config.image_size
    base = EncoderConfig(preset=model.preset, backend="torch", max_batch=max(batches))
    # The reference runs before any GPU encoder exists: an encoder moves the (shared) model to its device.
    reference = torch_backend.create(dataclasses.replace(base, device="cpu"), model=net).encode(images[:n_parity])
    rows = []
    for variant in variants:
        row: dict[str, object] = {"model": model.label, "input": f"{w}x{h}", "variant": variant.label}
        try:
            encoder = torch_backend.create(dataclasses.replace(base, device=device, precision=variant.precision,
                                                               cuda_graphs=variant.cuda_graphs), model=net)
            row.update(measure(encoder, variant, images, reference, batches, budget, min_calls))
            del encoder
        except Exception as error:  # a GPU machine is lent rarely: one broken variant must not lose the others
            row.update({c: "-" for c in columns(batches)[3:]})
            message = str(error).splitlines()[0][:120] if str(error) else ""
            row["parity"] = f"ERROR {type(error).__name__}: {message}".replace("|", "/")  # keeps the table's cells
        rows.append(row)
        print(f"  {model.label} {variant.label}: {row['parity']}", file=sys.stderr, flush=True)
    return rows


def header() -> str:
    gpu = "none"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor})"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (f"# gpu_check {datetime.date.today().isoformat()}: GPU {gpu}; torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {cudnn}; CPU {cpu_model()}, {os.cpu_count()} logical CPUs; "
            f"images from rtabmap_loop")


def table(rows: list[dict[str, object]], batches: tuple[int, ...]) -> str:
    names = columns(batches)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(str(row[c]) for c in names) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda}); "
              "nothing to check here (--dry-run exercises the script on the CPU)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    print(header())
    print("plan (GPU run):" + (" [dry run: not measured]" if args.dry_run else ""))
    print("\n".join(plan(args)))
    if args.dry_run:
        # A check of the code, not a measurement: one thread, so it does not fight other jobs for the cores
        # (on a shared 2-core machine under load 5 the dry run took 14 s on two threads, 3 s on one).
        torch.set_num_threads(1)
        batches = DRY_RUN_BATCHES
        images = load_images(max(batches))
        rows = check_model(MODELS["lite0-fused"], (DRY_RUN_VARIANT,), "cpu", images, len(images), batches, 0.0, 1)
    else:
        batches = BATCHES
        images = load_images(max(batches))
        rows = []
        for name in args.models:
            rows += check_model(MODELS[name], VARIANTS, "cuda", images, PARITY_IMAGES, batches, args.budget,
                                MIN_CALLS)
            torch.cuda.empty_cache()
    result = f"{header()}\n\n{table(rows, batches)}\n"
    print()
    print(table(rows, batches))
    print(f"\n(wall time {time.perf_counter() - start:.0f} s)")
    if args.out:
        args.out.write_text(result)
    return 0 if all(row["parity"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
