#!/usr/bin/env bash
# Builds this package with colcon, the way a ROS workspace does, into a workspace inside the venv
# (VENV/.vpr_ws: src/vpr_ros is a symlink to the repository; build/, install/ and log/ stay there), so
# that `ros2 launch vpr_ros ...`, `ros2 run vpr_ros ...` and `ros2 interface show vpr_ros/msg/...` work
# (through scripts/ros2_exec.sh). `--symlink-install`: the installed Python modules, executables,
# launch and config files are symlinks into the source tree, so edits need no rebuild; a new, removed
# or renamed file or a changed message does, and changes the stamp below.
# Usage: scripts/build_workspace.sh VENV.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "${1:?usage: build_workspace.sh VENV}" && pwd)"
vpy="$venv/bin/python"
ws="$venv/.vpr_ws"
stamp_file="$venv/.vpr_stamps/workspace"
log="$ws/build.log"

# Stamp: the build files and messages by content, the files that are installed (as symlinks) by name,
# the two scripts, where the repository and the venv are, and the venv's pinned packages.
stamp="$(cd "$repo" && {
  cat "$venv/.vpr_stamps/pip" 2>/dev/null || true
  sha256sum CMakeLists.txt package.xml msg/*.msg scripts/build_workspace.sh scripts/pip_ros_wheels_fix.cmake
  find vpr_ros vpr_core launch config scripts checkpoints \( -name __pycache__ -o -name '*.egg-info' \) \
       -prune -o \( -type f -o -type l \) ! -name '*.pyc' -print | LC_ALL=C sort
  find scripts -maxdepth 1 -type f -perm -u+x | LC_ALL=C sort
  echo "$repo" "$venv"
} | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && [ -f "$ws/install/setup.bash" ] \
   && [ "$(readlink "$ws/src/vpr_ros")" = "$repo" ]; then
  exit 0
fi

echo "[setup] building the colcon workspace of vpr_ros ($(basename "$venv")/.vpr_ws)"
# A fresh install/ (no stale files of removed sources) over the kept build/ (incremental: seconds).
rm -rf "$ws/install" "$ws/src"
if [ "$(cat "$ws/build/.vpr_repo" 2>/dev/null)" != "$repo" ]; then rm -rf "$ws/build"; fi
mkdir -p "$ws/src" "$ws/build"
echo "$repo" > "$ws/build/.vpr_repo"
ln -s "$repo" "$ws/src/vpr_ros"
(
  cd "$ws"
  export PATH="$venv/bin:$PATH" AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
  # no parent workspace: install/setup.bash must not chain whatever the caller had sourced
  unset COLCON_PREFIX_PATH COLCON_CURRENT_PREFIX
  "$venv/bin/colcon" --log-base "$ws/log" build --base-paths "$ws/src" \
      --build-base "$ws/build" --install-base "$ws/install" --symlink-install \
      --event-handlers console_direct+ console_cohesion- console_start_end- console_stderr- \
      --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$vpy" \
                   -DCMAKE_PROJECT_INCLUDE="$repo/scripts/pip_ros_wheels_fix.cmake"
) > "$log" 2>&1 \
  || { tail -60 "$log"; echo "[setup] colcon build of vpr_ros failed (log above: $log)"; exit 1; }

[ -f "$ws/install/vpr_ros/share/vpr_ros/launch/localize.launch.py" ] \
  && [ -x "$ws/install/vpr_ros/lib/vpr_ros/localize_node" ] \
  || { echo "[setup] the workspace install lacks the launch file or the node (see $log)"; exit 1; }
echo "$stamp" > "$stamp_file"
