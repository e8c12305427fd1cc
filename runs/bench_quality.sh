#!/usr/bin/env bash
# Quality per minute: the CPU recipe's Llama (Muon + AdamW) against a GPT-2-style baseline of the same depth and
# width (learned positions, LayerNorm, GELU, tied embeddings, AdamW), each trained for MINUTES minutes by the same
# loop on the same data and tokenizer. Prints both held-out bits per byte. Run after runcpu.sh (or it trains the
# tokenizer itself); takes about 2 × MINUTES.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-10}
. .venv/bin/activate
. runs/cpu_flags.sh
[ -f "${NANOLLAMA_BASE_DIR:-$HOME/.cache/nanollama}/tokenizer/tokenizer.model" ] || python -m nanollama.tok_train --vocab-size="$CPU_VOCAB"
for ARCH in llama gpt2; do
  echo "== $ARCH for $MINUTES minutes"
  python -m nanollama.base_train "${CPU_FLAGS[@]}" --arch="$ARCH" --model-tag="quality-$ARCH" --eval-every=0 --save-every=0
done
python - <<'PY'
import json
from nanollama.checkpoint import checkpoints_dir, complete_steps
rows = []
for arch in ("llama", "gpt2"):
    d = checkpoints_dir() / f"quality-{arch}"
    m = json.loads((d / f"meta_{complete_steps(d)[-1]:06d}.json").read_text())
    rows.append((arch, m["step"], m["metrics"]["val_bpb"]))
print(f"{'model':8s} {'steps':>6s} {'val bpb':>8s}")
for arch, step, bpb in rows: print(f"{arch:8s} {step:6d} {bpb:8.4f}")
print(f"Llama's bpb is {rows[1][2] / rows[0][2]:.3f}x lower than the GPT-2 baseline's in the same time")
PY
