#!/usr/bin/env bash
# Compiles the sequence filter's kernels into numba's cache (beside vpr_core/sequence_kernels.py), so
# that a node's or a tool's first use loads them instead of compiling (about 5 s of CPU each time).
# Usage: scripts/compile_kernels.sh VENV. Skipped when the packages and the kernels have not changed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "${1:?usage: compile_kernels.sh VENV}" && pwd)"
stamp_file="$venv/.vpr_stamps/kernels"
stamp="$(cat "$venv/.vpr_stamps/pip" "$repo/vpr_core/sequence_kernels.py" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
echo "[setup] compiling the sequence filter's kernels (numba cache)"
(cd "$repo" && "$venv/bin/python" -c "from vpr_core.sequence_filter import compile_kernels; compile_kernels()")
echo "$stamp" > "$stamp_file"
