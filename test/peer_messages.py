"""Test peer: publishes a PlaceMatchArray and a LoopClosure, built from JSON, until it is stopped."""

import json
import sys

import rclpy
from rclpy.node import Node
from vpr_ros.conversion import fill

from vpr_ros.msg import LoopClosure, PlaceMatchArray


def main() -> None:
    spec = json.loads(sys.argv[1])
    rclpy.init()
    node = Node("message_peer")
    matches, loop = PlaceMatchArray(), LoopClosure()
    fill(matches, spec["matches"])
    fill(loop, spec["loop"])
    pub_m = node.create_publisher(PlaceMatchArray, "peer/matches", 10)
    pub_l = node.create_publisher(LoopClosure, "peer/loop_closures", 10)

    def tick() -> None:
        pub_m.publish(matches)
        pub_l.publish(loop)

    node.create_timer(0.05, tick)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass


if __name__ == "__main__":
    main()
