#!/usr/bin/env bash
# Scaling laws on one 8-GPU node: for several depths, train at several tokens-per-parameter ratios, and measure each
# model with base_eval (CORE on all 22 tasks, bits per byte), so that loss and CORE trace a curve against compute for
# each model size. Then python -m nanollama.report tables and plots them against training FLOPs.
# DRY_RUN=1 bash runs/scaling_laws.sh prints each run's derived configuration instead of training.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-8}
if [ -n "${DRY_RUN:-}" ]; then LAUNCH=(env WORLD_SIZE="$NPROC" python); CHECK=(--dry-run); else LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC"); CHECK=(); fi
for DEPTH in ${DEPTHS:-8 12 16}; do
  for RATIO in ${RATIOS:-5 10 20 40}; do
    echo "== depth $DEPTH, $RATIO tokens per parameter"
    "${LAUNCH[@]}" -m nanollama.base_train --depth="$DEPTH" --param-data-ratio="$RATIO" --source=fineweb-edu \
        --seq-len=2048 --device-batch-size=32 --eval-every=0 --sample-every=0 --save-every=0 \
        --model-tag="scaling-d$DEPTH-r$RATIO" "${CHECK[@]}"
    [ -n "${DRY_RUN:-}" ] || "${LAUNCH[@]}" -m nanollama.base_eval --model-tag="scaling-d$DEPTH-r$RATIO" --download
  done
done
[ -n "${DRY_RUN:-}" ] || python -m nanollama.report --model-tag="scaling-d$DEPTH-r$RATIO"
