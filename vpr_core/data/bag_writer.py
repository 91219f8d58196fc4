"""Write real bags: rosbag2 (sqlite3, mcap) and ROS 1, through ``rosbags``.

Used by the demo (query frames replayed through the bag player), the benches and the tests; images,
poses and fixes are whatever the caller passes. Every message is
built from the type store of the bag's ROS version and serialized the way a recorder would, so the
readers under test see the same bytes as in a recorded bag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

STORAGES = ("sqlite3", "mcap", "ros1")
RAW_ENCODINGS = ("rgb8", "bgr8", "mono8")
COMPRESSED_FORMATS = ("jpeg", "png")
NS_PER_S = 1_000_000_000
START_NS = 1_700_000_000 * NS_PER_S
ROS2_STORE = Stores.ROS2_KILTED
ROS1_STORE = Stores.ROS1_NOETIC


def load_frames(folder: Path, count: int, *, start: int = 0, step: int = 1) -> list[np.ndarray]:
    """The first ``count`` images of ``folder`` (sorted names, from ``start``, every ``step``) as RGB."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"images {folder} are missing (set VPR_DATA to the data sets' folder)")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    chosen = files[start : start + count * step : step]
    if len(chosen) < count:
        raise ValueError(f"{folder} has {len(files)} images, {count} wanted from {start} every {step}")
    return [cv2.imread(str(p), cv2.IMREAD_COLOR_RGB) for p in chosen]


def stamps_at(rate_hz: float, count: int, *, start_ns: int = START_NS) -> np.ndarray:
    """``count`` stamps (ns) at ``rate_hz``."""
    return start_ns + np.round(np.arange(count) * NS_PER_S / rate_hz).astype(np.int64)


@dataclass
class ImageStream:
    """An image topic. ``encoding``: rgb8/bgr8/mono8 write sensor_msgs/Image, jpeg/png write
    CompressedImage. ``row_padding`` adds bytes to every row (a valid ``step`` > width * bpp);
    ``truncated`` lists messages whose data is cut short, as a broken driver would send."""

    topic: str
    images: Sequence[np.ndarray]
    stamps_ns: Sequence[int]
    encoding: str = "rgb8"
    frame_id: str = "camera"
    row_padding: int = 0
    truncated: Sequence[int] = ()
    receive_delay_ns: int = 0

    @property
    def msgtype(self) -> str:
        compressed = self.encoding in COMPRESSED_FORMATS
        return "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"

    def messages(self, ts: Typestore) -> list[tuple[int, Any]]:
        if self.encoding not in RAW_ENCODINGS + COMPRESSED_FORMATS:
            raise ValueError(f"encoding {self.encoding!r} not in {RAW_ENCODINGS + COMPRESSED_FORMATS}")
        out = []
        for i, (rgb, stamp) in enumerate(zip(self.images, self.stamps_ns, strict=True)):
            header = make_header(ts, int(stamp), self.frame_id)
            if self.encoding in COMPRESSED_FORMATS:
                data = encode_compressed(rgb, self.encoding)
                msg = ts.types[self.msgtype](header=header, format=self.encoding, data=data)
            else:
                pixels = encode_raw(rgb, self.encoding)
                rows = pixels.reshape(pixels.shape[0], -1)
                if self.row_padding:
                    rows = np.pad(rows, ((0, 0), (0, self.row_padding)), constant_values=0xAB)
                data = rows.reshape(-1)
                if i in self.truncated:
                    data = data[: -rows.shape[1]]
                msg = ts.types[self.msgtype](
                    header=header,
                    height=rgb.shape[0],
                    width=rgb.shape[1],
                    encoding=self.encoding,
                    is_bigendian=0,
                    step=rows.shape[1],
                    data=np.ascontiguousarray(data),
                )
            out.append((int(stamp) + self.receive_delay_ns, msg))
        return out


@dataclass
class PoseStream:
    """Poses ``[N, 7]`` (x y z qx qy qz qw) as nav_msgs/Odometry or geometry_msgs/PoseStamped."""

    topic: str
    poses: np.ndarray
    stamps_ns: Sequence[int]
    kind: str = "odometry"
    frame_id: str = "map"

    @property
    def msgtype(self) -> str:
        return {"odometry": "nav_msgs/msg/Odometry", "pose_stamped": "geometry_msgs/msg/PoseStamped"}[
            self.kind
        ]

    def messages(self, ts: Typestore) -> list[tuple[int, Any]]:
        out = []
        for pose_row, stamp in zip(np.asarray(self.poses, dtype=np.float64), self.stamps_ns, strict=True):
            header = make_header(ts, int(stamp), self.frame_id)
            pose = make_pose(ts, pose_row)
            if self.kind == "odometry":
                msg = ts.types[self.msgtype](
                    header=header,
                    child_frame_id="base_link",
                    pose=ts.types["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                    twist=ts.types["geometry_msgs/msg/TwistWithCovariance"](
                        twist=ts.types["geometry_msgs/msg/Twist"](
                            linear=make_vector(ts, 0.0, 0.0, 0.0), angular=make_vector(ts, 0.0, 0.0, 0.0)
                        ),
                        covariance=np.zeros(36),
                    ),
                )
            else:
                msg = ts.types[self.msgtype](header=header, pose=pose)
            out.append((int(stamp), msg))
        return out


@dataclass
class GpsStream:
    """Fixes ``[N, 2]`` (latitude, longitude) as sensor_msgs/NavSatFix; ``no_fix`` lists messages
    sent with status NO_FIX, which a reader must not use."""

    topic: str
    latlon: np.ndarray
    stamps_ns: Sequence[int]
    no_fix: Sequence[int] = field(default_factory=tuple)
    msgtype = "sensor_msgs/msg/NavSatFix"

    def messages(self, ts: Typestore) -> list[tuple[int, Any]]:
        out = []
        for i, (fix, stamp) in enumerate(
            zip(np.asarray(self.latlon, dtype=np.float64), self.stamps_ns, strict=True)
        ):
            status = ts.types["sensor_msgs/msg/NavSatStatus"](status=-1 if i in self.no_fix else 0, service=1)
            msg = ts.types[self.msgtype](
                header=make_header(ts, int(stamp), "gps"),
                status=status,
                latitude=float(fix[0]),
                longitude=float(fix[1]),
                altitude=10.0,
                position_covariance=np.zeros(9),
                position_covariance_type=0,
            )
            out.append((int(stamp), msg))
        return out


@dataclass
class CameraInfoStream:
    """sensor_msgs/CameraInfo of a pinhole camera (fx fy cx cy, ``distortion`` as plumb_bob D), one
    message per stamp, as a camera driver publishes beside its images."""

    topic: str
    intrinsics: tuple[float, float, float, float]
    size: tuple[int, int]  # (width, height)
    stamps_ns: Sequence[int]
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    frame_id: str = "camera"
    msgtype = "sensor_msgs/msg/CameraInfo"

    def messages(self, ts: Typestore) -> list[tuple[int, Any]]:
        fx, fy, cx, cy = (float(v) for v in self.intrinsics)
        k = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
        p = np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
        roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                           do_rectify=False)
        out = []
        for stamp in self.stamps_ns:
            msg = ts.types[self.msgtype](
                header=make_header(ts, int(stamp), self.frame_id), height=self.size[1], width=self.size[0],
                distortion_model="plumb_bob", d=np.asarray(self.distortion, dtype=np.float64), k=k,
                r=np.eye(3).reshape(9), p=p, binning_x=0, binning_y=0, roi=roi)
            out.append((int(stamp), msg))
        return out


Stream = ImageStream | PoseStream | GpsStream | CameraInfoStream


def write_bag(path: Path, streams: Sequence[Stream], *, storage: str = "mcap") -> Path:
    """Write ``streams`` into a new bag at ``path`` (a directory for rosbag2, a .bag file for ROS 1),
    messages in order of receive time as a recorder writes them; returns the path to open."""
    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r} not in {STORAGES}")
    path = Path(path)
    ros1 = storage == "ros1"
    ts = get_typestore(ROS1_STORE if ros1 else ROS2_STORE)
    serialize = ts.serialize_ros1 if ros1 else ts.serialize_cdr
    if ros1:
        path = path.with_suffix(".bag")
        writer: Any = Writer1(path)
    else:
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer2(path, version=9, storage_plugin=plugin)
    with writer:
        records = []
        for stream in streams:
            connection = writer.add_connection(stream.topic, stream.msgtype, typestore=ts)
            records += [(t, connection, stream.msgtype, msg) for t, msg in stream.messages(ts)]
        records.sort(key=lambda r: r[0])
        for t, connection, msgtype, msg in records:
            writer.write(connection, t, serialize(msg, msgtype))
    return path


def encode_raw(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """RGB pixels in the layout of a raw ROS encoding."""
    if encoding == "rgb8":
        return np.ascontiguousarray(rgb)
    if encoding == "bgr8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if encoding == "mono8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"encoding {encoding!r} not in {RAW_ENCODINGS}")


def encode_compressed(rgb: np.ndarray, fmt: str) -> np.ndarray:
    """The bytes of a CompressedImage (``jpeg`` or ``png``) holding ``rgb``."""
    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f"format {fmt!r} not in {COMPRESSED_FORMATS}")
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return buf.reshape(-1)


def expected_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """What a reader should give back for ``rgb`` sent with ``encoding``: grey for mono8, the decoded
    bytes for jpeg (lossy), the image itself otherwise."""
    if encoding == "jpeg":
        return cv2.imdecode(encode_compressed(rgb, "jpeg"), cv2.IMREAD_COLOR_RGB)
    if encoding == "mono8":
        return cv2.cvtColor(encode_raw(rgb, encoding), cv2.COLOR_GRAY2RGB)
    return rgb


def make_header(ts: Typestore, stamp_ns: int, frame_id: str) -> Any:
    header_type = ts.types["std_msgs/msg/Header"]
    stamp = ts.types["builtin_interfaces/msg/Time"](sec=stamp_ns // NS_PER_S, nanosec=stamp_ns % NS_PER_S)
    extra = {"seq": 0} if "seq" in header_type.__dataclass_fields__ else {}
    return header_type(stamp=stamp, frame_id=frame_id, **extra)


def make_vector(ts: Typestore, x: float, y: float, z: float) -> Any:
    return ts.types["geometry_msgs/msg/Vector3"](x=x, y=y, z=z)


def make_pose(ts: Typestore, row: np.ndarray) -> Any:
    x, y, z, qx, qy, qz, qw = (float(v) for v in row)
    return ts.types["geometry_msgs/msg/Pose"](
        position=ts.types["geometry_msgs/msg/Point"](x=x, y=y, z=z),
        orientation=ts.types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
    )
