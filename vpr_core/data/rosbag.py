"""Reader for rosbag2 (sqlite3, mcap) and ROS 1 bags, through ``rosbags`` (no ROS installation needed).

Frames come from sensor_msgs/Image or CompressedImage topics in bag order. Each frame gets the pose
(nav_msgs/Odometry, geometry_msgs/PoseStamped or PoseWithCovarianceStamped) interpolated between the
two pose messages around its stamp, and the position (sensor_msgs/NavSatFix) nearest to it in time;
none when the pose messages around it are more than 2 * ``max_gap_s`` apart or the nearest fix is
more than ``max_gap_s`` away: a stale pose would put a place in the map at the wrong spot, which is
worse than no pose.

A rosbag2 that rosbags refuses because it was cut short (a killed recorder, a full disk) is read up
to the damage instead (vpr_core.data.bag_salvage), with a warning that says how many frames were
read, where reading stopped and how to repair the file: the frames before the damage are the
recording's, and losing them all for a missing footer loses data silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import logging

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_typestore

from vpr_core.data.bag_salvage import SalvagedBag, cut_sqlite, salvage
from vpr_core.data.frame import DataError, Frame
from vpr_core.data.ros_image import image_msg_to_rgb
from vpr_core.poses import interpolate

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POSE_TYPES = (
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
)
GPS_TYPES = ("sensor_msgs/msg/NavSatFix",)
AUTO = "auto"
NS_PER_S = 1_000_000_000
# Deserializes rosbag2 files recorded without embedded message definitions (before ROS 2 Iron).
DEFAULT_TYPESTORE = Stores.ROS2_KILTED

log = logging.getLogger(__name__)


@dataclass
class Config:
    """``topics``: image topics (empty: the bag's only image topic). ``pose_topic`` / ``gps_topic``:
    a topic name, ``auto`` (the bag's only topic of that kind, if any) or empty for none.
    ``header_stamps``: stamp frames with header.stamp (capture time) instead of the bag's receive
    time. ``skip_bad``: skip malformed image messages (counted in ``skipped``) instead of stopping."""

    topics: tuple[str, ...] = ()
    pose_topic: str = AUTO
    gps_topic: str = AUTO
    max_gap_s: float = 0.1
    header_stamps: bool = True
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.topics, str):
            self.topics = (self.topics,)
        if not self.max_gap_s >= 0:
            raise ValueError(f"max_gap_s must be >= 0, got {self.max_gap_s}")


@dataclass
class Track:
    """Time-sorted values of one topic, searched by nearest stamp."""

    topic: str
    stamps_ns: np.ndarray
    values: np.ndarray
    frame_id: str = ""  # header.frame_id of the topic's first message

    def nearest(self, stamp_ns: int, max_gap_ns: int) -> np.ndarray | None:
        if self.stamps_ns.size == 0:
            return None
        i = int(np.searchsorted(self.stamps_ns, stamp_ns))
        candidates = [j for j in (i - 1, i) if 0 <= j < self.stamps_ns.size]
        best = min(candidates, key=lambda j: abs(int(self.stamps_ns[j]) - stamp_ns))
        if abs(int(self.stamps_ns[best]) - stamp_ns) > max_gap_ns:
            return None
        return self.values[best]

    def interpolate(self, stamp_ns: int, max_gap_ns: int) -> np.ndarray | None:
        """The pose at ``stamp_ns`` (values are x y z qx qy qz qw) between its two neighbours, which
        may be up to 2 * ``max_gap_ns`` apart; the nearest within ``max_gap_ns`` past either end."""
        return interpolate(self.stamps_ns, self.values, stamp_ns, max_span_ns=2 * max_gap_ns,
                           max_extrapolation_ns=max_gap_ns)


def open_source(path: Path, config: Config) -> BagSource:
    return BagSource(path, config)


class _OpenError(DataError):
    """rosbags refused the bag as a whole: the one failure that reading a damaged bag can recover."""


@contextmanager
def open_bag(path: Path) -> Iterator[AnyReader | SalvagedBag]:
    """rosbags' reader of a bag, or the readable beginning of a damaged rosbag2 that rosbags refuses
    (logged as a warning that says how to repair it); for readers of raw messages, like the bag
    player. Raises DataError when nothing is readable."""
    path = Path(path)
    try:
        reader = _open_reader(path)
    except _OpenError as err:
        bag = salvage(path, str(err))
        log.warning(f"bag {path} is damaged: {bag.damage}; reading what comes before the damage; to repair it "
                    f"for good: {bag.repair}")
        yield bag
        return
    try:
        yield reader
    finally:
        reader.close()


def _open_reader(path: Path) -> AnyReader:
    if cut := cut_sqlite(path):
        raise _OpenError(f"bag {path} could not be opened: {cut}")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(DEFAULT_TYPESTORE))
        reader.open()
    except (AnyReaderError, FileNotFoundError) as err:
        raise _OpenError(f"bag {path} could not be opened: {err}") from None
    return reader


class BagSource:
    """Lazy frame source over the image topics of one bag; the bag is read again on each iteration.
    ``damage`` is the warning (one line) when the bag is damaged and only its beginning is read."""

    def __init__(self, path: Path, config: Config) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.config = config
        self.skipped: list[str] = []
        self.damage = ""
        self._salvaged: SalvagedBag | None = None
        if not self.path.exists():
            raise DataError(f"bag {self.path} does not exist")
        try:
            self._index()
        except _OpenError as err:
            self._salvaged = salvage(self.path, str(err))
            self._index()
            self.damage = self._damage_warning(self._salvaged)
            log.warning(self.damage)

    def _index(self) -> None:
        """Topics, frame count and the pose and fix tracks, read once."""
        with self._open() as reader:
            self.topic_types = {name: info.msgtype for name, info in reader.topics.items()}
            counts = {name: info.msgcount for name, info in reader.topics.items()}
            self.image_topics = self._image_topics()
            self._length = sum(counts[t] for t in self.image_topics)
            self.pose_track = self._read_track(reader, "pose_topic", POSE_TYPES, _pose_values, width=7)
            self.gps_track = self._read_track(reader, "gps_topic", GPS_TYPES, _gps_values, width=2)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = []
        max_gap_ns = round(self.config.max_gap_s * NS_PER_S)
        index = 0
        with self._open() as reader:
            connections = [c for c in reader.connections if c.topic in self.image_topics]
            per_topic = dict.fromkeys(self.image_topics, 0)
            for connection, log_ns, raw in reader.messages(connections=connections):
                topic = connection.topic
                number = per_topic[topic]
                per_topic[topic] += 1
                try:
                    msg = reader.deserialize(raw, connection.msgtype)
                    stamp = self._stamp(msg, log_ns)
                    rgb = image_msg_to_rgb(msg)
                except (DataError, AnyReaderError) as err:
                    problem = (
                        f"bag {self.path}: topic {topic}, message {number} (bag time {log_ns} ns): {err}"
                    )
                    if not self.config.skip_bad:
                        raise DataError(problem) from None
                    self.skipped.append(problem)
                    continue
                pose = self.pose_track.interpolate(stamp, max_gap_ns) if self.pose_track else None
                latlon = self.gps_track.nearest(stamp, max_gap_ns) if self.gps_track else None
                yield Frame(
                    index=index,
                    rgb=rgb,
                    name=f"{topic}@{stamp}",
                    source=self.name,
                    camera=topic,
                    stamp_ns=stamp,
                    pose=None if pose is None else pose.copy(),
                    pose_frame=self.pose_track.frame_id if pose is not None else "",
                    frame_id=getattr(getattr(msg, "header", None), "frame_id", ""),
                    latlon=None if latlon is None else (float(latlon[0]), float(latlon[1])),
                )
                index += 1

    def _damage_warning(self, bag: SalvagedBag) -> str:
        read = [bag.topics[t] for t in self.image_topics if t in bag.topics]
        last = max((t.last_log_ns for t in read if t.last_log_ns is not None), default=None)
        where = f"the last at bag time {_seconds(last)} s" if last is not None else "none before the damage"
        return (f"bag {self.path} is damaged: {bag.damage}; read the {self._length} frames of "
                f"{', '.join(self.image_topics)} before the damage ({where}); to repair it for good: {bag.repair}")

    @contextmanager
    def _open(self) -> Iterator[AnyReader | SalvagedBag]:
        if self._salvaged is not None:
            yield self._salvaged
            return
        reader = _open_reader(self.path)
        try:
            yield reader
        finally:
            reader.close()

    def _describe_topics(self) -> str:
        return (
            ", ".join(f"{name} ({msgtype})" for name, msgtype in sorted(self.topic_types.items())) or "none"
        )

    def _image_topics(self) -> tuple[str, ...]:
        available = [name for name, msgtype in self.topic_types.items() if msgtype in IMAGE_TYPES]
        if not self.config.topics:
            if len(available) != 1:
                reason = "has no image topic" if not available else "has several image topics"
                raise DataError(
                    f"bag {self.path} {reason}; choose with topics=...; its topics: {self._describe_topics()}"
                )
            return tuple(available)
        for topic in self.config.topics:
            if topic not in self.topic_types:
                raise DataError(
                    f"bag {self.path} has no topic {topic!r}; its topics: {self._describe_topics()}"
                )
            if self.topic_types[topic] not in IMAGE_TYPES:
                raise DataError(
                    f"bag {self.path}: topic {topic!r} is {self.topic_types[topic]}, "
                    f"not an image topic ({' or '.join(IMAGE_TYPES)})"
                )
        return tuple(self.config.topics)

    def _read_track(
        self,
        reader: AnyReader | SalvagedBag,
        option: str,
        types: tuple[str, ...],
        values: Callable[[Any], list[float] | None],
        *,
        width: int,
    ) -> Track | None:
        wanted = getattr(self.config, option)
        if not wanted:
            return None
        if wanted == AUTO:
            candidates = sorted(name for name, msgtype in self.topic_types.items() if msgtype in types)
            if not candidates:
                return None
            if len(candidates) > 1:
                raise DataError(
                    f"bag {self.path} has several topics for {option} ({', '.join(candidates)}); "
                    f"choose one with {option}=... or none with {option}="
                )
            wanted = candidates[0]
        if wanted not in self.topic_types:
            raise DataError(f"bag {self.path} has no topic {wanted!r}; its topics: {self._describe_topics()}")
        if self.topic_types[wanted] not in types:
            raise DataError(
                f"bag {self.path}: {option} {wanted!r} is {self.topic_types[wanted]}, "
                f"expected one of {', '.join(types)}"
            )
        stamps, rows, frame_id = [], [], ""
        connections = [c for c in reader.connections if c.topic == wanted]
        for connection, log_ns, raw in reader.messages(connections=connections):
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except (DataError, AnyReaderError) as err:
                raise DataError(f"bag {self.path}: topic {wanted}, bag time {log_ns} ns: {err}") from None
            row = values(msg)
            frame_id = frame_id or getattr(getattr(msg, "header", None), "frame_id", "")
            if row is not None:
                stamps.append(self._stamp(msg, log_ns))
                rows.append(row)
        order = np.argsort(np.array(stamps, dtype=np.int64), kind="stable")
        return Track(
            topic=wanted,
            stamps_ns=np.array(stamps, dtype=np.int64)[order],
            values=np.array(rows, dtype=np.float64).reshape(-1, width)[order],
            frame_id=frame_id,
        )

    def _stamp(self, msg: Any, log_ns: int) -> int:
        """Header stamp when asked for and set (drivers that leave it zero fall back to bag time)."""
        header = getattr(msg, "header", None)
        if self.config.header_stamps and header is not None:
            stamp = int(header.stamp.sec) * NS_PER_S + int(header.stamp.nanosec)
            if stamp > 0:
                return stamp
        return int(log_ns)


def _seconds(stamp_ns: int) -> str:
    return f"{stamp_ns // NS_PER_S}.{stamp_ns % NS_PER_S:09d}"


def _pose_values(msg: Any) -> list[float]:
    pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
    p, q = pose.position, pose.orientation
    return [p.x, p.y, p.z, q.x, q.y, q.z, q.w]


def _gps_values(msg: Any) -> list[float] | None:
    """Latitude/longitude of a fix; None for messages that report no fix (status < 0) or NaN."""
    if msg.status.status < 0 or not (np.isfinite(msg.latitude) and np.isfinite(msg.longitude)):
        return None
    return [msg.latitude, msg.longitude]
