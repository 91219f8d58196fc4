"""A pure-Python bag player for machines without `ros2 bag`: rosbags reads, rclpy publishes.

rosbag2 messages are already CDR, the wire format, so their bytes are published as they are (no
deserialization); ROS 1 bags are converted to CDR by rosbags first. Timing follows the bag's receive
times scaled by --rate; --rate 0 publishes as fast as the subscribers' QoS allows: with --reliable
the player waits for the subscribers' acknowledgements every half history and before it exits, so
a burst never overwrites unacknowledged messages and the last ones are not lost when it closes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReaderError
from rosbags.typesys import Stores, get_typestore

from vpr_core.data.rosbag import open_bag

HISTORY_DEPTH = 100
ACK_TIMEOUT = Duration(seconds=10)


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy class."""
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bag_player", description=__doc__.splitlines()[0])
    parser.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or mcap) or ROS 1 .bag file")
    parser.add_argument("--topics", nargs="*", default=None, help="topics to publish (default: all)")
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor; 0 = as fast as possible")
    parser.add_argument("--loop", action="store_true", help="start again at the end")
    parser.add_argument("--start-delay", type=float, default=1.0,
                        help="seconds to wait after creating publishers, so that subscribers connect")
    parser.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to this long until every topic has a subscriber")
    parser.add_argument("--reliable", action="store_true", help="publish with reliable QoS (default best effort)")
    args = parser.parse_args(argv)
    if args.rate < 0:
        parser.error(f"--rate {args.rate} must be >= 0")
    if not args.bag.exists():
        parser.error(f"bag {args.bag} does not exist")
    return args


def play(node: Node, args: argparse.Namespace) -> int:
    """Publishes the bag once (or forever with --loop); returns the number of messages published."""
    store = get_typestore(Stores.ROS2_KILTED)
    published = 0
    with open_bag(args.bag) as reader:  # a damaged bag: what comes before the damage, with a warning
        available = {c.topic for c in reader.connections}
        wanted = set(args.topics) if args.topics else available
        missing = wanted - available
        if missing:
            raise ValueError(f"bag {args.bag} has no topic {', '.join(sorted(missing))}; "
                             f"it has: {', '.join(sorted(available))}")
        connections = [c for c in reader.connections if c.topic in wanted]
        qos = QoSProfile(depth=HISTORY_DEPTH, reliability=ReliabilityPolicy.RELIABLE if args.reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        publishers = {c.topic: node.create_publisher(message_class(c.msgtype), c.topic, qos)
                      for c in connections}
        deadline = time.monotonic() + args.wait_for_subscribers
        while time.monotonic() < deadline and not all(p.get_subscription_count() for p in publishers.values()):
            time.sleep(0.1)
        time.sleep(args.start_delay)
        while rclpy.ok():
            first, wall_start = None, time.monotonic()
            for connection, stamp, raw in reader.messages(connections=connections):
                if first is None:
                    first = stamp
                if args.rate > 0:
                    delay = (stamp - first) * 1e-9 / args.rate - (time.monotonic() - wall_start)
                    if delay > 0:
                        time.sleep(delay)
                if not reader.is2:
                    raw = store.serialize_cdr(reader.deserialize(raw, connection.msgtype), connection.msgtype)
                publishers[connection.topic].publish(bytes(raw))
                published += 1
                if args.reliable and args.rate == 0 and published % (HISTORY_DEPTH // 2) == 0:
                    wait_for_acknowledgements(node, publishers.values())
            if not args.loop:
                break
    if args.reliable:
        wait_for_acknowledgements(node, publishers.values())
    return published


def wait_for_acknowledgements(node: Node, publishers) -> None:
    """Blocks until every reliable subscriber acknowledged what was published (a slow one: a warning)."""
    for publisher in publishers:
        if not publisher.wait_for_all_acked(ACK_TIMEOUT):
            node.get_logger().warning(f"{publisher.topic}: not every subscriber acknowledged within "
                                      f"{ACK_TIMEOUT.nanoseconds / 1e9:.0f} s; it may miss messages")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    rclpy.init(args=argv)
    args = parse_args(rclpy.utilities.remove_ros_args(argv)[1:])
    node = Node("vpr_bag_player")
    try:
        count = play(node, args)
        node.get_logger().info(f"published {count} messages from {args.bag}")
        return 0
    except (AnyReaderError, ValueError) as exc:
        node.get_logger().error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
