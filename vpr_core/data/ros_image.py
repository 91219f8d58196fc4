"""sensor_msgs/Image and CompressedImage to RGB uint8, for messages from bags or from a live node.

Works on any object with the message's fields (rosbags or rclpy messages alike), so ``vpr_core``
needs no ROS import. Malformed messages (unknown encoding, step or size that do not match the
dimensions, undecodable compressed data) raise ``DataError`` saying what is wrong.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageError, image_to_cvimage
from rosbags.image.image import to_cvtype

from vpr_core.data.frame import DataError


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """An Image or CompressedImage message as a C-contiguous, writable uint8 ``[H, W, 3]`` RGB array."""
    rgb = compressed_to_rgb(msg) if hasattr(msg, "format") else raw_to_rgb(msg)
    return np.require(rgb, dtype=np.uint8, requirements=["C", "W"])


def compressed_to_rgb(msg: Any) -> np.ndarray:
    # Decoded here rather than with rosbags-image's compressed_image_to_cvimage: that one asserts on
    # undecodable data and rejects grey JPEG/PNG when asked for RGB; decoding straight to RGB handles both.
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"CompressedImage (format {msg.format!r}) has no data")
    rgb = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise DataError(f"CompressedImage (format {msg.format!r}, {data.size} bytes) could not be decoded")
    return rgb


def raw_to_rgb(msg: Any) -> np.ndarray:
    height, width, step, encoding = int(msg.height), int(msg.width), int(msg.step), str(msg.encoding)
    try:
        _, _, typestr, channels = to_cvtype(encoding)
    except ImageError:
        raise DataError(f"Image encoding {encoding!r} is not supported") from None
    if height <= 0 or width <= 0:
        raise DataError(f"Image has no pixels ({width}x{height})")
    row_bytes = width * channels * np.dtype(typestr).itemsize
    if step < row_bytes:
        raise DataError(
            f"Image step {step} is smaller than width {width} x {row_bytes // width} bytes per pixel "
            f"({encoding}) = {row_bytes}"
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise DataError(
            f"Image data has {data.size} bytes, expected step {step} x height {height} = {step * height}"
        )
    if step != row_bytes:
        # rosbags-image assumes rows without padding; drop the padding first.
        data = np.ascontiguousarray(data.reshape(height, step)[:, :row_bytes]).reshape(-1)
    packed = SimpleNamespace(
        height=height, width=width, encoding=encoding, is_bigendian=msg.is_bigendian, data=data
    )
    try:
        rgb = image_to_cvimage(packed, "rgb8")
    except (ImageError, cv2.error) as err:
        raise DataError(f"Image encoding {encoding!r} cannot be converted to RGB: {err}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"Image encoding {encoding!r} did not convert to 3-channel RGB (got {rgb.shape})")
    return rgb


DEPTH_ENCODINGS = {"16UC1": (np.uint16, 1e-3), "mono16": (np.uint16, 1e-3), "32FC1": (np.float32, 1.0)}


def depth_msg_to_metres(msg: Any) -> np.ndarray:
    """A depth Image (16UC1 / mono16 millimetres, REP-118's 32FC1 metres) as float32 ``[H, W]``
    metres, NaN where the sensor had no reading (0, NaN or infinite)."""
    height, width, step, encoding = int(msg.height), int(msg.width), int(msg.step), str(msg.encoding)
    if encoding not in DEPTH_ENCODINGS:
        raise DataError(f"depth Image encoding {encoding!r} is not one of {', '.join(DEPTH_ENCODINGS)}")
    dtype, scale = DEPTH_ENCODINGS[encoding]
    if height <= 0 or width <= 0:
        raise DataError(f"depth Image has no pixels ({width}x{height})")
    row_bytes = width * np.dtype(dtype).itemsize
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if step < row_bytes or data.size != step * height:
        raise DataError(f"depth Image has {data.size} bytes with step {step}; expected step >= {row_bytes} and "
                        f"step x height {height} bytes")
    rows = data.reshape(height, step)[:, :row_bytes]
    order = ">" if msg.is_bigendian else "<"
    values = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(order)).astype(np.float32) * scale
    values[~np.isfinite(values) | (values <= 0)] = np.nan
    return values
