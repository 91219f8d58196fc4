"""Released SelaVPR++ and SAGE training checkpoints: `vpr import` writes a checkpoint whose heads are the
file's tensors, files that pickle anything but weights and numpy values are refused unread, and the
key mappings place every released name."""

from __future__ import annotations

import dataclasses
import importlib
import random

import numpy as np
import pytest
import torch

from vpr_core.cli import run_module
from vpr_core.model import CheckpointError, InteractConfig, SoftPConfig, build_model, load_checkpoint, preset_config
from vpr_core.model.released import (SAGE_HASH_NOTE, detect_kind, import_released, map_sage_state_dict,
                                     map_selavpr_state_dict, read_training_checkpoint)

PRESET = "vits14-test"   # random-backbone ViT-S/14 with the SelaVPR++ head, at 224 px
SIZE = 112               # the library-level tests run a config of it at this size

pytestmark = pytest.mark.usefixtures("module_torch_threads")  # model building too, not only the tests


class TrainingState:
    """Stands for a class of the authors' code pickled into a checkpoint: it must never be unpickled."""

    def __init__(self) -> None:
        self.lr = 1e-5


def _vpr_import(*argv) -> int:
    try:
        return run_module(importlib.import_module("vpr_core.import_released"), "vpr import", [str(a) for a in argv])
    except SystemExit as exc:   # argparse's refusals exit
        return int(exc.code)


def _small(**changes):
    return dataclasses.replace(preset_config(PRESET), image_size=(SIZE, SIZE), **changes)


def _values(shapes: dict, seed: int) -> dict:
    """Tensors of these shapes at the scale of trained ones, none at our heads' initialisation."""
    gen = torch.Generator().manual_seed(seed)

    def value(name: str, shape: tuple) -> torch.Tensor:
        if name.endswith("num_batches_tracked"):
            return torch.randint(0, 9, shape, generator=gen)
        if name.endswith((".p", "running_var")):      # GeM exponents and variances are positive
            return 2.5 + torch.rand(shape, generator=gen)
        return 0.02 * torch.randn(shape, generator=gen)

    return {k: value(k, s) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The backbone's tensors and the file holding them, as the official DINOv2 weights would be."""
    state = {k: v.clone() for k, v in build_model(PRESET).backbone.state_dict().items()}
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14.pth"
    torch.save(state, path)
    return state, path


def _released_adapter(prefix: str, dim: int, hidden: int, c1: int, red: int, c3: int, c5: int) -> dict:
    """Names and shapes of one released MulConvAdapter, written from the released module tree."""
    shapes = {f"{prefix}.D_fc1.weight": (hidden, dim), f"{prefix}.D_fc1.bias": (hidden,),
              f"{prefix}.D_fc2.weight": (dim, hidden), f"{prefix}.D_fc2.bias": (dim,)}
    convs = {"branch1": (c1, hidden, 1), "branch2.0": (red, hidden, 1), "branch2.1": (c3, red, 3),
             "branch3.0": (red, hidden, 1), "branch3.1": (c5, red, 5)}
    for name, (cout, cin, k) in convs.items():
        shapes[f"{prefix}.{name}.conv.weight"] = (cout, cin, k, k)
        shapes[f"{prefix}.{name}.conv.bias"] = (cout,)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}.bn.{stat}"] = (cout,)
        shapes[f"{prefix}.{name}.bn.num_batches_tracked"] = ()
    return shapes


def _released_selavpr_file(backbone_state: dict, dim: int = 384, out_dim: int = 1024, n: int = 12) -> dict:
    """What a SelaVPR++-style training script saves (``util.make_state``): weights under ``module.``,
    the epoch, the recall array and the best R@5 as numpy values, and the random generators' states."""
    hidden = dim // 2
    shapes = {}
    for branch in ("adapters", "adapters_hashing"):
        for i in range(n):
            shapes.update(_released_adapter(f"module.backbone.{branch}.{i}", dim, hidden, hidden // 2,
                                            hidden // 16, hidden // 4, hidden // 4))
    shapes.update({"module.linear1.weight": (dim, dim), "module.linear1.bias": (dim,), "module.aggregation.1.p": (1,),
                   "module.linear2.weight": (out_dim, dim), "module.linear2.bias": (out_dim,),
                   "module.linear3.weight": (dim, dim), "module.linear3.bias": (dim,),
                   "module.aggregation_hashing.1.p": (1,),
                   "module.linear4.weight": (512, dim), "module.linear4.bias": (512,)})
    state = _values(shapes, seed=11)
    state.update({f"module.backbone.{k}": v.clone() for k, v in backbone_state.items()})
    return {"epoch_num": 3, "model_state_dict": state, "recalls": np.array([88.2, 94.6, 96.1]),
            "best_r5": np.float64(94.6), "not_improved_num": 0, "torch_state": torch.get_rng_state(),
            "random_state": random.Random(0).getstate(), "numpy_random_state": np.random.RandomState(0).get_state()}


@pytest.fixture(scope="module")
def selavpr_file(weights, tmp_path_factory):
    data = _released_selavpr_file(weights[0])
    path = tmp_path_factory.mktemp("release") / "SelaVPRplusplus_small_rerank.pth"
    torch.save(data, path)
    return path, data


def test_import_command_writes_a_checkpoint_holding_the_files_heads(selavpr_file, weights, tmp_path, capsys):
    path, data = selavpr_file
    out = tmp_path / "imported"
    assert _vpr_import("--checkpoint", path, "--backbone-weights", weights[1], "--preset", PRESET, "--out", out) == 0
    assert f"selavpr++ as preset '{PRESET}', epoch 3" in capsys.readouterr().out

    loaded = load_checkpoint(out)                  # the recorded backbone path, as --checkpoint DIR would
    _, mapped = map_selavpr_state_dict(data["model_state_dict"])
    head = loaded.head.state_dict()
    assert sorted(head) == sorted(mapped)
    assert all(torch.equal(head[k], mapped[k]) for k in mapped)
    assert torch.equal(head["hash_side.adapters.11.D_fc2.weight"],
                       data["model_state_dict"]["module.backbone.adapters_hashing.11.D_fc2.weight"])

    direct = build_model(PRESET, backbone_weights=weights[1]).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        untrained = direct(x)
        direct.head.load_state_dict(mapped, strict=True)
        ours, theirs = loaded.eval()(x), direct(x)
    assert torch.isfinite(theirs[1]).all() and not torch.allclose(theirs[1], untrained[1])   # the heads matter
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_numpy_values_of_numpy_1_and_2_files_are_read(selavpr_file, tmp_path):
    path, data = selavpr_file
    read = read_training_checkpoint(path)
    assert isinstance(read["recalls"], np.ndarray) and read["recalls"].tolist() == data["recalls"].tolist()
    assert type(read["best_r5"]) is np.float64 and read["best_r5"] == 94.6
    assert np.array_equal(read["numpy_random_state"][1], data["numpy_random_state"][1])   # uint32 array
    # numpy 1 named its pickled functions numpy.core.*; the legacy (non-zip) format keeps GLOBALs as text
    legacy = tmp_path / "numpy1.pth"
    torch.save({"recalls": data["recalls"], "best_r5": data["best_r5"]}, legacy, _use_new_zipfile_serialization=False)
    raw = legacy.read_bytes()
    assert raw.count(b"numpy._core.multiarray\n") == 2
    legacy.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    read = read_training_checkpoint(legacy)
    assert read["recalls"].tolist() == data["recalls"].tolist() and read["best_r5"] == 94.6


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_file_pickling_a_class_is_refused_and_nothing_written(selavpr_file, weights, tmp_path, capsys, zipped):
    data = {**selavpr_file[1], "optimizer": TrainingState()}
    path = tmp_path / "with_class.pth"
    torch.save(data, path, _use_new_zipfile_serialization=zipped)
    out = tmp_path / "out"
    assert _vpr_import("--checkpoint", path, "--backbone-weights", weights[1], "--preset", PRESET, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vpr import: error: refusing ")
    assert ".TrainingState" in err and "could run code" in err
    assert not out.exists()


def test_bad_requests_exit_2_with_one_line(selavpr_file, weights, tmp_path, capsys):
    path, weights_path = selavpr_file[0], weights[1]
    out = tmp_path / "out"
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    cases = [
        (("--checkpoint", tmp_path / "missing.pth", "--preset", PRESET), "checkpoint file not found"),
        (("--checkpoint", tmp_path / "notes.pth", "--preset", PRESET), "as a PyTorch checkpoint"),
        (("--checkpoint", path, "--preset", PRESET, "--kind", "sage"), "is a selavpr++ checkpoint, not sage"),
        (("--checkpoint", path, "--preset", "sage-b"), "preset 'sage-b' has a 'sage' head"),
        (("--checkpoint", path), "no released selavpr++ preset has token width 384"),
        (("--checkpoint", path, "--kind", "selavpr"), "argument --kind: invalid choice"),
    ]
    for argv, reason in cases:
        assert _vpr_import(*argv, "--backbone-weights", weights_path, "--out", out) == 2, reason
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err, err
        assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert _vpr_import("--checkpoint", path, "--backbone-weights", weights_path, "--out", out) == 2
    assert "already exists and is not an empty directory" in capsys.readouterr().err


def test_selavpr_import_refuses_another_backbone_and_float_only_files(selavpr_file, weights, tmp_path):
    state = dict(selavpr_file[1]["model_state_dict"])
    state["module.backbone.blocks.2.ls1.gamma"] = state["module.backbone.blocks.2.ls1.gamma"] + 1
    torch.save({"model_state_dict": state}, tmp_path / "tampered.pth")
    with pytest.raises(CheckpointError, match=r"backbone tensor 'blocks\.2\.ls1\.gamma' differs"):
        import_released(tmp_path / "tampered.pth", _small(), backbone_weights=weights[1])
    float_only = {k: v for k, v in selavpr_file[1]["model_state_dict"].items()
                  if "hashing" not in k and "linear3" not in k and "linear4" not in k}
    torch.save({"model_state_dict": float_only}, tmp_path / "float_only.pth")
    with pytest.raises(CheckpointError, match="no hashing branch"):
        import_released(tmp_path / "float_only.pth", _small(), backbone_weights=weights[1])


def test_released_key_mappings_name_what_they_cannot_place():
    backbone, head = map_selavpr_state_dict({"module.backbone.blocks.0.norm1.weight": torch.ones(1),
                                             "module.linear4.bias": torch.ones(1)})
    assert list(backbone) == ["blocks.0.norm1.weight"] and list(head) == ["hash_branch.fc.bias"]
    with pytest.raises(ValueError, match="no equivalent for 'module.head.weight'"):
        map_selavpr_state_dict({"module.head.weight": torch.ones(1)})
    sage = {"module.backbone.model.norm.weight": torch.ones(1), "module.backbone.model.cls_token": torch.ones(1),
            "module.backbone.gpn_norms.2.projection.3.bias": torch.ones(1),
            "module.aggregator.single_branch.0.weight": torch.ones(1),
            "module.aggregator.score.3.weight": torch.ones(1), "module.encoder.layers.1.linear2.weight": torch.ones(1)}
    backbone, head = map_sage_state_dict(sage)
    assert list(backbone) == ["cls_token"]
    assert sorted(head) == ["float_branch.score.3.weight", "interact.encoder.layers.1.linear2.weight",
                            "norm.weight", "recalib.dpn.2.projection.3.bias"]
    assert detect_kind(sage) == "sage" and detect_kind({"module.linear1.bias": 0}) == "selavpr++"
    with pytest.raises(CheckpointError, match="names of neither"):
        detect_kind({"module.head.weight": 0})


def _sage_config(interact: bool):
    softp = SoftPConfig(num_clusters=8, cluster_dim=16, token_dim=64)
    return _small(preset="sage-test", head="sage", side=None, aggregation="softp", softp=softp, dim=softp.dim,
                  recalib_blocks=4, interact=InteractConfig(layers=2, d_model=64, heads=4, ff_dim=128) if interact
                  else None)


def _released_sage_names() -> set[str]:
    """SAGE's names (after ``module.``) for recalib_blocks=4 and 2 encoder layers, from the released module tree."""
    names = {"backbone.model.norm.weight", "backbone.model.norm.bias"}
    for i in range(4):
        names.update(f"backbone.gpn_norms.{i}.projection.{j}.{t}" for j in (0, 3) for t in ("weight", "bias"))
    for name in ("soft_weighting.predictor.0", "soft_weighting.predictor.2", "token_features.0", "token_features.2",
                 "cluster_features.0", "cluster_features.3", "score.0", "score.3", "gpn.projection.0",
                 "gpn.projection.3", "single_branch.0", "single_branch.3"):
        names.update(f"aggregator.{name}.{t}" for t in ("weight", "bias"))
    for i in range(2):
        names.update(f"encoder.layers.{i}.{name}" for name in (
            "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
            "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
            "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"))
    return names


def test_sage_import_loads_its_heads_and_says_what_the_binary_stage_uses(weights, tmp_path):
    names = _released_sage_names()
    model = build_model(_sage_config(interact=True), backbone_weights=weights[1])
    ours = model.head.state_dict()
    _, mapped = map_sage_state_dict({f"module.{n}": torch.zeros(1) for n in names})
    assert set(mapped) == {k for k in ours if not k.startswith("hash_branch.")}   # every head tensor but hashing

    ours_of = {n: k for n in names for k in map_sage_state_dict({n: torch.zeros(1)})[1]}
    shapes = {f"module.{n}": tuple(ours[ours_of[n]].shape) if n in ours_of else (4, 4) for n in names}
    state = {**_values(shapes, seed=5), **{f"module.backbone.model.{k}": v for k, v in weights[0].items()}}
    torch.save({"epoch_num": 9, "model_state_dict": state, "best_r5": np.float64(90.0)}, tmp_path / "SAGE.pth")

    imported = import_released(tmp_path / "SAGE.pth", _sage_config(interact=True), backbone_weights=weights[1])
    head = imported.model.head.state_dict()
    assert (imported.kind, imported.epoch) == ("sage", 9)
    assert torch.equal(head["interact.encoder.layers.1.linear2.weight"],
                       state["module.encoder.layers.1.linear2.weight"])
    assert torch.equal(head["hash_branch.fc.weight"], ours["hash_branch.fc.weight"])   # untrained: no such branch
    assert imported.notes[0] == SAGE_HASH_NOTE and "batch" in imported.notes[1]

    per_frame = import_released(tmp_path / "SAGE.pth", _sage_config(interact=False), backbone_weights=weights[1])
    assert not per_frame.model.config.batch_dependent
    assert torch.equal(per_frame.model.head.state_dict()["float_branch.score.3.weight"],
                       state["module.aggregator.score.3.weight"])
    assert "InteractHead (24 tensors) is left out" in per_frame.notes[1]
