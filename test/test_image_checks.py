"""Strict image decoding (issue 18, item 2) on real corridor images: truncated JPEG and PNG, corrupt
PNG, 1x1 and empty files are refused with a one-line DataError; a small PNG that decodes to
15000x15000 is refused from its header, before any pixel is allocated; readers and ROS messages
share the rules."""

from __future__ import annotations

import resource
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.typesys import get_typestore

from vpr_core.data import DataError, open_source
from vpr_core.data.bag_writer import ROS2_STORE, make_header
from vpr_core.data.image_check import MAX_PIXELS_ENV, MIN_SIDE, decode_image
from vpr_core.data.images import read_rgb
from vpr_core.data.ros_image import image_msg_to_rgb

TS = get_typestore(ROS2_STORE)
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]
Image = TS.types["sensor_msgs/msg/Image"]


@pytest.fixture(scope="module")
def jpeg(data_dir: Path) -> bytes:
    return (data_dir / "corridor" / "ref" / "0000000.jpg").read_bytes()


@pytest.fixture(scope="module")
def png(jpeg: bytes) -> bytes:
    return cv2.imencode(".png", cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()


def bomb_png(side: int) -> bytes:
    """A valid 1-bit grey PNG of side x side pixels: 120 KB for 15000, 675 MB once decoded to RGB."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = (b"\x00" * (1 + (side + 7) // 8)) * side
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_truncated_jpeg_file_is_refused_not_grey(tmp_path: Path, jpeg: bytes) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg[: len(jpeg) * 6 // 10])
    assert cv2.imread(str(path)) is not None  # what the reader used to do: a grey-filled image
    with pytest.raises(DataError) as err:
        read_rgb(path)
    assert "cut.jpg (JPEG" in one_line(err) and "is truncated" in str(err.value)


def test_truncated_and_corrupt_png_are_refused(tmp_path: Path, png: bytes) -> None:
    path = tmp_path / "cut.png"
    path.write_bytes(png[: len(png) * 6 // 10])
    with pytest.raises(DataError) as err:
        read_rgb(path)
    assert "cut.png (PNG" in one_line(err) and "truncated or corrupt" in str(err.value)
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0x40  # inside IDAT: its CRC no longer matches
    with pytest.raises(DataError, match="truncated or corrupt"):
        decode_image(bytes(flipped), "flipped.png")


def test_tiny_and_empty_files_are_refused(tmp_path: Path, png: bytes) -> None:
    (tmp_path / "dot.png").write_bytes(cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes())
    with pytest.raises(DataError) as err:
        read_rgb(tmp_path / "dot.png")
    assert f"dot.png (PNG) is 1x1 (from its header, not decoded), smaller than the least {MIN_SIDE}x{MIN_SIDE}" \
        in one_line(err)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.jpg is empty \(0 bytes\)"):
        read_rgb(tmp_path / "empty.jpg")


def test_a_small_png_claiming_15000x15000_is_refused_from_its_header() -> None:
    data = bomb_png(15000)
    assert len(data) < 250_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for _ in range(3):
        with pytest.raises(DataError) as err:
            image_msg_to_rgb(CompressedImage(header=make_header(TS, 1, "cam"), format="png", data=data))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert "is too large (from its header, not decoded)" in one_line(err) and "225000000 pixels" in str(err.value)
    assert grown_mib < 100, f"peak memory grew by {grown_mib:.0f} MiB: the image was decoded"
    # Below Pillow's own guard (179 M) the size is checked against the cap, and named.
    with pytest.raises(DataError, match=r"big.png \(PNG\) is 8000x8000 = 64000000 pixels \(from its header, "
                                        r"not decoded\), above the limit of 40000000"):
        decode_image(bomb_png(8000), "big.png")
    # A raw Image of that size is refused by its width x height, before its data is looked at.
    with pytest.raises(DataError, match="Image .rgb8. is 15000x15000 = 225000000 pixels, above the limit"):
        image_msg_to_rgb(Image(header=make_header(TS, 1, "cam"), height=15000, width=15000, encoding="rgb8",
                               is_bigendian=0, step=45000, data=np.zeros(10, np.uint8)))


def test_the_pixel_cap_follows_the_environment(monkeypatch: pytest.MonkeyPatch, jpeg: bytes) -> None:
    monkeypatch.setenv(MAX_PIXELS_ENV, "10000")
    with pytest.raises(DataError, match=f"160x120 = 19200 pixels .*above the limit of 10000; set {MAX_PIXELS_ENV}"):
        decode_image(jpeg, "frame.jpg")
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_PIXELS_ENV}='lots' must be a whole number") as err:
        decode_image(jpeg, "frame.jpg")
    assert not isinstance(err.value, DataError)  # a setting to fix, not an input to skip


def test_good_images_still_decode_to_the_same_pixels(data_dir: Path, jpeg: bytes, png: bytes) -> None:
    reference = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR_RGB)
    np.testing.assert_array_equal(decode_image(jpeg + b"\x00" * 64, "padded.jpg"), reference)  # bytes after EOI
    np.testing.assert_array_equal(decode_image(png, "frame.png"), reference)
    tiny = open_source(f"seasons:{data_dir / 'nordland_tiny'}?split=test&part=database")
    assert tiny[0].rgb.shape == (32, 64, 3)  # the smallest benchmark frames we use stay accepted


def test_truncated_compressed_messages_are_refused(jpeg: bytes, png: bytes) -> None:
    for fmt, data in (("jpeg", jpeg), ("png", png)):
        msg = CompressedImage(header=make_header(TS, 1, "cam"), format=fmt,
                              data=np.frombuffer(data[: len(data) * 6 // 10], np.uint8))
        with pytest.raises(DataError) as err:
            image_msg_to_rgb(msg)
        assert f"CompressedImage (format '{fmt}'" in one_line(err) and "truncated" in str(err.value)
