#!/usr/bin/env bash
# The whole pipeline at the seed's GPU scale, on one 8-GPU node (8×H100 or 8×A100; runs/lambda_setup.sh prepares
# one): a 32,000-token tokenizer and token shards from FineWeb-Edu, a depth-20 model pretrained to 20 tokens per
# parameter, CORE on all 22 tasks, SFT on SmolTalk, GSM8K and the generated tasks (from the hub), RL on GSM8K,
# chat_eval of every stage, GGUF and Hugging Face exports checked in llama.cpp, and the report card with what the
# GPU time cost (GPU_PRICE dollars per GPU-hour, default 3). Pretraining uses DDP, or FSDP2 where lesson 12b's memory
# plan says DDP does not fit the GPUs. Stages run through runs/pipeline.sh: a second run reuses
# the stages that finished and resumes the one that was interrupted; CLEAN=1 starts over.
#   DRY_RUN=1 bash runs/speedrun.sh    # every stage's command, and the derived configuration of the training stages
#   WANDB_RUN=name bash runs/speedrun.sh    # log the training stages to Weights & Biases
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-8}
DEPTH=${DEPTH:-20}
DEVICE_BATCH=${DEVICE_BATCH:-32}  # sequences per GPU; 16 on 40 GB cards (base_train --dry-run prints the memory plan)
WANDB=""; [ -n "${WANDB_RUN:-}" ] && WANDB="--run=$WANDB_RUN"
[ -n "${DRY_RUN:-}" ] || bash runs/install_llama_cpp.sh
export NPROC LAUNCH="torchrun --standalone --nproc_per_node=$NPROC"
export TOK_FLAGS="--source=fineweb-edu --max-chars=2000000000 --vocab-size=32000"
export DATA_FLAGS="--source=fineweb-edu --max-shards=240"
export BASE_FLAGS="--depth=$DEPTH --source=fineweb-edu --seq-len=2048 --device-batch-size=$DEVICE_BATCH --eval-every=250
  --sample-every=2000 --save-every=2000 $WANDB"
export BASE_EVAL_FLAGS="--download"                 # CORE: all 22 tasks, every item
export SFT_FLAGS="--device-batch-size=16 $WANDB"     # the GPU mixture, from the hub
export RL_FLAGS="--save-every=100 $WANDB"            # GSM8K, the GPU default
export CHAT_EVAL_FLAGS=""                            # every task, every problem
export REPORT_FLAGS="--gpu-price=${GPU_PRICE:-3}"
bash runs/pipeline.sh
