#!/usr/bin/env bash
# Generates our messages (CMake + rosidl) into a venv that holds the ROS 2 wheels, so that
# `from vpr_ros.msg import PlaceMatchArray` works there while our Python code runs from the source tree.
# Usage: scripts/build_msgs.sh VENV. Skipped when the inputs have not changed since the last build.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "${1:?usage: build_msgs.sh VENV}" && pwd)"
vpy="$venv/bin/python"
build="$venv/.vpr_build/msgs"
msgs_dir="$venv/lib/vpr_ros_msgs"
site="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
stamp_file="$venv/.vpr_stamps/msgs"

inputs=("$repo"/msg/*.msg "$repo/CMakeLists.txt" "$repo/package.xml" "$repo/setup.py"
        "$repo/scripts/pip_ros_wheels_fix.cmake" "$repo/scripts/build_msgs.sh")
stamp="$( (cat "${inputs[@]}"; echo "$repo") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && [ -d "$msgs_dir/vpr_ros/msg" ]; then
  exit 0
fi

echo "[setup] building messages"
export PATH="$venv/bin:$PATH" AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
rm -rf "$build" "$msgs_dir"
mkdir -p "$build"
cmake -S "$repo" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" -DBUILD_TESTING=OFF \
      -DVPR_ROS_MESSAGES_ONLY=ON -DPYTHON_INSTALL_DIR=lib/vpr_ros_msgs \
      -DPython3_EXECUTABLE="$vpy" \
      -DCMAKE_PROJECT_INCLUDE="$repo/scripts/pip_ros_wheels_fix.cmake" > "$build/build.log" 2>&1 \
  || { cat "$build/build.log"; echo "[setup] CMake configure failed (log above)"; exit 1; }
cmake --build "$build" -j "$(nproc)" >> "$build/build.log" 2>&1 \
  && cmake --install "$build" >> "$build/build.log" 2>&1 \
  || { tail -50 "$build/build.log"; echo "[setup] message build failed (log above)"; exit 1; }

# Our sources stay editable: the source tree comes first on sys.path, the generated `vpr_ros.msg`
# second; vpr_ros/__init__.py joins the two with pkgutil.extend_path. The `vpr` command is a shim to
# the source tree (a plain `pip install .` installs the real console script from setup.py).
printf '%s\n%s\n' "$repo" "$msgs_dir" > "$site/vpr_ros_dev.pth"
printf '#!/bin/sh\nexec "%s" -m vpr_core.cli "$@"\n' "$vpy" > "$venv/bin/vpr"
chmod +x "$venv/bin/vpr"
"$vpy" -c "from vpr_ros.msg import PlaceMatch, PlaceMatchArray, LoopClosure" \
  || { echo "[setup] the generated messages do not import; see $build.log"; exit 1; }
echo "$stamp" > "$stamp_file"
