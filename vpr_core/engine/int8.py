"""INT8 on the CPU: the encoder's ONNX graph statically quantized, calibrated on a user's own images.

Why static INT8: on robots without an NVIDIA GPU the ONNX Runtime encoder is most of the cost of every
frame, and EfficientNet-Lite was designed to quantize (ReLU6, no squeeze-excitation). The recipe is
the one ``bench/int8.py`` found best for the kind of model on data the scores are not reported on
(README "INT8 on the CPU"): QDQ format, per-channel signed weights, unsigned activations, MinMax
calibration, the backbone quantized from one convolution to the next (Conv, Add, Clip, Pad) except
its most sensitive parts (``RECIPES``: which ones depends on the heads), and the heads (aggregation,
projections, normalisation: everything after the backbone) left in float.

The calibration images set the ranges every activation is clipped to, so they should be the frames
the robot will see: its map's (``calibration_images``). The quantized graph computes other
descriptors than fp32 (mean cosine 0.97-0.99 on real images), so it is a different encoder: its
fingerprint is the fp32 one plus the calibration digest (which covers the recipe), and a map built with fp32 is refused by an
INT8 node (and the other way round). The calibration set decides the quantization ranges, so its
digest (of the preprocessed images, not of their paths) is part of the cache key: another set
re-quantizes the cached graph in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from vpr_core.engine.config import EncoderConfig
from vpr_core.engine.engine_cache import build_lock, file_sha256
from vpr_core.engine.errors import ExportError
from vpr_core.engine.onnx_description import INPUT_NAME, OUTPUT_NAMES, read_description, write_description
from vpr_core.fsio import atomic_write_bytes
from vpr_core.model import ModelConfig, pack_codes
from vpr_core.model.preprocess import preprocess

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "/model/backbone/"
QUANTIZED_OPS = ("Conv", "Add", "Clip", "Pad")
METHOD = "minmax"
RECIPE_VERSION = 3
# Refusal floor of the quantized graph against fp32 on the calibration images: the recipes give a
# mean cosine of 0.97-0.99 on real images (Corridor and Nordland); the whole-graph and per-tensor
# attempts that lost the descriptor fell to 0.3-0.7 (README), so a graph under 0.9 is not written.
MIN_MEAN_COSINE = 0.9


@dataclasses.dataclass(frozen=True)
class Int8Recipe:
    """Which backbone parts stay in float (node-name prefixes under the backbone); the heads always do."""

    name: str
    float_parts: tuple[str, ...]

    def describe(self) -> str:
        kept = ", ".join(p.removeprefix(BACKBONE_PREFIX).strip("/") for p in self.float_parts)
        return f"qdq per-channel u8s8 {METHOD}, backbone Conv/Add/Clip/Pad but {kept}; heads float"


# Chosen per model by bench/int8.py on Corridor and the Nordland development slice (README "INT8 on
# the CPU"), the fastest recipe within a point of fp32 R@1 on both, else the smallest largest loss:
# - fused models (the default lite0-fused): stem and block 0 float, 1.51x fp32 at batch 1 on one
#   thread, R@1 73.9 -> 73.9 and 14.2 -> 13.8; blocks 0, 1, 3 float there was slower (1.24x) and lost
#   2.7 and 1.6 points.
# - the unfused trained heads (lite0-nordland): blocks 0, 1 and 3 float (1.24x, +0.9 / -1.2); stem and
#   block 0 float lost 0.9 / 2.8 points with them. Kept for every model not measured otherwise.
RECIPES = {
    "stem-block0": Int8Recipe("stem-block0", (f"{BACKBONE_PREFIX}_conv_stem/", f"{BACKBONE_PREFIX}_blocks.0/")),
    "blocks-0-1-3": Int8Recipe("blocks-0-1-3", tuple(f"{BACKBONE_PREFIX}_blocks.{i}/" for i in (0, 1, 3))),
}


def recipe_for(model_config: ModelConfig) -> Int8Recipe:
    """The recipe measured best for this kind of model (see RECIPES)."""
    return RECIPES["stem-block0" if model_config.fusion is not None else "blocks-0-1-3"]


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The preprocessed calibration batch, where it came from, and its digest (the cache key part)."""

    batch: np.ndarray  # float32 [N, 3, h, w]
    source: str
    frames: int
    sha256: str
    recipe: Int8Recipe

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "frames": self.frames, "method": METHOD, "sha256": self.sha256,
                "recipe": self.recipe.name, "recipe_details": self.recipe.describe(),
                "recipe_version": RECIPE_VERSION}


def calibration_images(spec: str, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly over the frame sources of ``spec`` (``;`` between sources), in
    equal shares; all of a source's frames when it has fewer than its share.

    Several sources so that a robot working in several places (or seasons) can calibrate on all of
    them: the MinMax ranges are those of the calibration frames, and activations outside them clip.
    """
    from vpr_core.data import open_source

    sources = [part.strip() for part in spec.split(";") if part.strip()]
    if not sources:
        raise ValueError(f"calibration source {spec!r} names no frame source")
    images: list[np.ndarray] = []
    for i, part in enumerate(sources):
        source = open_source(part)
        share = count // len(sources) + (i < count % len(sources))
        if len(source) == 0:
            raise ValueError(f"calibration source {part!r} has no frames")
        picks = set(np.linspace(0, len(source) - 1, min(max(share, 1), len(source))).round().astype(int).tolist())
        images += [frame.rgb for j, frame in enumerate(source) if j in picks]
    return images


def load_calibration(spec: str, count: int, model_config: ModelConfig) -> Calibration:
    """The calibration batch of ``spec`` preprocessed for ``model_config``, digested with the
    model's recipe (another recipe computes other descriptors, so it is another encoder)."""
    images = calibration_images(spec, count)
    batch = np.concatenate([preprocess(image[None], model_config) for image in images])
    recipe = recipe_for(model_config)
    digest = hashlib.sha256()
    digest.update(f"{METHOD};{RECIPE_VERSION};{recipe.name};{batch.shape}".encode())
    digest.update(np.ascontiguousarray(batch).tobytes())
    return Calibration(batch, spec, len(images), digest.hexdigest(), recipe)


def int8_fingerprint(base_fingerprint: str, calibration_sha256: str) -> str:
    """The INT8 encoder's fingerprint: maps built with it are refused by fp32 and by other calibrations."""
    return f"{base_fingerprint}-int8-{calibration_sha256[:16]}"


class _Reader:
    """Calibration images one at a time: the node's batch shape, and what MinMax needs."""

    def __init__(self, batch: np.ndarray, input_name: str) -> None:
        self._rows = iter(range(len(batch)))
        self._batch = batch
        self._input = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        return None if row is None else {self._input: self._batch[row:row + 1]}

    def rewind(self) -> None:
        self._rows = iter(range(len(self._batch)))


def float_nodes(model: onnx.ModelProto, recipe: Int8Recipe) -> list[str]:
    """The heads (quantizing them cost 2 points of R@1) and the recipe's sensitive parts stay float."""
    return [node.name for node in model.graph.node
            if not node.name.startswith(BACKBONE_PREFIX) or node.name.startswith(recipe.float_parts)]


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs one root-logger INFO line per rescaled bias channel (hundreds for
    lite0); a CLI at INFO level would drown in them, so they are dropped while it runs."""
    def keep(record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize(fp32_path: Path, out_path: Path, calibration: Calibration, input_name: str) -> None:
    """Writes the quantized graph of ``fp32_path`` to ``out_path`` (atomically)."""
    import onnx  # here, not at the top: a node that finds its graph cached never pays onnx's import (~1 s)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(fp32_path))
    if not any(node.name.startswith(BACKBONE_PREFIX) and node.op_type == "Conv" for node in model.graph.node):
        raise ExportError(f"{fp32_path.name} has no convolutional backbone under {BACKBONE_PREFIX}; INT8 is "
                          "implemented for the EfficientNet-Lite presets only (use precision fp32)")
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".int8-") as tmp, _quiet_quantizer():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre), str(quantized), _Reader(calibration.batch, input_name),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=float_nodes(onnx.load(str(pre)), calibration.recipe), calibrate_method=CalibrationMethod.MinMax,
        )
        atomic_write_bytes(out_path, quantized.read_bytes())


def agreement(fp32_path: Path, int8_path: Path, batch: np.ndarray, input_name: str,
              output_names: tuple[str, str]) -> dict[str, float]:
    """Descriptor cosine (mean, min) and equal code bits of the two graphs on ``batch``."""
    from vpr_core.engine.ort_session import cpu_session

    outputs = []
    for path in (fp32_path, int8_path):
        logits, desc = cpu_session(path).run(list(output_names), {input_name: batch})
        outputs.append((pack_codes(logits), desc / np.linalg.norm(desc, axis=1, keepdims=True)))
    (codes32, desc32), (codes8, desc8) = outputs
    cosine = (desc32 * desc8).sum(axis=1)
    bits = np.unpackbits(codes32, axis=1) == np.unpackbits(codes8, axis=1)
    return {"mean_descriptor_cosine": float(cosine.mean()), "min_descriptor_cosine": float(cosine.min()),
            "code_bits_equal": float(bits.mean())}


def export_int8(fp32_path: Path, out_path: Path, calibration: Calibration, fp32_description: dict[str, Any]) -> dict:
    """Quantizes ``fp32_path`` into ``out_path`` and writes its description; refuses a graph under the floor."""
    quantize(fp32_path, out_path, calibration, INPUT_NAME)
    check = agreement(fp32_path, out_path, calibration.batch, INPUT_NAME, OUTPUT_NAMES)
    if not check["mean_descriptor_cosine"] >= MIN_MEAN_COSINE:
        out_path.unlink(missing_ok=True)
        raise ExportError(f"the INT8 graph of {fp32_description['fingerprint'][:12]} lost the descriptor: mean "
                          f"cosine to fp32 {check['mean_descriptor_cosine']:.3f} < {MIN_MEAN_COSINE} on the "
                          f"{calibration.frames} calibration images; use precision fp32")
    description = {
        **fp32_description,
        "fingerprint": int8_fingerprint(fp32_description["fingerprint"], calibration.sha256),
        "base_fingerprint": fp32_description["fingerprint"],
        "onnx_file": out_path.name,
        "onnx_sha256": file_sha256(out_path),
        "graph_precision": "int8",
        "calibration": calibration.record(),
        "check": check,
    }
    write_description(out_path, description)
    log.info("INT8 graph %s: mean cosine to fp32 %.3f, %.1f %% code bits equal on %d calibration images",
             out_path.name, check["mean_descriptor_cosine"], 100 * check["code_bits_equal"], calibration.frames)
    return description


def cached_int8_onnx(config: EncoderConfig, model_config: ModelConfig, fp32_path: Path,
                     calibration: Calibration) -> tuple[Path, dict[str, Any]]:
    """The INT8 graph in the cache beside the fp32 one, quantized again when the fp32 graph, the
    calibration set or the recipe changed, or the file does not match its checksum."""
    path = fp32_path.with_name(f"{model_config.fingerprint()}-int8.onnx")
    with build_lock(path.parent, path.stem):
        description = read_description(path)
        reason = "force_rebuild is set" if config.force_rebuild else _stale_reason(path, description, fp32_path,
                                                                                  calibration)
        if reason is None:
            log.info("reusing the INT8 graph %s", path)
            return path, description
        log.info("quantizing the model to INT8 at %s (%s)", path, reason)
        fp32_description = read_description(fp32_path)
        if fp32_description is None:
            raise ExportError(f"the fp32 export {fp32_path} has no description; export it again")
        return path, export_int8(fp32_path, path, calibration, fp32_description)


def _stale_reason(path: Path, description: dict[str, Any] | None, fp32_path: Path,
                  calibration: Calibration) -> str | None:
    if not path.is_file():
        return "no INT8 graph yet"
    if description is None:
        return "its description is missing or unreadable"
    fp32_description = read_description(fp32_path) or {}
    expected = {"base_fingerprint": fp32_description.get("fingerprint"),
                "vpr_core_version": fp32_description.get("vpr_core_version")}
    wrong = [f"{k} {description.get(k)!r} != {v!r}" for k, v in expected.items() if description.get(k) != v]
    stored = description.get("calibration") or {}
    if stored.get("sha256") != calibration.sha256:
        wrong.append(f"another calibration set ({stored.get('frames')} frames of {stored.get('source')!r}, now "
                     f"{calibration.frames} of {calibration.source!r})")
    if (stored.get("recipe"), stored.get("recipe_version")) != (calibration.recipe.name, RECIPE_VERSION):
        wrong.append(f"recipe {stored.get('recipe')!r} version {stored.get('recipe_version')!r} != "
                     f"{calibration.recipe.name!r} version {RECIPE_VERSION}")
    if wrong:
        return "; ".join(wrong)
    if description.get("onnx_sha256") != file_sha256(path):
        return "the file does not match the checksum in its description"
    return None
