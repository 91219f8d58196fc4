"""`vpr replay`: runs the node's pipeline over a bag without ROS, as fast as the machine allows.

The frames of the bag go through `Localizer.process`, the very object the node uses, so replay
and node agree by construction. Results go to JSON lines and, with --out-bag, to a rosbag2 (mcap)
holding our PlaceMatchArray and LoopClosure messages (stamped like the input images), which
Foxglove opens and the bag player replays.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore, get_types_from_msg
from rosbags.typesys.store import Nodetype
from tqdm import tqdm

from vpr_core.cli_options import add_encoder_arguments, encoder_config
from vpr_core.data import Frame, open_source
from vpr_core.acceptance import AcceptanceConfig
from vpr_core.frame_result import FrameResult
from vpr_core.choices import MODES
from vpr_core.localizer import Localizer, LocalizerConfig
from vpr_core.messages import (loop_closure_fields, place_match_array_fields, pose_with_covariance_fields,
                                time_fields)
from vpr_core.cli import run_module
from vpr_core.options import COSINE, COUNT, argument
from vpr_core.sequence_filter import SequenceFilterConfig

MSG_DIR = Path(__file__).resolve().parents[1] / "msg"
OUR_MESSAGES = ("PlaceMatch", "PlaceMatchArray", "LoopClosure")
POSE_TYPE = "geometry_msgs/msg/PoseWithCovarianceStamped"


@dataclass
class ReplaySummary:
    frames: int
    wall_s: float
    bag_s: float
    accepted: int
    keyframes: int
    loops: int

    @property
    def realtime_factor(self) -> float:
        """How many times faster than the bag's own duration the replay ran."""
        return self.bag_s / self.wall_s if self.wall_s > 0 else float("inf")


def result_record(result: FrameResult) -> dict[str, Any]:
    """One JSON line per frame."""
    record = {
        "stamp_ns": result.frame.stamp_ns, "camera": result.frame.camera, "name": result.frame.name,
        "accepted": result.accepted,
        "matches": [{"place_id": m.place_id, "score": m.score, "hamming": m.hamming, "source": m.record.source}
                    for m in result.matches],
        "keyframe_id": result.keyframe_id, "encode_ms": result.encode_ms, "search_ms": result.search_ms,
        "local_pool": result.local_pool, "margin": result.margin, "loop": None, "pose": None,
        "filtered": result.filtered, "probability": result.probability,
        "raw_matches": [{"place_id": m.place_id, "score": m.score, "hamming": m.hamming, "source": m.record.source}
                        for m in result.raw_matches],
    }
    if result.pose is not None:
        record["pose"] = {"pose": result.pose.pose.tolist(),
                          "covariance_diagonal": result.pose.covariance.diagonal().tolist()}
    if result.loop is not None:
        loop = result.loop
        record["loop"] = {"session_id": result.session_id, "query_id": loop.query_id, "match_id": loop.match_id,
                          "score": loop.score, "consistent_count": loop.consistent_count,
                          "verified": loop.verified, "inliers": loop.inliers,
                          "transform_type": loop.relative.kind if loop.relative is not None else 0}
    return record


class ResultBag:
    """A rosbag2 (mcap) with our messages, registered with the rosbags type store from msg/*.msg."""

    def __init__(self, path: Path, node_name: str = "vpr_localizer") -> None:
        self.store = get_typestore(Stores.ROS2_KILTED)
        types = {}
        for name in OUR_MESSAGES:
            types.update(get_types_from_msg((MSG_DIR / f"{name}.msg").read_text(), f"vpr_ros/msg/{name}"))
        self.store.register(types)
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.topics = {
            "matches": self.writer.add_connection(f"/{node_name}/matches", "vpr_ros/msg/PlaceMatchArray",
                                                  typestore=self.store),
            "loops": self.writer.add_connection(f"/{node_name}/loop_closures", "vpr_ros/msg/LoopClosure",
                                                typestore=self.store),
            "pose": self.writer.add_connection(f"/{node_name}/pose", POSE_TYPE, typestore=self.store),
        }

    def build(self, msgtype: str, fields: dict[str, Any]):
        """A rosbags message from the nested field dict of vpr_core.messages."""
        cls = self.store.types[msgtype]
        values = {}
        for name, (kind, detail) in self.store.fielddefs[msgtype][1]:
            value = fields[name]
            if kind == Nodetype.NAME:
                value = self.build(detail, value)
            elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE) and detail[0][0] == Nodetype.NAME:
                value = [self.build(detail[0][1], v) for v in value]
            elif kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):  # numbers: rosbags wants a numpy array
                value = np.asarray(value, dtype=detail[0][1][0])
            values[name] = value
        return cls(**values)

    def write(self, result: FrameResult, map_frame: str) -> None:
        stamp = result.frame.stamp_ns or 0
        header = {"stamp": time_fields(stamp), "frame_id": result.frame.frame_id or result.frame.camera}
        msg = self.build("vpr_ros/msg/PlaceMatchArray", place_match_array_fields(result, header, map_frame, 0.0))
        self.writer.write(self.topics["matches"], stamp, self.store.serialize_cdr(msg, "vpr_ros/msg/PlaceMatchArray"))
        if result.loop is not None:
            msg = self.build("vpr_ros/msg/LoopClosure", loop_closure_fields(result, header))
            self.writer.write(self.topics["loops"], stamp, self.store.serialize_cdr(msg, "vpr_ros/msg/LoopClosure"))
        if result.pose is not None:
            msg = self.build(POSE_TYPE, pose_with_covariance_fields(result, {"stamp": time_fields(stamp),
                                                                             "frame_id": map_frame}))
            self.writer.write(self.topics["pose"], stamp, self.store.serialize_cdr(msg, POSE_TYPE))

    def close(self) -> None:
        self.writer.close()


def replay(frames: Iterator[Frame], total: int, localizer: Localizer, *, batch_size: int = 8,
           realtime: bool = False, jsonl: Path | None = None, out_bag: Path | None = None) -> ReplaySummary:
    out = jsonl.open("w") if jsonl else None
    bag = ResultBag(out_bag) if out_bag else None
    counts = {"frames": 0, "accepted": 0, "keyframes": 0, "loops": 0}
    first_stamp = last_stamp = None
    start = time.perf_counter()
    try:
        with tqdm(total=total, desc="replay", unit="img", disable=None) as bar:
            while batch := list(islice(frames, 1 if realtime else batch_size)):
                stamps = [f.stamp_ns for f in batch if f.stamp_ns is not None]
                if stamps:
                    first_stamp = stamps[0] if first_stamp is None else first_stamp
                    last_stamp = stamps[-1]
                    if realtime:
                        time.sleep(max(0.0, (last_stamp - first_stamp) * 1e-9 - (time.perf_counter() - start)))
                for result in localizer.process(batch):
                    counts["frames"] += 1
                    counts["accepted"] += result.accepted
                    counts["keyframes"] += result.keyframe_id is not None
                    counts["loops"] += result.loop is not None
                    if out:
                        out.write(json.dumps(result_record(result)) + "\n")
                    if bag:
                        bag.write(result, localizer.map_frame)
                bar.update(len(batch))
    finally:
        if out:
            out.close()
        if bag:
            bag.close()
    wall = time.perf_counter() - start
    bag_s = (last_stamp - first_stamp) * 1e-9 if first_stamp is not None else 0.0
    return ReplaySummary(counts["frames"], wall, bag_s, counts["accepted"], counts["keyframes"], counts["loops"])


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", required=True, type=Path, help="rosbag2 directory/file (sqlite3, mcap) or ROS 1 bag")
    parser.add_argument("--topics", default="", help="comma-separated image topics (default: the bag's only one)")
    parser.add_argument("--map", default="", help="map database directory, or a Milvus collection (milvus://HOST:PORT/"
                        "COLLECTION, milvus-lite:FILE.db/COLLECTION); localization and both modes")
    parser.add_argument("--mode", default="localization", choices=MODES)
    parser.add_argument("--top-k", type=argument(int, COUNT), default=5, help="matches per frame (>= 1)")
    parser.add_argument("--min-score", type=argument(float, COSINE), default=AcceptanceConfig.min_score,
                        help="cosine score the best match needs to be accepted, in [-1, 1]")
    add_encoder_arguments(parser)
    parser.add_argument("--local", default="", help="FoL++ local branch checkpoint directory: adds local "
                        "re-ranking (the map needs its patches: vpr add-local)")
    parser.add_argument("--filter", action="store_true", help="sequence filter over the map's places (the node's "
                        "filter.enabled, its other settings at their defaults); the map must be in route order")
    parser.add_argument("--batch-size", type=argument(int, COUNT), default=8, help="frames encoded at once (>= 1)")
    parser.add_argument("--realtime", action="store_true", help="pace the frames at the bag's own rate")
    parser.add_argument("--out", type=Path, default=Path("replay.jsonl"), help="JSON lines, one per frame")
    parser.add_argument("--out-bag", type=Path, default=None, help="write our messages to this rosbag2 (mcap)")


def run(args: argparse.Namespace) -> int:
    """Refusals (a missing bag or map, a backend that is not installed) reach the user as one line
    through `vpr_core.cli.run_module`."""
    topics = f"?topics={args.topics}" if args.topics else ""
    source = open_source(f"rosbag:{args.bag}{topics}")
    config = LocalizerConfig(mode=args.mode, map_path=args.map, encoder=encoder_config(args),
                             local_branch=args.local, localization=AcceptanceConfig(top_k=args.top_k, min_score=args.min_score),
                             filter=SequenceFilterConfig(enabled=args.filter))
    summary = replay(iter(source), len(source), Localizer(config), batch_size=args.batch_size,
                     realtime=args.realtime, jsonl=args.out, out_bag=args.out_bag)
    rate = summary.frames / summary.wall_s if summary.wall_s else float("nan")
    print(f"{summary.frames} frames in {summary.wall_s:.1f} s ({rate:.1f} frames/s, "
          f"{summary.realtime_factor:.1f}x the bag's duration of {summary.bag_s:.1f} s); "
          f"accepted {summary.accepted}, keyframes {summary.keyframes}, loop closures {summary.loops}; "
          f"results in {args.out}" + (f", bag {args.out_bag}" if args.out_bag else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_module(sys.modules[__name__], "vpr replay"))
