"""Node `vpr_localizer`: camera topics in, place matches and loop-closure candidates out."""

from __future__ import annotations

import sys

import rclpy
from rclpy.node import Node

from vpr_ros.parameters import ParameterError, declare


class LocalizerNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("vpr_localizer", **kwargs)
        self.params = declare(self)
        self.get_logger().info(
            "parameters: " + ", ".join(f"{k}={v!r}" for k, v in self.params.items()))


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv)
    try:
        node = LocalizerNode()
    except ParameterError as exc:
        rclpy.logging.get_logger("vpr_localizer").error(f"not started: {exc}")
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
