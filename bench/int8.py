"""INT8 on the CPU: statically quantized ONNX graphs of the shipped encoder against its fp32 graph.

Why: on robots without an NVIDIA GPU the ONNX Runtime CPU encoder is most of the cost of every frame
(issue 21). This bench answers whether a statically quantized graph (onnxruntime.quantization,
calibrated on map-side images) runs at least 1.3x faster than fp32 at batch 1 on one thread while the
descriptor survives: cosine to the fp32 descriptors, agreement of the 512 code bits, and two-stage
Recall@1 within 1 point of fp32 on Corridor and on the Nordland-tiny validation slice of the
development section (the last 15 % of its places, which the shipped heads were not trained on; the
test section is held out and never read here).

How: the fp32 graph is exported from the checkpoint into the out folder; each variant (QDQ or
QOperator format, calibration method and set size, which nodes stay float, activation and weight
types, onnxruntime's quant_pre_process or not) is quantized from it. Calibration images come only
from the databases (Corridor ``ref``, Nordland ``summer``), spread evenly; queries never. The heads
(everything after the backbone's last convolution: aggregation, projections, normalisation) stay
float in every variant but ``all`` (a diagnostic that reproduces the naive whole-graph try). Speed is
``Encoder.encode`` (preprocessing and bit packing included, as the node sees it) on Corridor query
images, one intra-op thread, fp32 and int8 called alternately in the same loop so that the load of
a shared machine falls on both; the ratio is the median of the per-pair ratios.

Usage: .venv/bin/python bench/int8.py [--checkpoint DIR] [--variants qdq-minmax,qop-u8u8] [--rounds 60] [--no-speed] [--list]
Writes out/int8/<checkpoint>/ (the graphs, results.json, table.md) and prints one markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)
from vpr_core.cli_options import DEFAULT_CHECKPOINT  # noqa: E402
from vpr_core.data import EvalDataset  # noqa: E402
from vpr_core.engine import EncoderConfig  # noqa: E402
from vpr_core.engine.encoder import Encoder  # noqa: E402
from vpr_core.engine.model_source import load_model  # noqa: E402
from vpr_core.engine.onnx_description import INPUT_NAME  # noqa: E402
from vpr_core.engine.onnx_export import export_onnx  # noqa: E402
from vpr_core.engine.ort_backend import OrtEncoder  # noqa: E402
from vpr_core.eval.evaluate import open_eval_dataset  # noqa: E402
from vpr_core.eval.recall import evaluate_recall  # noqa: E402
from vpr_core.search import SearchConfig, TwoStageSearcher  # noqa: E402

DATA = Path(os.environ.get("VPR_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "out" / "int8"  # main() writes to a folder per checkpoint below it
# Nordland-tiny development section, last 15 % of its 2861 places (429): the validation slice of
# config/train/lite0-nordland.yaml, never trained on. The test section (images-28620..) is held out.
DATASETS = {
    "Corridor": "vpr_bench:{data}/corridor",
    "Nordland-dev val": "seasons:{data}/nordland_tiny?first=images-24330&last=images-28610",
}
BACKBONE = "/model/backbone/"
STEM = (BACKBONE + "_conv_stem/",)
HEAD_CONV = (BACKBONE + "_conv_head/",)  # the 1x1 convolution whose output every head pools
LAST_STAGE = (BACKBONE + "_blocks.15/",) + HEAD_CONV  # stage 7 (320 ch) and the 1x1 head conv
# The blocks whose float copy raised the descriptor cosine most when all the rest was int8 (one block
# kept float at a time, Nordland-dev slice: blocks 0 +0.028, 1 +0.022, 3 +0.010, every other <= 0.002).
SENSITIVE = (BACKBONE + "_blocks.0/", BACKBONE + "_blocks.1/")
BACKBONE_OPS = ("Conv", "Add", "Clip", "Pad")  # every op type of the backbone: int8 from one conv to the next
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
CALIB_OPTIONS = {"entropy": {"num_bins": 2048, "num_quantized_bins": 128}, "percentile": {"percentile": 99.999}}
TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One quantized graph. ``keep_float``: node-name prefixes left in float besides the heads
    (``heads=False`` quantizes the heads too); ``ops``: op types to quantize and calibrate (empty =
    every type onnxruntime can); the default keeps Add, Clip and Pad between convolutions in int8 too."""

    name: str
    fmt: str = "qdq"  # "qdq" | "qop"
    method: str = "minmax"
    calib: int = 32
    per_channel: bool = True
    activations: str = "u8"
    weights: str = "s8"
    ops: tuple[str, ...] = BACKBONE_OPS
    keep_float: tuple[str, ...] = ()
    heads: bool = True
    reduce_range: bool = False
    symmetric: bool = False  # ActivationSymmetric and WeightSymmetric
    pre_process: bool = True
    own_calibration: bool = False  # one graph per data set, calibrated on its own database (the library's way)

    def describe(self) -> str:
        parts = [self.fmt.upper(), self.method, f"calib {self.calib}", "per-channel" if self.per_channel else "per-tensor",
                 f"{self.activations}{self.weights}", "+".join(self.ops) if self.ops else "all op types",
                 "heads float" if self.heads else "heads int8 too"]
        if self.keep_float:
            parts.append("float: " + ", ".join(p.removeprefix(BACKBONE).strip("/") for p in self.keep_float))
        if self.reduce_range:
            parts.append("reduce_range")
        if self.symmetric:
            parts.append("symmetric")
        if not self.pre_process:
            parts.append("no quant_pre_process")
        if self.own_calibration:
            parts.append("each data set calibrated on its own database")
        return ", ".join(parts)


VARIANTS = [
    Variant("all", heads=False, ops=()),
    Variant("qdq-minmax"),
    Variant("qdq-minmax-own", own_calibration=True),
    Variant("qdq-minmax-own-stem", own_calibration=True, keep_float=STEM),
    Variant("qdq-minmax-own-stem-last", own_calibration=True, keep_float=STEM + LAST_STAGE),
    Variant("qdq-minmax-own-c128", own_calibration=True, calib=128),
    Variant("qdq-minmax-own-b01", own_calibration=True, keep_float=SENSITIVE),
    Variant("qdq-minmax-own-b013", own_calibration=True, keep_float=SENSITIVE + (BACKBONE + "_blocks.3/",)),
    Variant("qdq-minmax-own-head", own_calibration=True, keep_float=HEAD_CONV),
    Variant("qdq-minmax-own-b01-head", own_calibration=True, keep_float=SENSITIVE + HEAD_CONV),
    Variant("qdq-minmax-own-stem-head", own_calibration=True, keep_float=STEM + HEAD_CONV),
    Variant("qdq-minmax-own-stem-c128", own_calibration=True, keep_float=STEM, calib=128),
    Variant("qdq-minmax-own-stem-b0", own_calibration=True, keep_float=STEM + SENSITIVE[:1]),
    Variant("qdq-percentile-own", own_calibration=True, method="percentile"),
    Variant("qdq-minmax-s8s8", activations="s8"),
    Variant("qdq-minmax-conv", ops=("Conv",)),
    Variant("qdq-minmax-stem", keep_float=STEM),
    Variant("qdq-minmax-stem-last", keep_float=STEM + LAST_STAGE),
    Variant("qdq-minmax-c128", calib=128),
    Variant("qdq-percentile", method="percentile"),
    Variant("qdq-entropy", method="entropy"),
    Variant("qdq-entropy-c128", method="entropy", calib=128),
    Variant("qdq-minmax-sym", symmetric=True),
    Variant("qdq-minmax-rr", reduce_range=True),
    Variant("qdq-minmax-tensor", per_channel=False),
    Variant("qdq-minmax-nopre", pre_process=False),
    Variant("qop-minmax", fmt="qop"),
    Variant("qop-u8u8", fmt="qop", weights="u8"),
]


class ImageReader(CalibrationDataReader):
    """Preprocessed images one at a time (batch 1, the node's shape)."""

    def __init__(self, batch: np.ndarray) -> None:
        self._rows = iter(range(len(batch)))
        self._batch = batch

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        return None if row is None else {INPUT_NAME: self._batch[row:row + 1]}


@dataclasses.dataclass
class Encoded:
    """Codes and descriptors of one data set's database and queries (in that order)."""

    codes: np.ndarray
    desc: np.ndarray
    n_db: int


def calibration_images(datasets: dict[str, EvalDataset], count: int) -> list[np.ndarray]:
    """``count`` database images, spread evenly over each data set's database, equal shares."""
    images: list[np.ndarray] = []
    for i, dataset in enumerate(datasets.values()):
        share = count // len(datasets) + (i < count % len(datasets))
        picks = np.linspace(0, len(dataset.database) - 1, share).round().astype(int)
        images += [dataset.database[int(p)].rgb for p in picks]
    return images


def nodes_outside(model: onnx.ModelProto, variant: Variant) -> list[str]:
    """Names of the nodes the variant leaves in float: the heads (unless ``heads`` is off) and the
    nodes under its ``keep_float`` prefixes."""
    kept = []
    for node in model.graph.node:
        in_heads = not node.name.startswith(BACKBONE)
        if (in_heads and variant.heads) or node.name.startswith(variant.keep_float or ("\0",)):
            kept.append(node.name)
    return kept


def quantize(variant: Variant, fp32_path: Path, pre_path: Path, calib: np.ndarray, suffix: str = "") -> Path:
    """Writes out/int8/<name><suffix>.onnx for ``variant``, calibrated on ``calib`` (preprocessed images)."""
    source = pre_path if variant.pre_process else fp32_path
    out = OUT / f"{variant.name}{suffix}.onnx"
    extra: dict[str, Any] = {}
    if variant.symmetric:
        extra.update(ActivationSymmetric=True, WeightSymmetric=True)
    cache = None
    if variant.method != "minmax":
        # Calibrated here and handed over as a cache: quantize_static cannot set the histogram's bins,
        # and with its defaults (128 bins, 128 quantized bins) the entropy threshold is the max, i.e. MinMax.
        calibrator = create_calibrator(source, list(variant.ops) or None, augmented_model_path=OUT / "augmented.onnx",
                                       calibrate_method=METHODS[variant.method], extra_options=CALIB_OPTIONS[variant.method])
        calibrator.collect_data(ImageReader(calib))
        cache = OUT / f"{variant.name}-calibration.json"
        save_tensors_data(calibrator.compute_data(), cache)
    quantize_static(
        str(source), str(out), None if cache else ImageReader(calib), calibration_cache_path=cache,
        quant_format=QuantFormat.QDQ if variant.fmt == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=list(variant.ops) or None,
        per_channel=variant.per_channel, reduce_range=variant.reduce_range,
        activation_type=TYPES[variant.activations], weight_type=TYPES[variant.weights],
        nodes_to_exclude=nodes_outside(onnx.load(str(source)), variant),
        calibrate_method=METHODS[variant.method], extra_options=extra,
    )
    return out


def encode_all(encoders: Encoder | dict[str, Encoder], datasets: dict[str, EvalDataset],
               images: dict[str, list[np.ndarray]], label: str) -> dict[str, Encoded]:
    """Every data set through one encoder, or through its own (``encoders`` keyed by data set)."""
    encoded = {}
    for name in datasets:
        encoder = encoders[name] if isinstance(encoders, dict) else encoders
        codes, descs = [], []
        frames = images[name]
        for start in tqdm(range(0, len(frames), 8), desc=f"encode {name} ({label})", unit="batch", leave=False):
            c, d = encoder.encode(frames[start:start + 8])
            codes.append(c)
            descs.append(d)
        encoded[name] = Encoded(np.concatenate(codes), np.concatenate(descs), len(datasets[name].database))
    return encoded


def recall_at_1(dataset: EvalDataset, enc: Encoded) -> float:
    """Two-stage (the node's search) Recall@1 in percent, one query at a time."""
    searcher = TwoStageSearcher(enc.codes[:enc.n_db], enc.desc[:enc.n_db], SearchConfig())
    ids = np.concatenate([searcher.search(enc.codes[q:q + 1], enc.desc[q:q + 1], 1).ids
                          for q in range(enc.n_db, len(enc.desc))])
    return 100 * evaluate_recall(ids, dataset.positive_lists, [1]).recall[1]


def agreement(ref: dict[str, Encoded], other: dict[str, Encoded]) -> dict[str, float]:
    """Descriptor cosine (mean, min) and fraction of equal code bits over every image."""
    cos = np.concatenate([(ref[k].desc * other[k].desc).sum(axis=1) for k in ref])
    bits = np.concatenate([np.unpackbits(ref[k].codes, axis=1) == np.unpackbits(other[k].codes, axis=1)
                           for k in ref])
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "bits": float(bits.mean())}


def paired_speed(fp32: Encoder, int8: Encoder, images: list[np.ndarray], batch: int,
                 rounds: int) -> dict[str, float]:
    """images/s of both encoders and the median per-round ratio int8/fp32, calls alternating (the
    order flips every round) so that load changes on a shared machine hit both alike."""
    times = {"fp32": [], "int8": []}
    for encoder in (fp32, int8):  # warm-up: the first call of a shape allocates
        encoder.encode(images[:batch])
    for r in range(rounds):
        chunk = [images[(r * batch + i) % len(images)] for i in range(batch)]
        for label, encoder in ((("fp32", fp32), ("int8", int8)) if r % 2 == 0 else (("int8", int8), ("fp32", fp32))):
            start = time.perf_counter()
            encoder.encode(chunk)
            times[label].append(time.perf_counter() - start)
    t32, t8 = np.array(times["fp32"]), np.array(times["int8"])
    return {"fp32": batch / float(np.median(t32)), "int8": batch / float(np.median(t8)),
            "ratio": float(np.median(t32 / t8))}


def format_table(rows: list[dict[str, Any]], fp32_recall: dict[str, float]) -> str:
    names = list(fp32_recall)
    lines = ["| variant | img/s b1 fp32 / int8 (ratio) | img/s b4 fp32 / int8 (ratio) | cosine mean / min | "
             "code bits equal | " + " | ".join(f"R@1 {n} fp32 -> int8" for n in names) + " |",
             "|" + "---|" * (5 + len(names))]
    for row in rows:
        a = row["agreement"]
        recall = " | ".join(f"{fp32_recall[n]:.1f} -> {row['recall'][n]:.1f}" for n in names)
        lines.append(f"| {row['variant']} | {_speed(row['speed_b1'])} | {_speed(row['speed_b4'])} | {a['cos_mean']:.4f} / "
                     f"{a['cos_min']:.4f} | {100 * a['bits']:.2f} % | {recall} |")
    return "\n".join(lines)


def _speed(speed: dict[str, float] | None) -> str:
    return "not measured" if speed is None else f"{speed['fp32']:.1f} / {speed['int8']:.1f} ({speed['ratio']:.2f}x)"


def read_datasets() -> tuple[dict[str, EvalDataset], dict[str, list[np.ndarray]], list[np.ndarray]]:
    """The data sets, their images (database then queries) and the timing images: 16 Corridor
    queries, which no variant is calibrated on."""
    datasets = {name: open_eval_dataset(spec.format(data=DATA)) for name, spec in DATASETS.items()}
    images = {name: [f.rgb for f in tqdm(list(d.database) + list(d.queries), desc=f"read {name}", leave=False)]
              for name, d in datasets.items()}
    return datasets, images, images["Corridor"][len(datasets["Corridor"].database):][:16]


def variant_parser(description: str) -> argparse.ArgumentParser:
    """The options every INT8 bench shares (this one and bench/int8_openvino.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--variants", default="", help="comma-separated names (default: all; --list shows them)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--rounds", type=int, default=60, help="alternating call pairs at batch 1 (batch 4: a quarter)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="model to quantize (default: the shipped default)")
    return parser


def chosen_variants(parser: argparse.ArgumentParser, args: argparse.Namespace, variants: list) -> list | None:
    """The variants --variants names (all by default); None after printing them for --list."""
    if args.list:
        for v in variants:
            print(f"{v.name}: {v.describe()}")
        return None
    wanted = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(wanted) - {v.name for v in variants})
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; --list shows them")
    return [v for v in variants if not wanted or v.name in wanted]


def main() -> int:
    parser = variant_parser(__doc__.splitlines()[0])
    parser.add_argument("--no-speed", action="store_true", help="accuracy only (for a busy machine)")
    args = parser.parse_args()
    chosen = chosen_variants(parser, args, VARIANTS)
    if chosen is None:
        return 0
    logging.basicConfig(level=logging.WARNING)
    global OUT
    OUT = OUT / args.checkpoint.name
    OUT.mkdir(parents=True, exist_ok=True)

    datasets, images, timing_images = read_datasets()

    config = EncoderConfig(checkpoint=str(args.checkpoint), backend="onnxruntime", device="cpu", threads=1)
    model = load_model(config)
    fp32_path = OUT / "model-fp32.onnx"
    export_onnx(model, fp32_path)
    pre_path = OUT / "model-fp32-pre.onnx"
    quant_pre_process(str(fp32_path), str(pre_path))
    fp32_fast = OrtEncoder(config, model.config, fp32_path)
    fp32_wide = OrtEncoder(dataclasses.replace(config, threads=0), model.config, fp32_path)
    calib = {n: fp32_fast.preprocess(calibration_images(datasets, n)) for n in sorted({v.calib for v in chosen})}
    own_calib = {(name, n): fp32_fast.preprocess(calibration_images({name: datasets[name]}, n))
                 for name in datasets for n in sorted({v.calib for v in chosen if v.own_calibration})}

    print(f"# int8 bench {datetime.date.today().isoformat()}: {cpu_model()}, {os.cpu_count()} logical CPUs, "
          f"onnxruntime {ort.__version__}, load average {load_average()} at start", flush=True)
    ref = encode_all(fp32_wide, datasets, images, "fp32")
    fp32_recall = {name: recall_at_1(datasets[name], ref[name]) for name in datasets}
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for variant in tqdm(chosen, desc="variants", unit="variant"):
        start = time.perf_counter()
        try:
            if variant.own_calibration:
                paths = {name: quantize(variant, fp32_path, pre_path, own_calib[name, variant.calib],
                                        f"-{name.split()[0].lower()}") for name in datasets}
            else:
                paths = dict.fromkeys(datasets, quantize(variant, fp32_path, pre_path, calib[variant.calib]))
        except (ValueError, RuntimeError, MemoryError, ort.capi.onnxruntime_pybind11_state.Fail) as exc:
            # The histogram calibrators refuse some tensors; the row says why instead of ending the run.
            failed.append(f"{variant.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            tqdm.write(f"{variant.name} failed: {failed[-1]}")
            continue
        built_s = time.perf_counter() - start
        int8_fast = OrtEncoder(config, model.config, paths["Corridor"])  # speed: the graph timed on Corridor
        int8_wide = {name: OrtEncoder(dataclasses.replace(config, threads=0), model.config, path)
                     for name, path in paths.items()}
        got = encode_all(int8_wide, datasets, images, variant.name)
        rows.append({
            "variant": variant.name, "settings": variant.describe(), "build_s": built_s,
            "speed_b1": None if args.no_speed else paired_speed(fp32_fast, int8_fast, timing_images, 1, args.rounds),
            "speed_b4": None if args.no_speed else paired_speed(fp32_fast, int8_fast, timing_images, 4,
                                                                max(4, args.rounds // 4)),
            "agreement": agreement(ref, got),
            "recall": {name: recall_at_1(datasets[name], got[name]) for name in datasets},
        })
        tqdm.write(format_table(rows[-1:], fp32_recall).splitlines()[-1])
    table = format_table(rows, fp32_recall)
    legend = "\n".join(f"- {v.name}: {v.describe()}" for v in chosen)
    failures = "".join(f"\n- failed: {f}" for f in failed)
    print(f"\n{table}\n\n{legend}{failures}\n\nload average at the end {load_average()}")
    (OUT / "table.md").write_text(f"{table}\n\n{legend}{failures}\n")
    (OUT / "results.json").write_text(json.dumps({"fp32_recall_at_1": fp32_recall, "rows": rows, "failed": failed},
                                                 indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
