# The toy settings of runs/pipeline.sh: every stage in seconds, on the test fixtures. Sourced (not run) by the report
# lesson (nbs/22_report.ipynb) and the whole-pipeline test (tests/test_pipeline.py); NANOLLAMA_BASE_DIR is theirs.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export NANOLLAMA_DATA="$REPO/tests/fixtures/data" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
export TOK_FLAGS="--vocab-size=512"
export BASE_FLAGS="--depth=1 --seq-len=64 --device-batch-size=8 --total-batch-size=512 --num-iterations=6 --eval-every=3
  --sample-every=0 --eval-tokens=1024 --save-every=0"
export BASE_EVAL_FLAGS="--core-dir=$REPO/tests/fixtures/core --max-per-task=2 --bpb-tokens=2048 --num-samples=1"
export CHAT_EVAL_FLAGS="--tasks=ARC-Easy,SpellingBee,Arithmetic --max-per-task=3 --max-tokens=16"
export SFT_FLAGS="--seq-len=64 --mixture=identity=1,spellingbee=1 --synthetic-size=40 --val-per-source=4 --eval-every=2
  --chat-eval-tasks= --num-iterations=4 --device-batch-size=4"
export RL_FLAGS="--tasks=SpellingBee --train-size=20 --prompts-per-step=2 --num-samples=2 --max-tokens=12 --num-iterations=3
  --eval-every=0 --eval-prompts=4 --eval-samples=2 --device-batch-size=4 --save-every=1"
