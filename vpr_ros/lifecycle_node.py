"""The managed (lifecycle) variant of `vpr_localizer`, for Nav2's lifecycle manager and `ros2 lifecycle`.

Transitions map onto the shared runtime (`vpr_ros.runtime.LocalizerRuntime`):
configure loads the model and the map and warms the encoder up, and offers ~/save_map, ~/reset and the
output topics; activate subscribes to the cameras and starts the worker; deactivate unsubscribes and
stops it; cleanup frees the model and the maps. Parameters are declared and validated when the node is
created, as in the plain node (a bad value exits with code 2); a model or map that fails to load fails
the configure transition with the reason in the log, and the node stays unconfigured.
"""

from __future__ import annotations

import sys

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from vpr_ros.localize_node import NODE_NAME, run
from vpr_ros.parameters import ParameterError, declare
from vpr_ros.runtime import LocalizerRuntime


class ManagedLocalizerNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = declare(self)
        self.runtime: LocalizerRuntime | None = None

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.runtime = LocalizerRuntime(self, self.params)
        except ParameterError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"configured: model and map loaded, session {self.runtime.localizer.session_id}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.runtime.start()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.runtime.stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.free()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.free()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.free()
        return TransitionCallbackReturn.SUCCESS

    def free(self) -> None:
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None


def main(argv: list[str] | None = None) -> int:
    return run(ManagedLocalizerNode, argv)


if __name__ == "__main__":
    sys.exit(main())
