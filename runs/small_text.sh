#!/usr/bin/env bash
# Pretraining on your own small text, as a new user would: train a 4096-token tokenizer on it, run the CPU recipe
# for MINUTES with an evaluation every 50 steps, and print the validation curve with its best and last points.
# SOURCE is a plain-text file (cut into documents at blank lines, about 8 KB each; the last fifth is held out) or a
# directory of parquet shards with a `text` column (the last shard is held out). Everything goes under its own base
# directory, so your main tokenizer and checkpoints are left alone.
#   bash runs/small_text.sh novel.txt                       # ten minutes
#   MINUTES=2 bash runs/small_text.sh novel.txt --dropout=0.1   # extra flags go to base_train
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE=${1:?usage: bash runs/small_text.sh FILE.txt|PARQUET_DIR [base_train flags]}; shift
MINUTES=${MINUTES:-10}
TAG=${TAG:-small-text}
export NANOLLAMA_BASE_DIR="${NANOLLAMA_BASE_DIR:-$HOME/.cache/nanollama}/small-text"
. .venv/bin/activate
. runs/cpu_flags.sh

if [ -f "$SOURCE" ]; then
  SHARDS="$NANOLLAMA_BASE_DIR/shards/$(basename "$SOURCE" .txt)"
  python - "$SOURCE" "$SHARDS" <<'PY'
import re, sys
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
text, out = Path(sys.argv[1]).read_text(encoding="utf-8"), Path(sys.argv[2])
docs, doc = [], ""
for para in re.split(r"\n\s*\n", text):
    doc = f"{doc}\n\n{para}" if doc else para
    if len(doc) >= 8000: docs.append(doc); doc = ""
docs += [doc] if doc else []
if len(docs) < 5: sys.exit(f"error: {sys.argv[1]} is too short: {len(docs)} documents of ~8 KB, need at least 5")
out.mkdir(parents=True, exist_ok=True)
cut = [round(len(docs) * i / 5) for i in range(6)]  # five shards in reading order; the last one is validation
for i in range(5): pq.write_table(pa.table({"text": docs[cut[i]:cut[i + 1]]}), out / f"shard_{i:05d}.parquet", row_group_size=4)
print(f"{sys.argv[1]}: {len(text):,} characters in {len(docs)} documents -> {out} (the last {len(docs) - cut[4]} held out)")
PY
else
  SHARDS="$SOURCE"
fi
echo "== tokenizer: $CPU_VOCAB tokens, trained on the training shards"
python -m nanollama.tok_train --source="$SHARDS" --vocab-size="$CPU_VOCAB"
echo "== pretraining for $MINUTES minutes"
python -m nanollama.base_train "${CPU_FLAGS[@]}" --source="$SHARDS" --eval-every=50 --save-every=0 --model-tag="$TAG" "$@"
python - "$TAG" <<'PY'
import json, sys
from nanollama.checkpoint import checkpoint_files
meta = json.loads(checkpoint_files(sys.argv[1])[1].read_text())
best = json.loads(checkpoint_files(sys.argv[1] + ":best")[1].read_text())
print(f"last: step {meta['step']}, val bpb {meta['metrics']['val_bpb']:.4f}; best: step {best['step']}, val bpb "
      f"{best['metrics']['val_bpb']:.4f} (chat or export it as --model-tag={sys.argv[1]}:best)")
PY
