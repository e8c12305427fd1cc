#!/usr/bin/env bash
# Set up a fresh Lambda Cloud (or any Ubuntu) GPU machine for speedrun.sh: system packages, a virtual environment,
# PyTorch with CUDA, nanollama, and optionally Weights & Biases. Run once after cloning:
#   bash runs/lambda_setup.sh && . .venv/bin/activate && bash runs/speedrun.sh
# DRY_RUN=1 only prints the steps.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { if [ -n "${DRY_RUN:-}" ]; then echo "+ $*"; else "$@"; fi; }
run sudo apt-get update -qq
run sudo apt-get install -y -qq python3-venv python3-dev build-essential
[ -x .venv/bin/python ] || run python3 -m venv .venv
run .venv/bin/python -m pip install -q --upgrade pip
run .venv/bin/python -m pip install -q torch      # the CUDA build, the default on Linux
run .venv/bin/python -m pip install -q -e . wandb
run .venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.device_count(), 'GPUs:', torch.cuda.get_device_name(0))"
echo "ready: . .venv/bin/activate && bash runs/speedrun.sh   (WANDB_RUN=name to log; run 'wandb login' first)"
