#!/usr/bin/env bash
# Question: do the CUDA op and the whole model train and evaluate on a GPU, and how fast is the forward? (docs/GPU.md)
# One-shot check of the whole model on a GPU machine: build the CUDA op, run a short AMP training + evaluation of
# the tiny synthetic config on CUDA with MSDA_IMPL cuda, and time the R50 / Swin-T forward pass with the op and
# with the PyTorch path. Logs go to $OUT (if set) or output/gpu_model_check/.
# Python packages missing on the GPU machine can be carried as wheels in .whl/ (installed into /tmp/site).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
LOG_DIR="${OUT:-$REPO/output/gpu_model_check}"
mkdir -p "$LOG_DIR"
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

echo "=== build the op ==="
"$PYTHON" -m pip install -q --no-build-isolation --no-deps --no-index ./ops > "$LOG_DIR/build.log" 2>&1 \
  && echo "op built" || { echo "op build failed"; tail -20 "$LOG_DIR/build.log"; }

echo "=== AMP training on CUDA (tiny synthetic config, MSDA_IMPL cuda) ==="
"$PYTHON" train_net.py --num-gpus 1 --config-file configs/cpu/m2f_synthetic_tiny.yaml \
  SOLVER.MAX_ITER 200 SOLVER.AMP.ENABLED True MODEL.SEM_SEG_HEAD.MSDA_IMPL cuda DATALOADER.NUM_WORKERS 4 \
  LOG_PERIOD 50 OUTPUT_DIR "$LOG_DIR/train" 2>&1 | tee "$LOG_DIR/train.log" | grep -E "iter |AP|Error|error" | tail -25

echo "=== forward time, 512x512, batch 1 ==="
for cfg in configs/coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml \
           configs/coco/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml; do
  for impl in cuda pytorch; do
    "$PYTHON" tools/benchmark.py --config-file "$cfg" --modes --no-data --no-inference --forward 512 --device cuda \
      --steps 10 --output-dir "$LOG_DIR/forward_$(basename "$cfg" .yaml)_$impl" \
      --opts MODEL.SEM_SEG_HEAD.MSDA_IMPL "$impl" 2>&1 | tail -3
  done
done
