#!/usr/bin/env bash
# The CPU recipe, the README's main job: from a fresh clone, install, train a tokenizer on the embedded corpus
# (Shakespeare), pretrain a small Llama on it for a fixed time on this CPU, and print its held-out bits per byte
# and samples. About 15 minutes on 2 cores: MINUTES (default 10) of training plus setup and evaluation.
#   bash runs/runcpu.sh                 # everything under ~/.cache/nanollama (or $NANOLLAMA_BASE_DIR)
#   MINUTES=2 bash runs/runcpu.sh       # a quicker look
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-10}

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the CPU build; an unpinned torch pulls GBs of CUDA packages
python -m pip install -q -e .

. runs/cpu_flags.sh

echo "== tokenizer: $CPU_VOCAB tokens, trained on the embedded corpus"
python -m nanollama.tok_train --vocab-size="$CPU_VOCAB"

echo "== pretraining for $MINUTES minutes on this CPU"
python -m nanollama.base_train "${CPU_FLAGS[@]}" --eval-every=200 --save-every=500 --model-tag=base
