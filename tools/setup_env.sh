#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install everything from the repository's
# own files. With nvcc present (CUDA_HOME or /usr/local/cuda), also build the optional CUDA op from ops/.
# Usage: bash tools/setup_env.sh [--no-ops]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${M2F_SIM_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
echo "[setup] installing requirements (torch from the local wheel cache when present)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# the CPU deformable-attention kernels are compiled on first use (about 10 s); do it now, where a failure is visible
# (training then falls back to the slower pure-PyTorch path and says why)
"$VENV/bin/python" -c "import logging; logging.basicConfig(level=logging.INFO, format='[setup] %(message)s'); \
from mask2former_sim.layers import ms_deform_attn_cpu; ms_deform_attn_cpu.load_op()"

if [ "${1:-}" != "--no-ops" ] && [ -f ops/setup.py ]; then
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  if [ -x "$CUDA_HOME/bin/nvcc" ] || command -v nvcc >/dev/null 2>&1; then
    if "$VENV/bin/python" -c "import torch, MultiScaleDeformableAttention" 2>/dev/null; then
      echo "[setup] CUDA op MultiScaleDeformableAttention already built"
    else
      echo "[setup] building the CUDA op from ops/ (set TORCH_CUDA_ARCH_LIST to choose architectures)"
      VENV="$VENV" bash .ci/build_ops.sh
    fi
  else
    echo "[setup] no nvcc found: skipping the optional CUDA op (the pure-PyTorch path is used)"
  fi
fi
echo "[setup] done: use $VENV/bin/python"
