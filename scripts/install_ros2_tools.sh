#!/usr/bin/env bash
# Installs the real ROS 2 command-line and launch tools into a venv that holds the ROS 2 wheels:
# `ros2` (launch, topic, param, service, lifecycle, node, interface, pkg, run), `launch`, `launch_ros`,
# `rosidl_runtime_py` and `composition_interfaces`. PyPI has none of them; their pure-Python sources
# are in ../shared/ros2-python (see its README.md), or where VPR_ROS2_PYTHON points.
# Usage: scripts/install_ros2_tools.sh VENV. Skipped when the sources and this script have not changed.
# On a normal ROS 2 install these come with the distribution and this script is not needed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "${1:?usage: install_ros2_tools.sh VENV}" && pwd)"
vpy="$venv/bin/python"
src="${VPR_ROS2_PYTHON:-$repo/../shared/ros2-python}"
build="$venv/.vpr_build/ros2-python"
stamp_file="$venv/.vpr_stamps/ros2-tools"
log="$venv/.vpr_build/ros2-tools.log"

# pip order of ../shared/ros2-python/README.md; composition_interfaces is built with CMake below.
packages=(rosidl_runtime_py launch launch_xml launch_yaml launch_ros ros2cli ros2pkg ros2run ros2topic
          ros2node ros2param ros2service ros2lifecycle ros2interface ros2launch)

installed() {
  [ -x "$venv/bin/ros2" ] && "$vpy" -c "import composition_interfaces.srv, launch_ros.actions, rosidl_runtime_py" \
    >/dev/null 2>&1
}

if [ ! -d "$src" ]; then
  if [ -f "$stamp_file" ] && installed; then
    echo "[setup] note: $src is missing; keeping the ROS 2 tools installed before" >&2
    exit 0
  fi
  echo "[setup] the ROS 2 tool sources are missing: expected them at $src" >&2
  echo "[setup] (the folder ros2-python of shared/ beside the repository; or set VPR_ROS2_PYTHON)" >&2
  exit 1
fi
src="$(cd "$src" && pwd)"
for p in "${packages[@]}" composition_interfaces; do
  [ -d "$src/$p" ] || { echo "[setup] $src/$p is missing (incomplete ROS 2 tool sources)" >&2; exit 1; }
done

# Stamp: every source file (path and content), this script, the CMake fix, the venv's location and
# its pinned packages (setup_env.sh's stamp: other ROS wheels mean other generated code).
stamp="$( (cd "$src" && find "${packages[@]}" composition_interfaces -type f \
             ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
           sha256sum "$repo/scripts/install_ros2_tools.sh" "$repo/scripts/pip_ros_wheels_fix.cmake" \
             | cut -d' ' -f1
           cat "$venv/.vpr_stamps/pip" 2>/dev/null || true
           echo "$venv") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && installed; then
  exit 0
fi

echo "[setup] installing the ros2 command and launch tools (from $src)"
# setuptools writes build/ and *.egg-info beside the sources: build from a copy, never in shared/.
[ -d "$build" ] && chmod -R u+w "$build"
rm -rf "$build"
mkdir -p "$build"
: > "$log"
for p in "${packages[@]}" composition_interfaces; do
  cp -R "$src/$p" "$build/$p"
done
chmod -R u+w "$build"
dirs=()
for p in "${packages[@]}"; do dirs+=("$build/$p"); done
"$vpy" -m pip install --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall \
    "${dirs[@]}" >> "$log" 2>&1 \
  || { tail -40 "$log"; echo "[setup] pip install of the ROS 2 tools failed (log above: $log)"; exit 1; }

# composition_interfaces (imported by launch_ros.actions): three services, built like our messages.
# Installed into the venv's prefix: the Python package lands in site-packages, the type support
# libraries in VENV/lib, which the wheels' bootstrapper puts on LD_LIBRARY_PATH.
(
  export PATH="$venv/bin:$PATH" AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
  cmake -S "$build/composition_interfaces" -B "$build/composition_interfaces-build" \
        -DCMAKE_INSTALL_PREFIX="$venv" -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$vpy" \
        -DCMAKE_PROJECT_INCLUDE="$repo/scripts/pip_ros_wheels_fix.cmake" \
    && cmake --build "$build/composition_interfaces-build" -j "$(nproc)" \
    && cmake --install "$build/composition_interfaces-build"
) >> "$log" 2>&1 \
  || { tail -50 "$log"; echo "[setup] building composition_interfaces failed (log above: $log)"; exit 1; }

installed || {
  "$vpy" -c "import composition_interfaces.srv, launch_ros.actions, rosidl_runtime_py" || true
  echo "[setup] the ROS 2 tools do not import after installation; see $log"; exit 1; }
echo "$stamp" > "$stamp_file"
