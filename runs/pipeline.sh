#!/usr/bin/env bash
# The whole pipeline, stage after stage: tokenizer, pretraining, base_eval, chat_eval of the base, SFT, chat_eval, RL,
# chat_eval, exports (GGUF and Hugging Face), llama.cpp answering a chat prompt with the exported model (compared with
# our own answer), and the report card. runcpu.sh and speedrun.sh run it with their settings; the whole-pipeline test
# runs it at toy size. Run it inside the environment those scripts make (it installs nothing).
#
# A second run reuses what the first made: each stage leaves a stamp holding its command and the stamp of the stage
# before it, and a stage whose stamp matches is skipped. A training stage that was interrupted resumes from its last
# checkpoint (--resume); a stage whose command changed runs again, and so does everything after it.
#   CLEAN=1    start over: remove the stamps, the tokenizer, the base/sft/rl checkpoints, the exports and the report
#   DRY_RUN=1  print every stage's command and, for the training stages that can already derive it, their configuration
#
# Settings, from the environment (flags are split on spaces):
#   LAUNCH      how training and evaluation stages start: "python" (default) or e.g. "torchrun --standalone --nproc_per_node=8"
#   NPROC       the number of ranks a DRY_RUN plans for (default 1)
#   TOK_FLAGS BASE_FLAGS BASE_EVAL_FLAGS SFT_FLAGS RL_FLAGS CHAT_EVAL_FLAGS REPORT_FLAGS   each stage's flags
#   DATA_FLAGS  when set, a stage tokenizes the pretraining data first (python -m nanollama.dataset); otherwise
#               base_train does it when it starts
#   LLAMA_CPP   0 skips the llama.cpp comparison (it needs llama-cpp-python: runs/install_llama_cpp.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${NANOLLAMA_BASE_DIR:-$HOME/.cache/nanollama}
STAMPS="$BASE/pipeline"
EXPORTS="$BASE/exports"
PREV=start
TIMES=()

if [ -n "${CLEAN:-}" ] && [ -z "${DRY_RUN:-}" ]; then
  echo "== CLEAN: removing the stamps, tokenizer, checkpoints of base, sft and rl, exports and report under $BASE"
  rm -rf "$STAMPS" "$BASE/tokenizer" "$BASE/checkpoints/base" "$BASE/checkpoints/sft" "$BASE/checkpoints/rl" "$EXPORTS" "$BASE/report"
fi
[ -n "${DRY_RUN:-}" ] || mkdir -p "$STAMPS"

# stage NAME TAG CMD...: run CMD unless its stamp says it already ran with the same command after the same stages.
# TAG is the checkpoint tag a training stage writes (an interrupted one resumes), or - for the others.
stage() {
  local name=$1 tag=$2; shift 2
  local key; key="$(printf '%q ' "$@")after $PREV"
  PREV=$(printf '%s' "$key" | sha256sum | cut -c1-16)
  if [ -n "${DRY_RUN:-}" ]; then
    echo "== $name: $*"
    local plan
    if [ "$tag" = - ]; then :  # a training stage prints its derived configuration, if what it starts from exists yet
    elif plan=$(env WORLD_SIZE="${NPROC:-1}" python "${@:${#LAUNCH[@]}+1}" --dry-run 2>&1); then echo "$plan" | sed 's/^/   /'
    else echo "   (no derived configuration yet: ${plan##*$'\n'})"; fi
    return
  fi
  if [ "$(cat "$STAMPS/$name.done" 2>/dev/null)" = "$key" ]; then
    echo "== $name: done before with the same command after the same stages: reusing it"
    TIMES+=("$(printf '%-16s reused' "$name")"); return
  fi
  local resume=()
  if [ "$tag" != - ] && [ "$(cat "$STAMPS/$name.started" 2>/dev/null)" = "$key" ] &&
     compgen -G "$BASE/checkpoints/$tag/meta_[0-9]*.json" >/dev/null; then
    resume=(--resume); echo "== $name: resuming the interrupted run"
  else echo "== $name"; fi
  printf '%s' "$key" > "$STAMPS/$name.started"
  local t0=$SECONDS
  "$@" "${resume[@]}"
  TIMES+=("$(printf '%-16s %4d s' "$name" $((SECONDS - t0)))")
  printf '%s' "$key" > "$STAMPS/$name.tmp" && mv "$STAMPS/$name.tmp" "$STAMPS/$name.done"
}

words() { read -r -a "$1" <<< "${2//$'\n'/ }"; }  # words NAME "flags": the flags (over several lines, too) as an array
words LAUNCH "${LAUNCH:-python}"
words TOK "${TOK_FLAGS:-}"; words BASE_TRAIN "${BASE_FLAGS:-}"; words BASE_EVAL "${BASE_EVAL_FLAGS:-}"; words SFT "${SFT_FLAGS:-}"
words RL "${RL_FLAGS:-}"; words CHAT_EVAL "${CHAT_EVAL_FLAGS:-}"; words REPORT "${REPORT_FLAGS:-}"; words DATA "${DATA_FLAGS:-}"

stage tokenizer      -    python -m nanollama.tok_train "${TOK[@]}"
if [ -n "${DATA_FLAGS:-}" ]; then
  stage data         -    python -m nanollama.dataset "${DATA[@]}"
fi
stage base_train     base "${LAUNCH[@]}" -m nanollama.base_train --model-tag=base "${BASE_TRAIN[@]}"
stage base_eval      -    "${LAUNCH[@]}" -m nanollama.base_eval --model-tag=base "${BASE_EVAL[@]}"
stage chat_eval_base -    "${LAUNCH[@]}" -m nanollama.chat_eval --model-tag=base "${CHAT_EVAL[@]}"
stage chat_sft       sft  "${LAUNCH[@]}" -m nanollama.chat_sft --model-tag=base --output-tag=sft "${SFT[@]}"
stage chat_eval_sft  -    "${LAUNCH[@]}" -m nanollama.chat_eval --model-tag=sft "${CHAT_EVAL[@]}"
stage chat_rl        rl   "${LAUNCH[@]}" -m nanollama.chat_rl --model-tag=sft --output-tag=rl "${RL[@]}"
stage chat_eval_rl   -    "${LAUNCH[@]}" -m nanollama.chat_eval --model-tag=rl "${CHAT_EVAL[@]}"
stage export_gguf    -    python -m nanollama.export_gguf --model-tag=rl --output="$EXPORTS/rl.gguf"
stage export_hf      -    python -m nanollama.export_hf --model-tag=rl --output="$EXPORTS/rl-hf"
if [ "${LLAMA_CPP:-1}" != 0 ]; then
  stage llama_cpp    -    python runs/llama_cpp_chat.py --model-tag=rl --gguf="$EXPORTS/rl.gguf"
fi
stage report         -    python -m nanollama.report "${REPORT[@]}"
[ -n "${DRY_RUN:-}" ] && exit 0

echo "== stage times (wall clock, this run)"
printf '   %s\n' "${TIMES[@]}"
echo "== the report card: $BASE/report/report.md"
echo "   chat in a terminal:  python -m nanollama.chat_cli          (the rl model; --model-tag=sft or base for the others)"
echo "   chat in a browser:   python -m nanollama.chat_web          (then open http://localhost:8000)"
echo "   chat in llama.cpp:   python runs/llama_cpp_chat.py --gguf=$EXPORTS/rl.gguf \"your question\"   (or llama-cli -m $EXPORTS/rl.gguf)"
