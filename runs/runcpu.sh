#!/usr/bin/env bash
# The CPU recipe, the README's main job: the whole pipeline on a laptop, from a fresh clone. It installs into .venv,
# trains a tokenizer on the embedded corpus (Shakespeare), pretrains a small Llama on it, measures it (CORE and
# chat_eval), fine-tunes it into an assistant that uses a calculator (SFT), improves its spelling by reinforcement
# learning (RL), measures each stage, exports the result to GGUF and Hugging Face, has llama.cpp answer a chat prompt
# with it (compared with our own answer), and writes the report card. About 30 minutes on 2 cores, the first time
# (building llama.cpp takes about 8 of them); the minutes of each training stage are knobs:
#   bash runs/runcpu.sh                                    # everything under ~/.cache/nanollama (or $NANOLLAMA_BASE_DIR)
#   BASE_MINUTES=2 SFT_MINUTES=1 RL_MINUTES=1 bash runs/runcpu.sh    # a quicker look
#   CLEAN=1 bash runs/runcpu.sh                            # start over (a second run otherwise reuses what the first made)
# Evaluation sets and SFT data come from the Hugging Face hub, or offline from NANOLLAMA_DATA (a folder in the hub's
# schemas, e.g. the course's shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_MINUTES=${BASE_MINUTES:-${MINUTES:-6}}; SFT_MINUTES=${SFT_MINUTES:-3}; RL_MINUTES=${RL_MINUTES:-3}
CORE_ITEMS=${CORE_ITEMS:-10}      # items per CORE task (22 tasks)
CHAT_ITEMS=${CHAT_ITEMS:-40}      # problems per chat_eval task (7 tasks)

echo "== setup: .venv, torch (CPU build), nanollama, llama.cpp's Python binding"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q torch==2.13.0          # the CPU build; an unpinned torch pulls GBs of CUDA packages
python -m pip install -q -e .
bash runs/install_llama_cpp.sh

MINUTES=$BASE_MINUTES . runs/cpu_flags.sh
DOWNLOAD=(); [ -n "${NANOLLAMA_DATA:-}" ] || DOWNLOAD=(--download)   # CORE's task files: from NANOLLAMA_DATA, else fetched once
export TOK_FLAGS="--vocab-size=$CPU_VOCAB"
export BASE_FLAGS="${CPU_FLAGS[*]} --eval-every=100 --save-every=200"
export BASE_EVAL_FLAGS="--max-per-task=$CORE_ITEMS ${DOWNLOAD[*]}"
export CHAT_EVAL_FLAGS="--max-per-task=$CHAT_ITEMS --max-tokens=128"
export SFT_FLAGS="--device-batch-size=16 --epochs=3 --time-budget=$SFT_MINUTES --eval-every=50 --chat-eval-tasks= --save-every=200"
export RL_FLAGS="--time-budget=$RL_MINUTES --eval-every=40 --eval-prompts=100 --save-every=50"
bash runs/pipeline.sh
