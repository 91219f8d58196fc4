"""Image folder reader, the frame record, and image decoding errors, on real images of the data sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from vpr_core.data import DataError, Frame, open_source
from vpr_core.data.images import list_images, natural_key, read_rgb



@pytest.fixture(scope="module")
def rtabmap(data_dir: Path) -> Path:
    return data_dir / "rtabmap_loop" / "images"


def rgb_of(path: Path) -> np.ndarray:
    return cv2.imread(str(path))[:, :, ::-1]


def test_natural_order_and_pixels(rtabmap: Path, tmp_path: Path) -> None:
    sources = sorted(rtabmap.glob("*.jpg"))[:12]
    for i, src in enumerate(sources):  # unpadded numbers: plain sorting would put frame10 after frame1
        shutil.copy(src, tmp_path / f"frame{i}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._frame3.jpg").write_bytes(b"macOS resource fork")
    source = open_source(f"folder:{tmp_path}")
    assert len(source) == 12
    frames = list(source)
    assert [f.name for f in frames] == [f"frame{i}.jpg" for i in range(12)]
    assert [f.index for f in frames] == list(range(12))
    for frame, src in zip(frames, sources):
        np.testing.assert_array_equal(frame.rgb, rgb_of(src))
        assert frame.rgb.dtype == np.uint8 and frame.rgb.flags.c_contiguous
        assert frame.stamp_ns is None and frame.pose is None and frame.latlon is None


def test_real_folder_is_rgb_with_stamps_from_rate(rtabmap: Path) -> None:
    source = open_source(rtabmap, rate_hz=4)
    files = sorted(rtabmap.glob("*.jpg"))
    assert len(source) == len(files)
    frame = source[len(files) - 1]
    assert frame.name == files[-1].name
    assert frame.stamp_ns == (len(files) - 1) * 250_000_000
    assert frame.camera == "images"
    bgr = cv2.imread(str(files[-1]))
    np.testing.assert_array_equal(frame.rgb[:, :, 0], bgr[:, :, 2])
    np.testing.assert_array_equal(frame.rgb[:, :, 2], bgr[:, :, 0])
    with pytest.raises(IndexError, match="out of range"):
        source[len(files)]


def test_recursive_listing(rtabmap: Path, tmp_path: Path) -> None:
    files = sorted(rtabmap.glob("*.jpg"))[:3]
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    shutil.copy(files[0], tmp_path / "b" / "0.jpg")
    shutil.copy(files[1], tmp_path / "a" / "1.jpg")
    shutil.copy(files[2], tmp_path / "top.jpg")
    assert [f.name for f in open_source(tmp_path, recursive=True)] == ["a/1.jpg", "b/0.jpg", "top.jpg"]
    assert [f.name for f in open_source(tmp_path)] == ["top.jpg"]


def test_frames_are_read_lazily_and_bad_image_named(rtabmap: Path, tmp_path: Path) -> None:
    files = sorted(rtabmap.glob("*.jpg"))[:3]
    for src in files:
        shutil.copy(src, tmp_path / src.name)
    source = open_source(tmp_path)
    (tmp_path / files[1].name).write_bytes(b"\xff\xd8 truncated jpeg")  # broken after opening
    frames = iter(source)
    np.testing.assert_array_equal(next(frames).rgb, rgb_of(files[0]))
    with pytest.raises(DataError, match=f"{files[1].name}.*could not be decoded"):
        next(frames)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing_here does not exist"):
        open_source(f"folder:{tmp_path / 'nothing_here'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty holds no images"):
        open_source(tmp_path / "empty")
    (tmp_path / "file.jpg").write_text("x")
    with pytest.raises(DataError, match="file.jpg is not a folder"):
        list_images(tmp_path / "file.jpg")
    with pytest.raises(DataError, match="gone.png does not exist"):
        read_rgb(tmp_path / "gone.png")


def test_bad_option_values(rtabmap: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="rate_hz must be > 0"):
        open_source(f"folder:{rtabmap}?rate_hz=0")
    with pytest.raises(DataError, match="option rate_hz: expected float, got 'fast'"):
        open_source(f"folder:{rtabmap}?rate_hz=fast")
    with pytest.raises(DataError, match="option recursive: expected true or false"):
        open_source(f"folder:{rtabmap}?recursive=maybe")


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["img10.png", "img2.png", "IMG1.png", "img2b.png"]
    assert sorted(names, key=natural_key) == ["IMG1.png", "img2.png", "img2b.png", "img10.png"]


def test_frame_record_checks_its_contract() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    frame = Frame(index=0, rgb=rgb, name="a", source="s", pose=np.arange(7.0))
    assert frame.pose.shape == (7,)
    with pytest.raises(DataError, match=r"float32 \(4, 5, 3\), expected uint8"):
        Frame(index=0, rgb=rgb.astype(np.float32), name="a", source="s")
    with pytest.raises(DataError, match="expected uint8"):
        Frame(index=0, rgb=rgb[:, :, 0], name="a", source="s")
    with pytest.raises(DataError, match="pose of shape"):
        Frame(index=0, rgb=rgb, name="a", source="s", pose=np.zeros(3))
