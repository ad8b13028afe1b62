#!/usr/bin/env bash
# One-shot check of the MultiScaleDeformableAttention op on a GPU machine: environment, build, CUDA tests,
# benchmark. Logs go to $OUT (if set) or output/check_gpu/. Run from anywhere:
#     bash ops/check_gpu.sh                              # H100 (TORCH_CUDA_ARCH_LIST=9.0)
#     TORCH_CUDA_ARCH_LIST=8.0 bash ops/check_gpu.sh     # A100
# Needs python3 with a CUDA torch, pytest, numpy, setuptools and ninja; the repository root goes on PYTHONPATH.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
LOG_DIR="${OUT:-$REPO/output/check_gpu}"
mkdir -p "$LOG_DIR"
PYTHON="${PYTHON:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi

section() { printf '\n=== %s ===\n' "$*"; }

section environment
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi failed"
  "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version | tail -n 2
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST CUDA_HOME=${CUDA_HOME:-unset} MAX_JOBS=$MAX_JOBS"
} 2>&1 | tee "$LOG_DIR/env.log"

section build
start=$(date +%s)
if "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v ./ops > "$LOG_DIR/build.log" 2>&1; then
  echo "built with pip in $(( $(date +%s) - start )) s"
else
  tail -n 40 "$LOG_DIR/build.log"
  echo "pip install failed; trying an in-place build (python setup.py build_ext --inplace)"
  (cd ops && "$PYTHON" setup.py build_ext --inplace) >> "$LOG_DIR/build.log" 2>&1 || {
    tail -n 40 "$LOG_DIR/build.log"
    echo "BUILD FAILED after $(( $(date +%s) - start )) s"
    exit 1
  }
  export PYTHONPATH="$REPO/ops:$PYTHONPATH"
  echo "built in place in $(( $(date +%s) - start )) s"
fi

section tests
start=$(date +%s)
M2F_SIM_CHECK_OPS_BUILD=1 "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
  tests/test_ms_deform_attn_cuda.py tests/test_ops_build.py 2>&1 | tee "$LOG_DIR/pytest.log"
test_status=${PIPESTATUS[0]}
echo "tests exit status $test_status in $(( $(date +%s) - start )) s"

section benchmark
"$PYTHON" tools/benchmark.py --modes --no-data --no-inference --msda --device cuda \
  --output-dir "$LOG_DIR/benchmark" 2>&1 | tee "$LOG_DIR/benchmark.log"
bench_status=${PIPESTATUS[0]}

section summary
echo "tests: exit $test_status; benchmark: exit $bench_status; logs in $LOG_DIR"
[ "$test_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
