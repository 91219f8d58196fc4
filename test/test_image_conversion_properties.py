"""Property tests (hypothesis) of the ROS image conversion: for every supported encoding, random
sizes, row padding (step), byte order and damaged data, ``raw_to_rgb`` either returns the pixels of
OpenCV's reference conversion or raises ``DataError``, never another exception; a truncated
CompressedImage is always refused."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpr_core.data import DataError
from vpr_core.data.image_check import MIN_SIDE
from vpr_core.data.ros_image import compressed_to_rgb, raw_to_rgb

# encoding -> (dtype, channels, cv2 code to RGB or None). Written out here, from cv_bridge's table,
# rather than taken from the implementation's (rosbags-image's), so that a wrong entry there shows.
# OpenCV names Bayer patterns one pixel off from ROS: ROS rggb is OpenCV's BayerBG.
ENCODINGS: dict[str, tuple[type, int, int | None]] = {
    "rgb8": (np.uint8, 3, None), "bgr8": (np.uint8, 3, cv2.COLOR_BGR2RGB),
    "rgba8": (np.uint8, 4, cv2.COLOR_RGBA2RGB), "bgra8": (np.uint8, 4, cv2.COLOR_BGRA2RGB),
    "mono8": (np.uint8, 1, cv2.COLOR_GRAY2RGB), "8UC3": (np.uint8, 3, None),
    "bayer_rggb8": (np.uint8, 1, cv2.COLOR_BayerBG2RGB), "bayer_bggr8": (np.uint8, 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (np.uint8, 1, cv2.COLOR_BayerGR2RGB), "bayer_grbg8": (np.uint8, 1, cv2.COLOR_BayerGB2RGB),
    "uyvy": (np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY), "yuv422": (np.uint8, 2, cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": (np.uint8, 2, cv2.COLOR_YUV2RGB_YUYV), "yuv422_yuy2": (np.uint8, 2, cv2.COLOR_YUV2RGB_YUYV),
    "nv12": (np.uint8, 1, cv2.COLOR_YUV2RGB_NV12), "nv21": (np.uint8, 1, cv2.COLOR_YUV2RGB_NV21),
    "rgb16": (np.uint16, 3, None), "bgr16": (np.uint16, 3, cv2.COLOR_BGR2RGB),
    "rgba16": (np.uint16, 4, cv2.COLOR_RGBA2RGB), "bgra16": (np.uint16, 4, cv2.COLOR_BGRA2RGB),
    "mono16": (np.uint16, 1, cv2.COLOR_GRAY2RGB), "16UC3": (np.uint16, 3, None),
    "bayer_rggb16": (np.uint16, 1, cv2.COLOR_BayerBG2RGB), "bayer_bggr16": (np.uint16, 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg16": (np.uint16, 1, cv2.COLOR_BayerGR2RGB), "bayer_grbg16": (np.uint16, 1, cv2.COLOR_BayerGB2RGB),
}
REFUSED_ENCODINGS = ["32FC1", "32FC3", "8SC3", "64FC3", "8UC1", "8UC4", "yuv444", "jpeg", "", "rgb 8"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """OpenCV's conversion of native-order pixels; 16-bit scaled to 8 with rounding, as cv_bridge's
    convertTo(CV_8U, 255/65535) does."""
    code = ENCODINGS[encoding][2]
    rgb = cv2.cvtColor(pixels, code) if code is not None else pixels
    if rgb.dtype == np.uint16:
        rgb = np.rint(rgb.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    return rgb


def message(pixels: np.ndarray, encoding: str, padding: int, bigendian: bool) -> SimpleNamespace:
    """An Image message with the fields the node and the bag reader see: rows of ``padding`` extra
    bytes, 16-bit samples in the stated byte order."""
    height, width = pixels.shape[:2]
    wire = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = wire.reshape(height, -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((height, padding), 0xAB, np.uint8)], axis=1)
    return SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
                           step=padded.shape[1], data=padded.tobytes())


@st.composite
def valid_images(draw: st.DrawFn) -> tuple[np.ndarray, str]:
    encoding = draw(st.sampled_from(sorted(ENCODINGS)))
    dtype, channels, _ = ENCODINGS[encoding]
    height = draw(st.integers(MIN_SIDE, 72))
    width = draw(st.integers(MIN_SIDE, 72))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype), encoding


@SETTINGS
@given(valid_images(), st.integers(0, 9), st.booleans())
def test_a_valid_image_converts_to_opencvs_pixels(image: tuple[np.ndarray, str], padding: int,
                                                  bigendian: bool) -> None:
    pixels, encoding = image
    try:
        expected = reference(pixels, encoding)
    except cv2.error:  # e.g. 4:2:2 with an odd width, NV12 with a height not a multiple of 3
        with pytest.raises(DataError, match="cannot be converted to RGB"):
            raw_to_rgb(message(pixels, encoding, padding, bigendian))
        return
    out = raw_to_rgb(message(pixels, encoding, padding, bigendian))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    np.testing.assert_array_equal(out, expected)


@SETTINGS
@given(valid_images(), st.integers(0, 9), st.booleans(), st.integers(-70, 70).filter(bool))
def test_truncated_or_padded_data_is_a_data_error(image: tuple[np.ndarray, str], padding: int, bigendian: bool,
                                                  change: int) -> None:
    pixels, encoding = image
    msg = message(pixels, encoding, padding, bigendian)
    msg.data = msg.data[:change] if change < 0 else msg.data + bytes(change)
    with pytest.raises(DataError, match=r"data has \d+ bytes, expected step"):
        raw_to_rgb(msg)


@SETTINGS
@given(st.sampled_from(sorted(ENCODINGS) + REFUSED_ENCODINGS), st.integers(-2, 80), st.integers(-2, 80),
       st.integers(-4, 400), st.booleans(), st.binary(max_size=3000))
def test_any_message_converts_or_raises_data_error(encoding: str, height: int, width: int, step: int,
                                                   bigendian: bool, data: bytes) -> None:
    msg = SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
                          step=step, data=data)
    try:
        out = raw_to_rgb(msg)
    except DataError as err:
        assert "\n" not in str(err)
        return
    assert out.dtype == np.uint8 and out.shape[:2][::-1] != (0, 0) and out.shape[2] == 3
    assert min(height, width) >= MIN_SIDE


@pytest.fixture(scope="module")
def encoded(data_dir: Path) -> dict[str, bytes]:
    jpeg = (data_dir / "corridor" / "query" / "0000005.jpg").read_bytes()
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return {"jpeg": jpeg, "png": cv2.imencode(".png", bgr)[1].tobytes()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["jpeg", "png"]), st.floats(0.0, 1.0, exclude_max=True))
def test_a_truncated_compressed_image_is_always_refused(encoded: dict[str, bytes], fmt: str, keep: float) -> None:
    data = encoded[fmt]
    with pytest.raises(DataError):
        compressed_to_rgb(SimpleNamespace(format=fmt, data=data[: int(len(data) * keep)]))
