#!/usr/bin/env bash
# Runs a command in the ROS 2 environment of the venv and its colcon install of vpr_ros, e.g.
#   scripts/ros2_exec.sh ros2 launch vpr_ros localize.launch.py map:=out/map image_topics:=/cam/image
#   scripts/ros2_exec.sh ros2 topic echo /vpr_localizer/matches
#   scripts/ros2_exec.sh ros2 interface show vpr_ros/msg/LoopClosure
#   scripts/ros2_exec.sh bash          # a shell in that environment
# The venv is VPR_VENV or .venv of the repository (as for scripts/setup_env.sh, which builds both).
# On a normal ROS 2 install, `source install/setup.bash` of your own workspace does the same.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VPR_VENV:-$repo/.venv}"
ws="$venv/.vpr_ws"

if [ "$#" -eq 0 ]; then
  echo "usage: scripts/ros2_exec.sh COMMAND [ARGS...]   (e.g. ros2 launch vpr_ros localize.launch.py --show-args)" >&2
  exit 2
fi
if [ ! -x "$venv/bin/ros2" ] || [ ! -f "$ws/install/setup.bash" ]; then
  echo "ros2_exec.sh: the ROS 2 tools or the workspace install of vpr_ros are missing in $venv" >&2
  echo "ros2_exec.sh: run 'make setup' (scripts/setup_env.sh) first" >&2
  exit 1
fi
venv="$(cd "$venv" && pwd)"

# The venv's python, `ros2` and colcon first; the venv is the underlay (the ament prefix holding the
# ROS wheels, the ros2 tools and composition_interfaces), the workspace install is sourced on top.
export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:$PATH"
export AMENT_PREFIX_PATH="$venv"
export CMAKE_PREFIX_PATH="$venv"
unset COLCON_PREFIX_PATH PYTHONHOME
# The wheels' bootstrapper re-executes Python once with LD_LIBRARY_PATH extended (keeping what is
# already there, such as the workspace's lib/ that setup.bash adds). A guard variable inherited from a
# process of another venv would skip that step: let it run again; everything else is passed on whole.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
# colcon's setup scripts read unset variables: source them without `set -u`.
set +eu
# shellcheck disable=SC1091
source "$ws/install/setup.bash"
set -eu
exec "$@"
