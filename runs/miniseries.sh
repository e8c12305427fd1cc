#!/usr/bin/env bash
# The model series on one 8-GPU node: depths 6 to 20 (nano ... d20), each trained compute-optimally (20 tokens per
# parameter) on FineWeb-Edu, one checkpoint tag per depth (d6, d8, ...), each measured by base_eval (CORE on all 22
# tasks, bits per byte). Needs speedrun.sh's tokenizer and shards. Then python -m nanollama.report tables and plots
# the series (CORE and bits per byte against training FLOPs). Each run uses DDP, or FSDP2 where lesson 12b's memory
# plan says DDP does not fit the GPUs.
# DRY_RUN=1 bash runs/miniseries.sh prints each run's derived configuration instead of training.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-8}
DEVICE_BATCH=${DEVICE_BATCH:-32}  # sequences per GPU; 16 on 40 GB cards (the dry run prints each depth's memory plan)
if [ -n "${DRY_RUN:-}" ]; then LAUNCH=(env WORLD_SIZE="$NPROC" python); CHECK=(--dry-run); else LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC"); CHECK=(); fi
for DEPTH in ${DEPTHS:-6 8 10 12 14 16 18 20}; do
  echo "== depth $DEPTH"
  "${LAUNCH[@]}" -m nanollama.base_train --depth="$DEPTH" --source=fineweb-edu --seq-len=2048 --device-batch-size="$DEVICE_BATCH" \
      --eval-every=500 --sample-every=0 --save-every=0 --model-tag="d$DEPTH" "${CHECK[@]}"
  [ -n "${DRY_RUN:-}" ] || "${LAUNCH[@]}" -m nanollama.base_eval --model-tag="d$DEPTH" --download
done
[ -n "${DRY_RUN:-}" ] || python -m nanollama.report --model-tag="d$DEPTH"
