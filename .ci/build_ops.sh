#!/usr/bin/env bash
# Build the MultiScaleDeformableAttention CUDA op into the project venv for sm_80 and sm_90 without a GPU
# (CI has none), then check that it imports. `M2F_SIM_CHECK_OPS_BUILD=1 pytest tests/test_ops_build.py` verifies
# it further. About 1-4 min on 2 cores.
#     .ci/build_ops.sh                 # uses <repo>/.venv/bin/python
#     PYTHON=python3 .ci/build_ops.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export FORCE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-2}"
# setup.py also appends these itself; exported here so the build log shows them.
NVIDIA_INCLUDE="$("$PYTHON" -c 'import glob, site; print(":".join(glob.glob(site.getsitepackages()[0] + "/nvidia/cu*/include")))')"
if [ -n "$NVIDIA_INCLUDE" ]; then
  export CPATH="${CPATH:+$CPATH:}$NVIDIA_INCLUDE"
fi

echo "building MultiScaleDeformableAttention: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST CUDA_HOME=$CUDA_HOME"
start=$(date +%s)
"$PYTHON" -m pip install --no-build-isolation --no-deps --no-index ./ops
echo "built in $(( $(date +%s) - start )) s"
"$PYTHON" -c "import torch, MultiScaleDeformableAttention as op; \
assert callable(op.ms_deform_attn_forward) and callable(op.ms_deform_attn_backward); print('imports:', op.__file__)"
