#!/usr/bin/env bash
# Question: do the three supervisions train on a GPU, and at what speed and AP? (docs/GPU.md)
# One-shot GPU check of the three supervisions, for a machine lent for a few minutes:
#   1. build the CUDA op (skipped when it already imports);
#   2. short AMP trainings of the tiny synthetic config on CUDA in mask, box and sim modes (SIM switched on
#      after a third of the schedule), each evaluated: finite losses, s/it, segm AP;
#   3. then, while time is left, the nuclei comparison (boxinst_m2f_nuclei_lite0.yaml, full 1000-iteration
#      schedule, fp32) in the modes of $NUCLEI_MODES, seed after seed, through tools/compare_supervision.py.
# Logs, a summary table and the runs' logs and metrics (no weights) go to $OUT (if set) or
# output/gpu_supervision_check/. Environment: ITERS (default 300), DEADLINE_S (default 420: no nuclei run starts
# later than its estimated end allows), NUCLEI_MODES (default "box sim"), NUCLEI_SEEDS (default "0 1 2"),
# NUCLEI_OPTS (extra KEY VALUE overrides), PYTHON, TORCH_CUDA_ARCH_LIST (default 9.0). The nuclei data is read
# from $M2F_SIM_SHARED_DATA. Python packages missing on the GPU machine can be carried as wheels in $WHEELS
# (default .whl/; installed into /tmp/site).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
START=$(date +%s)
LOG_DIR="${OUT:-$REPO/output/gpu_supervision_check}"
RUNS="${RUNS_DIR:-/tmp/gpu_supervision_runs}"
mkdir -p "$LOG_DIR" "$RUNS"
PYTHON="${PYTHON:-python3}"
ITERS="${ITERS:-300}"
DEADLINE_S="${DEADLINE_S:-420}"
NUCLEI_MODES="${NUCLEI_MODES:-box sim}"
NUCLEI_SEEDS="${NUCLEI_SEEDS:-0 1 2}"
NUCLEI_OPTS="${NUCLEI_OPTS:-}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export M2F_SIM_DATASETS="$RUNS/datasets"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
WHEELS="${WHEELS:-.whl}"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
elapsed() { echo $(( $(date +%s) - START )); }

echo "=== environment ($(elapsed) s) ==="
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi failed"
  "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
} 2>&1 | tee "$LOG_DIR/env.log"

echo "=== build the op ($(elapsed) s) ==="
if "$PYTHON" -c "import torch, MultiScaleDeformableAttention" 2>/dev/null; then
  echo "op already importable"
elif "$PYTHON" -m pip install -q --no-build-isolation --no-deps --no-index ./ops > "$LOG_DIR/build.log" 2>&1; then
  echo "op built in $(elapsed) s"
else
  echo "op build failed (the model falls back to the PyTorch path):"; tail -20 "$LOG_DIR/build.log"
fi

echo "=== short AMP trainings, synthetic, $ITERS iterations ($(elapsed) s) ==="
SIM_START=$(( ITERS / 3 ))
for mode in mask box sim; do
  t0=$(date +%s)
  "$PYTHON" train_net.py --num-gpus 1 --config-file configs/cpu/sim_m2f_synthetic_tiny.yaml \
    MODEL.MASK_FORMER.SUPERVISION "$mode" SOLVER.MAX_ITER "$ITERS" SOLVER.AMP.ENABLED True \
    MODEL.SIM.START_ITER "$SIM_START" DATALOADER.NUM_WORKERS 8 LOG_PERIOD 50 SOLVER.CHECKPOINT_PERIOD 100000 \
    OUTPUT_DIR "$RUNS/synthetic_amp/$mode" > "$RUNS/synthetic_amp_$mode.log" 2>&1
  echo "$mode: exit $? after $(( $(date +%s) - t0 )) s"
  grep -E "device:|iter $ITERS/|copypaste: [0-9]|Error|non-finite" "$RUNS/synthetic_amp_$mode.log" | tail -6
done

echo "=== nuclei, fp32, modes: $NUCLEI_MODES ($(elapsed) s) ==="
estimate=240
for seed in $NUCLEI_SEEDS; do
  for mode in $NUCLEI_MODES; do
    left=$(( DEADLINE_S - $(elapsed) ))
    if [ "$left" -lt "$estimate" ]; then
      echo "skip $mode seed $seed: $left s left, a run takes ~$estimate s"
      continue
    fi
    t0=$(date +%s)
    timeout "$left" "$PYTHON" tools/compare_supervision.py --config-file configs/cpu/boxinst_m2f_nuclei_lite0.yaml \
      --modes "$mode" --seeds "$seed" --output-dir "$RUNS/nuclei" \
      --opts MODEL.DEVICE cuda DATALOADER.NUM_WORKERS 8 SOLVER.CHECKPOINT_PERIOD 100000 $NUCLEI_OPTS \
      > "$RUNS/nuclei_${mode}_$seed.log" 2>&1
    status=$?
    estimate=$(( $(date +%s) - t0 + 10 ))
    echo "$mode seed $seed: exit $status after $(( estimate - 10 )) s"
    grep -E "iter 1000/|copypaste: [0-9]|Error" "$RUNS/nuclei/$mode/seed$seed/log.txt" 2>/dev/null | tail -3
  done
done

echo "=== summary ($(elapsed) s) ==="
"$PYTHON" - "$RUNS" <<'PY' 2>&1 | tee "$LOG_DIR/summary.md"
import glob, json, os, re, sys
runs = sys.argv[1]
print("| run | s/it (last logged) | segm AP | AP50 | bbox AP | skipped non-finite steps |")
print("|---|---|---|---|---|---|")
for final in sorted(glob.glob(os.path.join(runs, "**", "metrics_final.json"), recursive=True)):
    out = os.path.dirname(final)
    log = open(os.path.join(out, "log.txt")).read()
    times = re.findall(r"time ([0-9.]+) s/it", log)
    results = json.load(open(final)).get("results") or {}
    if "segm" not in results and results:
        results = next(iter(results.values()))
    segm, bbox = results.get("segm", {}), results.get("bbox", {})
    skipped = len(re.findall(r"non-finite loss in", log))
    print(f"| {os.path.relpath(out, runs)} | {times[-1] if times else '?'} | {segm.get('AP', float('nan')):.2f} "
          f"| {segm.get('AP50', float('nan')):.2f} | {bbox.get('AP', float('nan')):.2f} | {skipped} |")
PY
tar czf "$LOG_DIR/runs.tgz" -C "$RUNS" --exclude='*.pth' --exclude='datasets' --exclude='inference' . 2>/dev/null
echo "done in $(elapsed) s"
