"""Bag reader: real rosbag2 (sqlite3, mcap) and ROS 1 bags written with rosbags from real images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.typesys import get_typestore

from vpr_core.data.bag_writer import (
    ROS2_STORE,
    START_NS,
    STORAGES,
    GpsStream,
    ImageStream,
    PoseStream,
    encode_compressed,
    expected_rgb,
    load_frames,
    make_header,
    stamps_at,
    write_bag,
)
from vpr_core.data import DataError, open_source
from vpr_core.data.ros_image import image_msg_to_rgb

N = 8


@pytest.fixture(scope="module")
def images(data_dir: Path) -> list[np.ndarray]:
    """Real corridor queries, the pixels the bags are written from."""
    return load_frames(data_dir / "corridor" / "query", N, step=3)


def nearest_index(stamps: np.ndarray, t: int) -> int:
    return int(np.argmin(np.abs(stamps.astype(np.int64) - t)))


def random_poses(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(count, 4))
    return np.hstack([rng.uniform(-50, 50, size=(count, 3)), q / np.linalg.norm(q, axis=1, keepdims=True)])


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "jpeg", "png"])
def test_images_come_back_as_written(images: list[np.ndarray], tmp_path: Path, storage: str, encoding: str) -> None:
    stamps = stamps_at(10, N)
    bag = write_bag(
        tmp_path / "bag", [ImageStream("/camera/image", images, stamps, encoding=encoding)], storage=storage
    )
    source = open_source(f"rosbag:{bag}")
    assert len(source) == N
    frames = list(source)
    assert [f.stamp_ns for f in frames] == stamps.tolist()
    assert [f.index for f in frames] == list(range(N))
    for frame, rgb in zip(frames, images):
        assert frame.camera == "/camera/image" and frame.source == str(bag)
        # exact for lossless encodings; for jpeg, exactly the decoded JPEG bytes and close to the source
        np.testing.assert_array_equal(frame.rgb, expected_rgb(rgb, encoding))
        if encoding == "jpeg":
            assert cv2.PSNR(frame.rgb, rgb) > 30
    if encoding != "mono8":
        assert not np.array_equal(frames[0].rgb, frames[1].rgb)


def track_poses(stamps: np.ndarray) -> np.ndarray:
    """A robot driving along x at 1.5 m/s and turning at 0.4 rad/s: the pose at any time is known exactly."""
    t = (stamps - START_NS) * 1e-9
    yaw = 0.4 * t
    return np.stack([1.5 * t, 0.2 * t, np.zeros_like(t), np.zeros_like(t), np.zeros_like(t),
                     np.sin(yaw / 2), np.cos(yaw / 2)], axis=1)


@pytest.mark.parametrize(
    ("storage", "kind"), [("sqlite3", "odometry"), ("mcap", "pose_stamped"), ("ros1", "odometry")]
)
def test_poses_interpolated_and_fixes_matched_by_nearest_stamp(images: list[np.ndarray], tmp_path: Path, storage: str,
                                                              kind: str) -> None:
    image_stamps = stamps_at(10, N)
    # Poses at 33 Hz from 17 ms before the first image, with a hole where frames 4 and 5 sit.
    pose_stamps = stamps_at(33, 30, start_ns=START_NS - 17_000_000)
    keep = (pose_stamps < image_stamps[4] - 60_000_000) | (pose_stamps > image_stamps[5] + 60_000_000)
    pose_stamps = pose_stamps[keep]
    fix_stamps = stamps_at(5, 4, start_ns=START_NS + 10_000_000)
    fixes = np.array([[59.9, 10.7], [59.91, 10.71], [59.92, 10.72], [59.93, 10.73]])
    streams = [
        ImageStream("/cam", images, image_stamps, encoding="jpeg"),
        PoseStream("/odom", track_poses(pose_stamps), pose_stamps, kind=kind),
        GpsStream("/fix", fixes, fix_stamps, no_fix=[1]),
    ]
    bag = write_bag(tmp_path / "bag", streams, storage=storage)
    frames = list(open_source(bag, max_gap_s=0.05))
    usable_fixes = np.delete(np.arange(4), 1)
    for i, (frame, t) in enumerate(zip(frames, image_stamps)):
        if i in (4, 5):  # the pose messages around them are 220 ms apart, more than 2 * max_gap_s
            assert frame.pose is None
        else:  # between two messages 30 ms apart: the pose at the image's own stamp
            np.testing.assert_allclose(frame.pose, track_poses(np.array([t]))[0], atol=1e-9)
        k = usable_fixes[nearest_index(fix_stamps[usable_fixes], t)]
        if abs(int(fix_stamps[k]) - t) <= 50_000_000:
            assert frame.latlon == tuple(fixes[k])
        else:
            assert frame.latlon is None
    assert sum(f.pose is not None for f in frames) == N - 2
    assert sum(f.latlon is not None for f in frames) >= 2
    assert all(f.latlon != tuple(fixes[1]) for f in frames)  # the NO_FIX message is never used
    without = list(open_source(bag, pose_topic="", gps_topic=""))
    assert all(f.pose is None and f.latlon is None for f in without)


def test_several_cameras_in_time_order(images: list[np.ndarray], tmp_path: Path) -> None:
    left = stamps_at(10, 4)
    right = left + 30_000_000
    streams = [
        ImageStream("/left/image", images[:4], left, encoding="rgb8"),
        ImageStream("/right/image/compressed", images[4:], right, encoding="png"),
    ]
    bag = write_bag(tmp_path / "bag", streams, storage="mcap")
    with pytest.raises(
        DataError, match="has several image topics; choose with topics=...; its topics: /left/image"
    ):
        open_source(bag)
    source = open_source(f"{bag}?topics=/left/image,/right/image/compressed")
    frames = list(source)
    assert len(source) == len(frames) == 8
    assert [f.camera for f in frames] == ["/left/image", "/right/image/compressed"] * 4
    assert [f.stamp_ns for f in frames] == sorted(left.tolist() + right.tolist())
    np.testing.assert_array_equal(frames[1].rgb, images[4])
    only_right = list(open_source(bag, topics="/right/image/compressed"))
    assert [f.name for f in only_right] == [f"/right/image/compressed@{t}" for t in right]


def test_bag_time_instead_of_header_stamps(images: list[np.ndarray], tmp_path: Path) -> None:
    stamps = stamps_at(10, 3)
    stream = ImageStream("/cam", images[:3], stamps, receive_delay_ns=7_000_000)
    bag = write_bag(tmp_path / "bag", [stream], storage="sqlite3")
    assert [f.stamp_ns for f in open_source(bag)] == stamps.tolist()
    assert [f.stamp_ns for f in open_source(bag, header_stamps=False)] == (stamps + 7_000_000).tolist()


def test_padded_rows_are_dropped(images: list[np.ndarray], tmp_path: Path) -> None:
    stream = ImageStream("/cam", images[:2], stamps_at(10, 2), encoding="bgr8", row_padding=5)
    bag = write_bag(tmp_path / "bag", [stream], storage="ros1")
    for frame, rgb in zip(open_source(bag), images):
        np.testing.assert_array_equal(frame.rgb, rgb)


def test_missing_topics_are_named(images: list[np.ndarray], tmp_path: Path) -> None:
    streams = [
        ImageStream("/cam", images[:2], stamps_at(10, 2)),
        PoseStream("/odom", random_poses(2, 0), stamps_at(10, 2)),
        PoseStream("/slam/pose", random_poses(2, 1), stamps_at(10, 2), kind="pose_stamped"),
    ]
    bag = write_bag(tmp_path / "bag", streams, storage="mcap")
    listing = r"its topics: /cam \(sensor_msgs/msg/Image\), /odom \(nav_msgs/msg/Odometry\), /slam/pose"
    with pytest.raises(DataError, match=rf"bag .*bag has no topic '/front/image'; {listing}"):
        open_source(bag, topics="/front/image", pose_topic="/odom")
    with pytest.raises(DataError, match="topic '/odom' is nav_msgs/msg/Odometry, not an image topic"):
        open_source(bag, topics="/odom", pose_topic="")
    with pytest.raises(DataError, match=r"several topics for pose_topic \(/odom, /slam/pose\)"):
        open_source(bag)
    with pytest.raises(DataError, match=rf"has no topic '/gps'; {listing}"):
        open_source(bag, pose_topic="/odom", gps_topic="/gps")
    with pytest.raises(
        DataError,
        match="gps_topic '/odom' is nav_msgs/msg/Odometry, expected one of sensor_msgs/msg/NavSatFix",
    ):
        open_source(bag, pose_topic="/odom", gps_topic="/odom")
    poses = [f.pose for f in open_source(bag, pose_topic="/slam/pose")]
    np.testing.assert_array_equal(np.stack(poses), random_poses(2, 1))
    no_images = write_bag(tmp_path / "odom_only", streams[1:2], storage="sqlite3")
    with pytest.raises(DataError, match="has no image topic"):
        open_source(no_images)


def test_broken_image_message_named_or_skipped(images: list[np.ndarray], tmp_path: Path) -> None:
    stamps = stamps_at(10, 4)
    bag = write_bag(
        tmp_path / "bag", [ImageStream("/cam", images[:4], stamps, truncated=[2])], storage="mcap"
    )
    frames = iter(open_source(bag))
    next(frames), next(frames)
    with pytest.raises(
        DataError, match=r"bag .*: topic /cam, message 2 .*: Image data has \d+ bytes, expected step"
    ):
        next(frames)
    source = open_source(bag, skip_bad=True)
    kept = list(source)
    assert [f.stamp_ns for f in kept] == [stamps[0], stamps[1], stamps[3]]
    assert [f.index for f in kept] == [0, 1, 2]
    np.testing.assert_array_equal(kept[2].rgb, images[3])
    assert len(source.skipped) == 1 and "message 2" in source.skipped[0]


def test_missing_or_corrupt_bag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="bag .*nothing.mcap does not exist"):
        open_source(f"rosbag:{tmp_path / 'nothing.mcap'}")
    (tmp_path / "junk.mcap").write_bytes(b"this is not an mcap file" * 10)
    with pytest.raises(DataError, match="bag .*junk.mcap could not be opened"):
        open_source(tmp_path / "junk.mcap")
    with pytest.raises(DataError, match="max_gap_s must be >= 0"):
        open_source(f"rosbag:{tmp_path / 'junk.mcap'}?max_gap_s=-1")


def test_stopping_early_closes_the_bag(images: list[np.ndarray], tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag", [ImageStream("/cam", images, stamps_at(10, N))], storage="sqlite3")
    source = open_source(bag)
    for _ in range(3):  # each pass opens the bag again; an unclosed reader would leak or fail here
        first = next(iter(source))
        np.testing.assert_array_equal(first.rgb, images[0])
    assert len(list(source)) == N


# --- message conversion on its own, with real rosbags message classes --------------------------------

TS = get_typestore(ROS2_STORE)
Image = TS.types["sensor_msgs/msg/Image"]
CompressedImage = TS.types["sensor_msgs/msg/CompressedImage"]


def raw_msg(data: np.ndarray, height: int, width: int, encoding: str, step: int) -> object:
    return Image(
        header=make_header(TS, 1, "cam"),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=np.ascontiguousarray(data, dtype=np.uint8).reshape(-1),
    )


def test_sixteen_bit_and_alpha_encodings(images: list[np.ndarray]) -> None:
    rgb = images[0]
    h, w = rgb.shape[:2]
    grey16 = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    out = image_msg_to_rgb(raw_msg(grey16.view(np.uint8), h, w, "mono16", 2 * w))
    np.testing.assert_array_equal(
        out, cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    )
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    np.testing.assert_array_equal(image_msg_to_rgb(raw_msg(bgra, h, w, "bgra8", 4 * w)), rgb)
    grey_png = encode_compressed(
        cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB), "png"
    )
    out = image_msg_to_rgb(CompressedImage(header=make_header(TS, 1, "cam"), format="png", data=grey_png))
    assert out.shape == rgb.shape and out.flags.writeable


@pytest.mark.parametrize(
    ("encoding", "step", "size", "problem"),
    [
        ("yuv444", 3 * 160, 3 * 160 * 120, "encoding 'yuv444' is not supported"),
        ("32FC1", 4 * 160, 4 * 160 * 120, "'32FC1' cannot be converted to RGB"),
        ("rgb8", 3 * 160 - 1, 3 * 160 * 120, "step 479 is smaller than width 160 x 3 bytes per pixel"),
        ("rgb8", 3 * 160, 3 * 160 * 120 + 7, r"data has 57607 bytes, expected step 480 x height 120 = 57600"),
    ],
)
def test_malformed_raw_images(encoding: str, step: int, size: int, problem: str) -> None:
    with pytest.raises(DataError, match=problem):
        image_msg_to_rgb(raw_msg(np.zeros(size, np.uint8), 120, 160, encoding, step))


def test_malformed_compressed_images() -> None:
    header = make_header(TS, 1, "cam")
    with pytest.raises(DataError, match="format 'jpeg'.*has no data"):
        image_msg_to_rgb(CompressedImage(header=header, format="jpeg", data=np.zeros(0, np.uint8)))
    with pytest.raises(DataError, match=r"format 'jpeg', 100 bytes\) could not be decoded"):
        image_msg_to_rgb(CompressedImage(header=header, format="jpeg", data=np.full(100, 7, np.uint8)))
    with pytest.raises(DataError, match=r"no pixels \(0x120\)"):
        image_msg_to_rgb(raw_msg(np.zeros(0, np.uint8), 120, 0, "rgb8", 0))


def test_rclpy_messages_convert_too(images: list[np.ndarray]) -> None:
    # The node hands rclpy messages (data as array.array) to the same function.
    from sensor_msgs.msg import CompressedImage as RclpyCompressed
    from sensor_msgs.msg import Image as RclpyImage

    rgb = images[2]
    h, w = rgb.shape[:2]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    raw = RclpyImage(height=h, width=w, encoding="bgr8", step=3 * w, data=bgr.tobytes())
    np.testing.assert_array_equal(image_msg_to_rgb(raw), rgb)
    png = RclpyCompressed(format="png", data=encode_compressed(rgb, "png").tobytes())
    np.testing.assert_array_equal(image_msg_to_rgb(png), rgb)
    bad = RclpyImage(height=h, width=w, encoding="bgr8", step=3 * w, data=bgr.tobytes()[:-1])
    with pytest.raises(DataError, match="expected step"):
        image_msg_to_rgb(bad)
