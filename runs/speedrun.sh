#!/usr/bin/env bash
# The full run on one 8-GPU node (8×H100 or 8×A100): FineWeb-Edu, a 32000-token tokenizer, a depth-20 model
# trained to 20 tokens per parameter. Set WANDB_RUN=name to log to Weights & Biases.
# DRY_RUN=1 bash runs/speedrun.sh prints the derived configuration of every training command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-8}
DEPTH=${DEPTH:-20}
if [ -n "${DRY_RUN:-}" ]; then LAUNCH=(env WORLD_SIZE="$NPROC" python); CHECK=(--dry-run); else LAUNCH=(torchrun --standalone --nproc_per_node="$NPROC"); CHECK=(); fi
WANDB=(); [ -n "${WANDB_RUN:-}" ] && WANDB=(--run="$WANDB_RUN")

if [ -z "${DRY_RUN:-}" ]; then
  echo "== FineWeb-Edu: tokenizer on 2B characters, then token shards"
  python -m nanollama.tok_train --source=fineweb-edu --max-chars=2000000000 --vocab-size=32000
  python -m nanollama.dataset --source=fineweb-edu --max-shards=240
fi

echo "== pretraining depth $DEPTH on $NPROC GPUs"
"${LAUNCH[@]}" -m nanollama.base_train --depth="$DEPTH" --source=fineweb-edu --seq-len=2048 --device-batch-size=32 \
    --eval-every=250 --sample-every=2000 --save-every=2000 --model-tag=base "${WANDB[@]}" "${CHECK[@]}"
