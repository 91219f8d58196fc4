"""INT8 on the CPU with OpenVINO + NNCF: post-training quantization of the shipped encoder, against
fp32 ONNX Runtime, measured exactly as bench/int8.py measures ONNX Runtime's own static quantization.

Why: issue 21 names OpenVINO + NNCF as an alternative INT8 runtime, to become an optional backend if it
beats ONNX Runtime's static quantization (bench/int8.py: QDQ per-channel MinMax on the backbone, 1.51x
at batch 1 on one thread, cosine to fp32 0.900 mean / 0.621 min). NNCF calibrates differently (its
presets, min-of-min / max-of-max or quantile ranges, bias correction), so it may keep the descriptor
closer to fp32; OpenVINO's CPU plugin has its own INT8 kernels.

How: the fp32 graph is exported from the checkpoint as bench/int8.py does. Each variant quantizes it
with ``nncf.quantize`` either as ONNX (NNCF's ONNX backend; the QDQ graph it writes runs in ONNX Runtime
as well as OpenVINO) or as OpenVINO IR (``openvino.convert_model`` first), with a preset (PERFORMANCE:
symmetric activations; MIXED: asymmetric activations), fast or full bias correction, the calibration
set size, NNCF's overflow fix, and the heads kept float (an ignored scope of every node outside
/model/backbone/, as bench/int8.py keeps them float) or not. Calibration images come only from the
databases (the same images bench/int8.py picks), never from queries. ``ort-qdq-minmax`` is
bench/int8.py's best ONNX Runtime graph, quantized by its code, for a comparison in the same run.
OpenVINO compiles one model per batch size (static shapes), f32 inference precision (the CPU plugin
would pick bf16 on a CPU with AMX or AVX-512 BF16 otherwise; the ``ov-fp32-default`` row shows that
default), no CPU pinning; each OpenVINO row also lists the kernels its convolutions ran on (AMX, VNNI
or AVX2: which INT8 instructions the CPU had matters more than the runtime). Speed, cosine, code bits
and two-stage R@1 come from bench/int8.py's own functions: each ratio is against fp32 ONNX Runtime on
one thread, calls alternated in one loop, or, with ``--reference openvino``, against OpenVINO fp32:
for runs under ``ONEDNN_MAX_CPU_ISA=AVX2`` (or AVX2_VNNI), which caps OpenVINO's kernels to what a
robot's CPU without AMX/VNNI has, but not ONNX Runtime's.

Needs the packages of requirements-openvino.txt, which the project's .venv does not have:
    python3 -m venv out/openvino-venv
    out/openvino-venv/bin/pip install torch==2.13.0 -r requirements-openvino.txt
    out/openvino-venv/bin/python bench/int8_openvino.py [--variants ov-fp32,nncf-ov-perf-bc] [--rounds 30] [--list]
    ONEDNN_MAX_CPU_ISA=AVX2 out/openvino-venv/bin/python bench/int8_openvino.py --reference openvino \
        --out out/int8-openvino-avx2 --variants nncf-ov-perf-bc,nncf-ov-perf-bc-of
Writes out/int8-openvino/ (or --out: the models, results.json, table.md) and prints one markdown table.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

import int8
import nncf
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
# bench/int8.py: the data sets, the calibration picks and every measurement, shared so that the rows
# of both benches are comparable.
# (importing it also puts the repository on sys.path for vpr_core, as it does for bench/machine.py).
from int8 import (REPO, agreement, calibration_images, chosen_variants, encode_all, format_table,
                  paired_speed, read_datasets, recall_at_1, variant_parser)
from machine import cpu_model, load_average
from vpr_core.engine import EncoderConfig
from vpr_core.engine.encoder import Encoder
from vpr_core.engine.model_source import load_model
from vpr_core.engine.onnx_description import INPUT_NAME, OUTPUT_NAMES
from vpr_core.engine.onnx_export import export_onnx
from vpr_core.engine.ort_backend import OrtEncoder
from vpr_core.model import ModelConfig

OUT = REPO / "out" / "int8-openvino"
BACKBONE = "/model/backbone/"
ORT_BEST = next(v for v in int8.VARIANTS if v.name == "qdq-minmax")  # bench/int8.py's best row
PRESETS = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row. ``source``: what NNCF quantizes ("onnx" or OpenVINO "ir"; "none" = the fp32 graph;
    "ort" = bench/int8.py's best ONNX Runtime variant, quantized by its own code, for a same-run comparison);
    ``runtime``: what runs it ("openvino" or "onnxruntime")."""

    name: str
    source: str = "ir"
    runtime: str = "openvino"
    preset: str = "performance"
    fast_bias_correction: bool = True
    calib: int = 32
    heads: bool = True  # heads kept float
    # NNCF's OverflowFix: "enable" halves every weight's int8 range (7 bits), for CPUs without VNNI whose
    # u8 x s8 multiply-add saturates in int16; NNCF's default ("first_layer_only") does that for the first only.
    overflow_fix: str = "first_layer_only"
    precision_hint: str = "f32"  # OpenVINO's INFERENCE_PRECISION_HINT; "" = the plugin's default

    def quantized_key(self) -> tuple:
        return (self.source, self.preset, self.fast_bias_correction, self.calib, self.heads, self.overflow_fix)

    def file_stem(self) -> str:
        return "-".join([f"nncf-{self.source}", self.preset, "fbc" if self.fast_bias_correction else "bc",
                         f"c{self.calib}", "headsfloat" if self.heads else "headsint8", f"of-{self.overflow_fix}"])

    def describe(self) -> str:
        run = f"run in {'OpenVINO' if self.runtime == 'openvino' else 'ONNX Runtime'}"
        if self.runtime == "openvino":
            run += f" ({self.precision_hint or 'default'} precision hint)"
        if self.source == "none":
            return f"fp32 graph, {run}"
        if self.source == "ort":
            return f"bench/int8.py's qdq-minmax ({ORT_BEST.describe()}), {run}"
        return ", ".join([f"NNCF on {'ONNX' if self.source == 'onnx' else 'OpenVINO IR'}", self.preset.upper(),
                          "fast bias correction" if self.fast_bias_correction else "full bias correction",
                          f"calib {self.calib}", "heads float" if self.heads else "heads int8 too",
                          f"overflow fix {self.overflow_fix}", run])


VARIANTS = [
    Variant("ort-qdq-minmax", source="ort", runtime="onnxruntime"),
    Variant("ov-fp32", source="none"),
    Variant("ov-fp32-default", source="none", precision_hint=""),
    Variant("nncf-ov-perf"),
    Variant("nncf-ov-mixed", preset="mixed"),
    Variant("nncf-ov-perf-bc", fast_bias_correction=False),
    Variant("nncf-ov-mixed-bc", preset="mixed", fast_bias_correction=False),
    Variant("nncf-ov-perf-bc-c128", fast_bias_correction=False, calib=128),
    Variant("nncf-ov-perf-bc-of", fast_bias_correction=False, overflow_fix="enable"),
    Variant("nncf-ov-perf-c128", calib=128),
    Variant("nncf-ov-perf-all", heads=False),
    Variant("nncf-onnx-perf", source="onnx"),
    Variant("nncf-onnx-perf-ort", source="onnx", runtime="onnxruntime"),
    Variant("nncf-onnx-mixed-ort", source="onnx", runtime="onnxruntime", preset="mixed"),
    Variant("nncf-onnx-mixed-bc-ort", source="onnx", runtime="onnxruntime", preset="mixed",
            fast_bias_correction=False),
    Variant("nncf-onnx-perf-c128-ort", source="onnx", runtime="onnxruntime", calib=128),
]


class OvEncoder(Encoder):
    """The ``Encoder`` contract on an OpenVINO model: one compiled model per batch size (static shapes)."""

    backend = "openvino"

    def __init__(self, config: EncoderConfig, model_config: ModelConfig, model: ov.Model, core: ov.Core,
                 precision_hint: str = "f32") -> None:
        super().__init__(config, model_config)
        self._model, self._core = model, core
        self._properties: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                                            "ENABLE_CPU_PINNING": False}
        if config.threads:
            self._properties["INFERENCE_NUM_THREADS"] = config.threads
        if precision_hint:
            self._properties["INFERENCE_PRECISION_HINT"] = precision_hint
        self._compiled: dict[int, ov.CompiledModel] = {}

    def compiled(self, n: int) -> ov.CompiledModel:
        if n not in self._compiled:
            model = self._model.clone()
            model.reshape({INPUT_NAME: [n, 3, *self.input_hw]})
            self._compiled[n] = self._core.compile_model(model, "CPU", self._properties)
        return self._compiled[n]

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.compiled(len(batch))({INPUT_NAME: batch})
        return result[OUTPUT_NAMES[0]], result[OUTPUT_NAMES[1]]

    def kernels(self) -> dict[str, int]:
        """Count of the CPU plugin's primitive types for the quantizable ops (batch 1): which ISA and
        precision its convolutions and matmuls actually run in."""
        counts: Counter[str] = Counter()
        for op in self.compiled(1).get_runtime_model().get_ordered_ops():
            info = {key: value.astype(str) for key, value in op.get_rt_info().items()}
            if info.get("layerType") in ("Convolution", "GroupConvolution", "MatMul", "FullyConnected"):
                counts[f"{info['layerType']}:{info['primitiveType']}:{info['runtimePrecision']}"] += 1
        return dict(counts)


def without_output_casts(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without its float-to-float Casts in front of graph outputs (the export's ``/Cast`` on
    ``binary_logits``): NNCF 3.4's ONNX backend removes no-op Casts and fails with a KeyError on one
    whose output is a graph output (it is not in value_info). The producer writes the output instead."""
    outputs = {o.name for o in model.graph.output}
    float32 = onnx.TensorProto.FLOAT
    for cast in [n for n in model.graph.node if n.op_type == "Cast" and n.output[0] in outputs]:
        if onnx.helper.get_attribute_value(cast.attribute[0]) != float32:
            continue
        producer = next(n for n in model.graph.node if cast.input[0] in n.output)
        if producer.op_type != "Div" or any(cast.input[0] in n.input for n in model.graph.node if n is not cast):
            continue  # only the known case: the head's normalisation, used by nothing else
        producer.output[list(producer.output).index(cast.input[0])] = cast.output[0]
        model.graph.node.remove(cast)
    return model


def heads_scope(model: onnx.ModelProto | ov.Model) -> nncf.IgnoredScope:
    """Every node outside the backbone (the heads and the final normalisation) by name. Names, not a
    pattern: convert_model renames the nodes that write graph outputs after the outputs (the hash
    branch's Div becomes ``binary_logits``), and a pattern on "/model/" missed them."""
    if isinstance(model, onnx.ModelProto):
        names = [n.name for n in model.graph.node if not n.name.startswith(BACKBONE)]
    else:
        names = [op.get_friendly_name() for op in model.get_ordered_ops()
                 if op.get_type_name() not in ("Parameter", "Constant", "Result")
                 and not op.get_friendly_name().startswith(BACKBONE)]
    return nncf.IgnoredScope(names=names, validate=False)


def quantize(variant: Variant, fp32_path: Path, calib: np.ndarray) -> tuple[Path, float]:
    """out/int8-openvino/<stem>.onnx or .xml for ``variant`` and the seconds nncf.quantize took."""
    if variant.source == "ort":
        int8.OUT = OUT  # bench/int8.py writes its graphs there
        pre_path = OUT / "model-fp32-pre.onnx"
        quant_pre_process(str(fp32_path), str(pre_path))
        start = time.perf_counter()
        return int8.quantize(ORT_BEST, fp32_path, pre_path, calib), time.perf_counter() - start
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda x: {INPUT_NAME: x})
    options: dict[str, Any] = dict(preset=PRESETS[variant.preset], subset_size=len(calib),
                                   fast_bias_correction=variant.fast_bias_correction,
                                   target_device=nncf.TargetDevice.CPU,
                                   advanced_parameters=AdvancedQuantizationParameters(
                                       overflow_fix=OverflowFix(variant.overflow_fix)))
    source = (without_output_casts(onnx.load(str(fp32_path))) if variant.source == "onnx"
              else ov.convert_model(str(fp32_path)))
    if variant.heads:
        options["ignored_scope"] = heads_scope(source)
    start = time.perf_counter()
    quantized = nncf.quantize(source, dataset, **options)
    took = time.perf_counter() - start
    if variant.source == "onnx":
        out = OUT / f"{variant.file_stem()}.onnx"
        onnx.save(quantized, str(out))
    else:
        out = OUT / f"{variant.file_stem()}.xml"
        ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out, took


def main() -> int:
    global OUT
    parser = variant_parser(__doc__.splitlines()[0])
    parser.add_argument("--reference", choices=("onnxruntime", "openvino"), default="onnxruntime",
                        help="the fp32 encoder the speed ratios are against (accuracy is always against "
                             "fp32 ONNX Runtime); openvino: for runs with ONEDNN_MAX_CPU_ISA set, which caps "
                             "OpenVINO's kernels (e.g. AVX2 for a CPU without VNNI or AMX) but not ONNX Runtime's")
    parser.add_argument("--out", default=str(OUT.relative_to(REPO)), help="output folder, relative to the repository")
    args = parser.parse_args()
    chosen = chosen_variants(parser, args, VARIANTS)
    if chosen is None:
        return 0
    OUT = REPO / args.out
    logging.basicConfig(level=logging.WARNING)
    nncf.set_log_level(logging.WARNING)
    OUT.mkdir(parents=True, exist_ok=True)

    datasets, images, timing_images = read_datasets()

    config = EncoderConfig(checkpoint=str(args.checkpoint), backend="onnxruntime", device="cpu", threads=1)
    wide = dataclasses.replace(config, threads=0)
    model = load_model(config)
    fp32_path = OUT / "model-fp32.onnx"
    export_onnx(model, fp32_path)
    fp32_fast = OrtEncoder(config, model.config, fp32_path)
    fp32_wide = OrtEncoder(wide, model.config, fp32_path)
    calib = {n: fp32_fast.preprocess(calibration_images(datasets, n)) for n in sorted({v.calib for v in chosen})}
    core = ov.Core()
    speed_ref = fp32_fast if args.reference == "onnxruntime" else OvEncoder(config, model.config,
                                                                               core.read_model(str(fp32_path)), core)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")

    print(f"# int8 OpenVINO bench {datetime.date.today().isoformat()}: {cpu_model()}, {os.cpu_count()} logical CPUs, "
          f"onnxruntime {ort.__version__}, openvino {ov.get_version()}, nncf {nncf.__version__}, "
          f"load average {load_average()} at start; speed against fp32 {args.reference}"
          + (f"; ONEDNN_MAX_CPU_ISA={isa}" if isa else ""), flush=True)
    ref = encode_all(fp32_wide, datasets, images, "fp32")
    fp32_recall = {name: recall_at_1(datasets[name], ref[name]) for name in datasets}
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    built: dict[tuple, tuple[Path, float]] = {}
    for variant in tqdm(chosen, desc="variants", unit="variant"):
        try:
            if variant.source == "none":
                path, built_s = fp32_path, 0.0
            else:
                if variant.quantized_key() not in built:
                    built[variant.quantized_key()] = quantize(variant, fp32_path, calib[variant.calib])
                path, built_s = built[variant.quantized_key()]
            if variant.runtime == "onnxruntime":
                fast, enc_wide = OrtEncoder(config, model.config, path), OrtEncoder(wide, model.config, path)
                kernels: dict[str, int] = {}
            else:
                ov_model = core.read_model(str(path))
                fast = OvEncoder(config, model.config, ov_model, core, variant.precision_hint)
                enc_wide = OvEncoder(wide, model.config, ov_model, core, variant.precision_hint)
                kernels = fast.kernels()
        except Exception as exc:  # noqa: BLE001  (a row that says why beats a run that ends)
            failed.append(f"{variant.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            tqdm.write(f"{variant.name} failed: {failed[-1]}")
            continue
        got = encode_all(enc_wide, datasets, images, variant.name)
        rows.append({
            "variant": variant.name, "settings": variant.describe(), "build_s": built_s, "kernels": kernels,
            "speed_b1": paired_speed(speed_ref, fast, timing_images, 1, args.rounds),
            "speed_b4": paired_speed(speed_ref, fast, timing_images, 4, max(4, args.rounds // 4)),
            "agreement": agreement(ref, got),
            "recall": {name: recall_at_1(datasets[name], got[name]) for name in datasets},
        })
        tqdm.write(format_table(rows[-1:], fp32_recall).splitlines()[-1])
        if kernels:
            tqdm.write(f"  kernels: {kernels}")
    table = format_table(rows, fp32_recall)
    legend = "\n".join(f"- {v.name}: {v.describe()}" for v in chosen)
    kernels_text = "\n".join(f"- {r['variant']} kernels: {r['kernels']}" for r in rows if r["kernels"])
    failures = "".join(f"\n- failed: {f}" for f in failed)
    print(f"\n{table}\n\n{legend}{failures}\n\n{kernels_text}\n\nload average at the end {load_average()}")
    (OUT / "table.md").write_text(f"{table}\n\n{legend}{failures}\n\n{kernels_text}\n")
    (OUT / "results.json").write_text(json.dumps({"fp32_recall_at_1": fp32_recall, "speed_reference": args.reference,
                                                  "onednn_max_cpu_isa": isa, "rows": rows, "failed": failed},
                                                 indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
