#!/usr/bin/env bash
# Creates .venv with the pinned packages, installs the ros2 command and launch tools from
# ../shared/ros2-python into it, builds our ROS messages into it and a colcon install of this package
# (VENV/.vpr_ws, used by `ros2 launch`/`ros2 run` through scripts/ros2_exec.sh).
# Idempotent: each step records a stamp of its inputs and is skipped when they have not changed,
# so a second run takes seconds.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VPR_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
torch_spec="${VPR_TORCH_SPEC:-torch==2.13.0}"
stamp_dir="$venv/.vpr_stamps"

say() { printf '[setup] %s\n' "$*"; }

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $(basename "$venv")"
  "$python" -m venv "$venv"
fi
mkdir -p "$stamp_dir"
vpy="$venv/bin/python"

pip_stamp="$(echo "$torch_spec" | cat - "$repo"/requirements*.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_dir/pip" 2>/dev/null)" != "$pip_stamp" ]; then
  say "installing pinned packages (first run: a few minutes)"
  "$vpy" -m pip install -q --disable-pip-version-check "$torch_spec" \
      -r "$repo/requirements.txt" -r "$repo/requirements-build.txt" -r "$repo/requirements-test.txt" \
      2>&1 | grep -v '^WARNING: Location' || true
  "$vpy" -c "import torch, rclpy, faiss, onnxruntime, cv2, rosbags, osrf_pycommon, psutil, lark, numba, pymilvus, milvus_lite" \
      || { say "package installation failed; see the pip output above"; exit 1; }
  echo "$pip_stamp" > "$stamp_dir/pip"
fi

"$repo/scripts/install_ros2_tools.sh" "$venv"
"$repo/scripts/build_msgs.sh" "$venv"
"$repo/scripts/build_workspace.sh" "$venv"
