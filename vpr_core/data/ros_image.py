"""sensor_msgs/Image and CompressedImage to RGB uint8, for messages from bags or from a live node.

Works on any object with the message's fields (rosbags or rclpy messages alike), so ``vpr_core``
needs no ROS import. Malformed messages (unknown encoding, step or size that do not match the
dimensions, undecodable, truncated, too small or too large images, see ``image_check``) raise
``DataError`` saying what is wrong.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageError
from rosbags.image.image import CONVERSIONS, Format, to_cvtype

from vpr_core.data.frame import DataError
from vpr_core.data.image_check import check_size, decode_image


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """An Image or CompressedImage message as a C-contiguous, writable uint8 ``[H, W, 3]`` RGB array."""
    rgb = compressed_to_rgb(msg) if hasattr(msg, "format") else raw_to_rgb(msg)
    return np.require(rgb, dtype=np.uint8, requirements=["C", "W"])


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """Decoded under ``image_check``'s rules (size from the header before decoding, complete data).

    Not rosbags-image's compressed_image_to_cvimage: that one asserts on undecodable data and rejects
    grey JPEG/PNG when asked for RGB; decoding straight to RGB handles both.
    """
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size == 0:
        raise DataError(f"CompressedImage (format {msg.format!r}) has no data")
    return decode_image(data, f"CompressedImage (format {msg.format!r}, {data.size} bytes)")


def raw_to_rgb(msg: Any) -> np.ndarray:
    """An Image message as RGB: rows unpadded (``step``), bytes put in this machine's order
    (``is_bigendian``), colour converted by OpenCV, 16-bit scaled to 8 bits with rounding as cv_bridge
    does (rosbags-image truncates). The size is checked before any pixel array is made."""
    height, width, step, encoding = int(msg.height), int(msg.width), int(msg.step), str(msg.encoding)
    try:
        _, fmt, typestr, channels = to_cvtype(encoding)
    except ImageError:
        raise DataError(f"Image encoding {encoding!r} is not supported") from None
    dtype = np.dtype(typestr)
    if fmt == Format.GENERIC and (dtype not in (np.uint8, np.uint16) or channels != 3):
        raise DataError(f"Image encoding {encoding!r} cannot be converted to RGB: only 3-channel 8UC3 / 16UC3 "
                        "are taken as colour; publish rgb8, bgr8, mono8 or another named colour encoding")
    if height <= 0 or width <= 0:
        raise DataError(f"Image has no pixels ({width}x{height})")
    check_size(width, height, f"Image ({encoding})")
    row_bytes = width * channels * dtype.itemsize
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
    rows = data.reshape(height, step)[:, :row_bytes]
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = np.ascontiguousarray(rows.view(wire).reshape(shape), dtype=dtype)
    code = CONVERSIONS.get((fmt, Format.RGB))  # rosbags-image's table: encoding -> cv2.COLOR_* code
    try:
        rgb = cv2.cvtColor(pixels, code) if code is not None else pixels
    except cv2.error as err:
        raise DataError(f"Image encoding {encoding!r} ({width}x{height}) cannot be converted to RGB: "
                        f"{str(err).strip().splitlines()[-1]}") from None
    if rgb.dtype == np.uint16:
        rgb = cv2.convertScaleAbs(rgb, alpha=255.0 / 65535.0)
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
