"""The README's demo command: starts the real vpr_localizer node and shows what it runs with.

The full offline demo (map from real frames, replay through the bag player, Recall@1) replaces this
once the map builder and the player are in place (issue "offline").
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time


def main() -> int:
    with tempfile.TemporaryDirectory() as log_dir:
        env = dict(os.environ, ROS_LOG_DIR=log_dir, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        node = subprocess.Popen(
            [sys.executable, "-m", "vpr_ros.localize_node", "--ros-args",
             "-p", "mode:=slam", "-p", "map.save_on_shutdown:=false"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(3)
        node.terminate()
        output = node.communicate(timeout=30)[0]
    print(output)
    return 0 if "parameters:" in output else 1


if __name__ == "__main__":
    sys.exit(main())
