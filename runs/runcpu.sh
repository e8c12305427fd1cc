#!/usr/bin/env bash
# The CPU recipe, the README's main job: from a fresh clone, install, train a tokenizer on the embedded corpus
# (Shakespeare), pretrain a small Llama on it for a fixed time on this CPU, print its held-out bits per byte and
# samples, then export it to GGUF and let llama.cpp continue the same prompts. About 15 minutes on 2 cores:
# MINUTES (default 10) of training plus setup and evaluation (plus building llama.cpp the first time).
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

echo "== export to GGUF, and the same prompts in llama.cpp"
bash runs/install_llama_cpp.sh
GGUF="${NANOLLAMA_BASE_DIR:-$HOME/.cache/nanollama}/base.gguf"
python -m nanollama.export_gguf --model-tag=base --output="$GGUF"
python - "$GGUF" <<'PY'
import sys
import torch
from llama_cpp import Llama as LlamaCpp
from nanollama.checkpoint import load_model, tokenizer_file
from nanollama.tokenizer import get_tokenizer
model, tok = load_model("base")[0], get_tokenizer(tokenizer_file("base"))
llm = LlamaCpp(model_path=sys.argv[1], n_ctx=model.config.max_seq_len, verbose=False)
for prompt in ["To be, or not to be", "ROMEO.\n", "Who are you?"]:
    ids = tok.encode(prompt, bos=True)
    out = model.generate(torch.tensor([ids]), 40)[0, len(ids):].tolist()
    ours = tok.decode(out[:out.index(tok.eot_id)] if tok.eot_id in out else out)  # llama.cpp stops at <|eot_id|> too
    theirs = llm(prompt, max_tokens=40, temperature=0.0)["choices"][0]["text"]
    print(f"llama.cpp: {prompt + theirs!r}\n           {'identical to' if theirs == ours else 'DIFFERENT from'} nanollama's greedy output")
llm.close()
PY
