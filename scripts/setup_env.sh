#!/usr/bin/env bash
# Creates .venv with the pinned packages, installs the ros2 command and launch tools from
# ../shared/ros2-python into it, builds our ROS messages into it and a colcon install of this package
# (VENV/.vpr_ws, used by `ros2 launch`/`ros2 run` through scripts/ros2_exec.sh).
# Idempotent: each step records a stamp of its inputs and is skipped when they have not changed,
# so a second run takes seconds.
# VPR_GPU=1 (make setup-gpu) also installs requirements-gpu.txt (onnxruntime-gpu, TensorRT, faiss-gpu) in
# place of onnxruntime and faiss-cpu; VPR_GPU=0 puts the CPU packages back. Unset, a venv keeps the
# packages it has, so `make test` on a GPU venv does not undo the GPU install.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VPR_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
torch_spec="${VPR_TORCH_SPEC:-torch==2.13.0}"
stamp_dir="$venv/.vpr_stamps"

say() { printf '[setup] %s\n' "$*"; }

case "${VPR_GPU-}" in
  ""|0|1) ;;
  *) say "VPR_GPU must be 1 (install the GPU packages) or 0 (the CPU ones), got '${VPR_GPU}'"; exit 2 ;;
esac

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $(basename "$venv")"
  "$python" -m venv "$venv"
fi
mkdir -p "$stamp_dir"
vpy="$venv/bin/python"

gpu_reqs="$repo/requirements-gpu.txt"
# The files the CPU step installs, in the order of the glob that made the stamp of earlier venvs
# (requirements-gpu.txt and the bench-only requirements-openvino.txt are not among them).
cpu_reqs=("$repo/requirements-build.txt" "$repo/requirements-test.txt" "$repo/requirements.txt")
# The distributions that provide the modules `onnxruntime`, `faiss` and `tensorrt`, in both variants:
# each pair shares files, so switching removes both and installs one afresh.
swapped=(onnxruntime faiss-cpu $(sed -E -e 's/#.*//' -e '/^[[:space:]]*-/d' -e 's/[[:space:]]*([A-Za-z0-9_.-]+).*/\1/' \
  "$gpu_reqs" | grep .))
gpu="${VPR_GPU:-$([ -f "$stamp_dir/gpu" ] && echo 1 || echo 0)}"
if [ "$gpu" = 0 ] && [ -f "$stamp_dir/gpu" ]; then
  say "VPR_GPU=0: replacing the GPU packages with the CPU ones"
  "$vpy" -m pip uninstall -q -y "${swapped[@]}" 2>&1 | grep -v 'not installed' || true
  rm -f "$stamp_dir/gpu" "$stamp_dir/pip"
fi

pip_stamp="$(echo "$torch_spec" | cat - "${cpu_reqs[@]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_dir/pip" 2>/dev/null)" != "$pip_stamp" ]; then
  say "installing pinned packages (first run: a few minutes)"
  "$vpy" -m pip install -q --disable-pip-version-check "$torch_spec" \
      -r "$repo/requirements.txt" -r "$repo/requirements-build.txt" -r "$repo/requirements-test.txt" \
      2>&1 | grep -v '^WARNING: Location' || true
  "$vpy" -c "import torch, rclpy, faiss, onnxruntime, cv2, rosbags, osrf_pycommon, psutil, lark, numba, pymilvus, milvus_lite" \
      || { say "package installation failed; see the pip output above"; exit 1; }
  echo "$pip_stamp" > "$stamp_dir/pip"
fi

# After the CPU step, whose reinstall of onnxruntime and faiss-cpu (when requirements change) lands
# over the GPU packages' files: the GPU step's stamp includes the CPU step's, so it runs again then.
gpu_stamp="$(echo "$pip_stamp" | cat - "$gpu_reqs" | sha256sum | cut -d' ' -f1)"
if [ "$gpu" = 1 ] && [ "$(cat "$stamp_dir/gpu" 2>/dev/null)" != "$gpu_stamp" ]; then
  say "VPR_GPU=1: installing requirements-gpu.txt in place of onnxruntime and faiss-cpu (large CUDA wheels)"
  "$vpy" -m pip uninstall -q -y "${swapped[@]}" 2>&1 | grep -v 'not installed' || true
  # The CPU requirements as constraints: what the GPU packages share with them keeps its pin.
  "$vpy" -m pip install -q --disable-pip-version-check -r "$gpu_reqs" -c "$repo/requirements.txt" \
      2>&1 | grep -v '^WARNING: Location' || true
  "$vpy" - <<'PY' || { say "the GPU packages are not usable; see the output above"; exit 1; }
import faiss, onnxruntime, tensorrt, torch
problems = []
if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
    problems.append(f"onnxruntime {onnxruntime.__version__} has no CUDA provider (the CPU package is still installed?)")
if not hasattr(faiss, "GpuIndexBinaryFlat"):
    problems.append(f"faiss {faiss.__version__} is a CPU build (faiss-cpu is still installed?)")
if not (torch.version.cuda or "").startswith("13."):
    problems.append(f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, the GPU packages for CUDA 13: "
                    "set VPR_TORCH_SPEC to a CUDA 13 build of torch")
for problem in problems:
    print(f"[setup] {problem}")
print(f"[setup] GPU packages: onnxruntime {onnxruntime.__version__}, TensorRT {tensorrt.__version__}, "
      f"faiss {faiss.__version__} ({faiss.get_num_gpus()} GPUs seen), torch {torch.__version__} (CUDA {torch.version.cuda})")
raise SystemExit(1 if problems else 0)
PY
  echo "$gpu_stamp" > "$stamp_dir/gpu"
fi

"$repo/scripts/install_ros2_tools.sh" "$venv"
"$repo/scripts/build_msgs.sh" "$venv"
"$repo/scripts/build_workspace.sh" "$venv"
"$repo/scripts/compile_kernels.sh" "$venv"
