"""The frame record that every reader yields, and the protocol of a frame source.

One record for all readers so that map building, replay and evaluation never care where a frame
came from: an image folder, a benchmark layout or a bag.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from vpr_core.loop.camera_model import CameraModel


class DataError(ValueError):
    """Bad input data: the message names the file (or bag and topic) and what is wrong with it."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One camera image with what is known about where and when it was taken.

    ``pose`` is float64 ``[x, y, z, qx, qy, qz, qw]`` in the frame of the odometry or pose topic it
    came from; ``utm`` is ``(east, north)`` in metres, as given by benchmark file names; ``latlon``
    is in degrees (WGS84). Each is None when the source does not say. ``pose_frame`` names the frame
    of ``pose`` ("" when the source does not say); ``frame_id`` is the camera's frame (the image
    header's). ``camera_model`` holds the intrinsics where known (CameraInfo or fixed), and ``depth``
    a depth image registered to ``rgb`` (uint16 millimetres or float32 metres), both only used by
    the geometric verification of loop closures.
    """

    index: int
    rgb: np.ndarray
    name: str
    source: str
    camera: str = ""
    stamp_ns: int | None = None
    pose: np.ndarray | None = None
    latlon: tuple[float, float] | None = None
    utm: tuple[float, float] | None = None
    pose_frame: str = ""
    frame_id: str = ""
    camera_model: CameraModel | None = None
    depth: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Checked here, once, so that every consumer may rely on the contract of the encoder input.
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise DataError(
                f"{self.source}: frame {self.name!r} is {self.rgb.dtype} {self.rgb.shape}, "
                "expected uint8 [H, W, 3] RGB"
            )
        if self.pose is not None and np.shape(self.pose) != (7,):
            raise DataError(
                f"{self.source}: frame {self.name!r} has pose of shape {np.shape(self.pose)}, "
                "expected [x, y, z, qx, qy, qz, qw]"
            )


@runtime_checkable
class FrameSource(Protocol):
    """A lazy, re-iterable sequence of frames in capture order.

    Iterating loads one frame at a time, so a data set never has to fit in memory; ``len`` is the
    number of frames that iterating will yield (for a bag read with ``skip_bad``, minus the
    malformed messages it skips).
    """

    name: str

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Frame]: ...
