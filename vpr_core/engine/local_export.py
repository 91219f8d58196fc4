"""ONNX export of the encoder with the FoL++ local branch: global and local outputs from one graph.

Why one graph: the local branch reads the same backbone map as the global heads, so a deployment that
uses local re-ranking runs the backbone once. The graph's outputs are the global encoder's two
(same names and meaning) plus every patch's local descriptor and reliability; keeping the top
fraction of patches stays in Python (``select_patches``), like bit packing. Before the file is
written the graph is run with ONNX Runtime next to the torch model, with the same thresholds as the
global outputs (descriptor cosine >= 0.999 in fp32, for the global descriptor and for every patch's
local descriptor) and reliability within 1e-3.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vpr_core.engine.errors import ExportError
from vpr_core.engine.onnx_description import INPUT_NAME, OUTPUT_NAMES, write_description
from vpr_core.engine.onnx_export import CHECK_BATCH, MIN_COSINE, OPSET, describe
from vpr_core.fsio import atomic_write_bytes
from vpr_core.model import VPRModel
from vpr_core.model.local_branch import LocalBranch, branch_fingerprint
from vpr_core.model.preprocess import preprocess

LOCAL_OUTPUT_NAMES = (*OUTPUT_NAMES, "local_descriptors", "reliability")
MAX_RELIABILITY_DIFF = 1e-3


class _WithLocal(nn.Module):
    def __init__(self, model: VPRModel, branch: LocalBranch) -> None:
        super().__init__()
        self.model = model
        self.branch = branch

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.backbone(images)
        logits, desc = self.model.heads(features)
        local, rel = self.branch(features)
        return logits, nn.functional.normalize(desc, dim=-1), local, rel


def export_local_onnx(model: VPRModel, branch: LocalBranch, path: Path | str, opset: int = OPSET) -> dict[str, Any]:
    """Writes the fp32 graph with global and local outputs to ``path`` (atomically) and its JSON
    description beside it; a graph that does not compute the torch model raises ExportError."""
    path = Path(path)
    net = _WithLocal(model.eval(), branch.eval()).eval()   # see export_onnx: the exporter restores this flag
    h, w = model.config.image_size
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        try:
            torch.onnx.export(net, (torch.zeros(3, 3, h, w),), buffer, dynamo=False, opset_version=opset,
                              do_constant_folding=True, input_names=[INPUT_NAME],
                              output_names=list(LOCAL_OUTPUT_NAMES),
                              dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *LOCAL_OUTPUT_NAMES)})
        except Exception as exc:  # the exporter raises many types; all mean "this model does not export"
            raise ExportError(f"torch.onnx.export failed for the local graph of {model.config.preset!r}: "
                              f"{type(exc).__name__}: {str(exc)[:800]}") from exc
    data = buffer.getvalue()
    import onnx  # here, not at the top: a node that finds its graph cached never pays onnx's import (~1 s)

    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    check = verify_local_graph(data, net)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    description = describe(model.config, path, "fp32", opset, check)
    patches = "patches = h' x w' of the backbone map (local_branch.grid), row-major"
    description["outputs"] += [
        {"name": LOCAL_OUTPUT_NAMES[2], "dtype": "float32", "shape": ["batch", "patches", branch.config.dim],
         "meaning": f"local descriptor of every patch, L2-normalised ({patches})"},
        {"name": LOCAL_OUTPUT_NAMES[3], "dtype": "float32", "shape": ["batch", "patches"],
         "meaning": f"reliability of every patch in (0, 1); keep the top {branch.config.keep_fraction:.0%} "
                    f"(vpr_core.model.local_branch.select_patches)"},
    ]
    with torch.no_grad():
        grid = [int(d) for d in model.backbone_features(torch.zeros(1, 3, h, w)).shape[2:]]
    description["local_branch"] = {"fingerprint": branch_fingerprint(branch),
                                   "keep_fraction": branch.config.keep_fraction, "grid": grid}
    write_description(path, description)
    return description


def verify_local_graph(data: bytes, net: _WithLocal) -> dict[str, float]:
    """ONNX Runtime (CPU) against the torch model on preprocessed noise images at two batch sizes."""
    from vpr_core.engine.ort_session import cpu_session

    session = cpu_session(data)
    rng = np.random.default_rng(0)
    worst = {"min_descriptor_cosine": 1.0, "min_local_descriptor_cosine": 1.0,
             "max_logit_abs_diff": 0.0, "max_reliability_abs_diff": 0.0}
    for n in CHECK_BATCH:
        batch = preprocess(rng.integers(0, 256, size=(n, 96, 128, 3), dtype=np.uint8), net.model.config)
        got = session.run(list(LOCAL_OUTPUT_NAMES), {INPUT_NAME: batch})
        with torch.no_grad():
            ref = [t.float().numpy() for t in net(torch.from_numpy(batch))]
        for g, r, name in zip(got, ref, LOCAL_OUTPUT_NAMES):
            if g.shape != r.shape:
                raise ExportError(f"the local graph's {name} has shape {g.shape} at batch {n}; torch gives {r.shape}")
        worst["min_descriptor_cosine"] = min(worst["min_descriptor_cosine"], float((got[1] * ref[1]).sum(-1).min()))
        worst["min_local_descriptor_cosine"] = min(worst["min_local_descriptor_cosine"],
                                                   float((got[2] * ref[2]).sum(-1).min()))
        worst["max_logit_abs_diff"] = max(worst["max_logit_abs_diff"], float(np.abs(got[0] - ref[0]).max()))
        worst["max_reliability_abs_diff"] = max(worst["max_reliability_abs_diff"], float(np.abs(got[3] - ref[3]).max()))
    if not (worst["min_descriptor_cosine"] >= MIN_COSINE["fp32"]
            and worst["min_local_descriptor_cosine"] >= MIN_COSINE["fp32"]
            and worst["max_reliability_abs_diff"] <= MAX_RELIABILITY_DIFF):
        raise ExportError(f"the exported local graph does not compute the model: {worst}")
    return worst
