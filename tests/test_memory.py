"""Lesson 12b's count of what a compiled training forward saves, against what autograd really saves under
torch.compile (the lesson checks the eager count itself), and the memory command's table and errors."""
import subprocess, sys

import torch

from nanollama.llama import Llama, LlamaConfig
from nanollama.memory import compiled_activation_bytes, saved_activation_bytes


def test_compiled_count_is_exact():
    torch.manual_seed(0)
    c = LlamaConfig(vocab_size=512, n_layer=2, n_embd=192, n_head=3, n_kv_head=1, max_seq_len=128)
    x = torch.randint(0, c.vocab_size, (4, 128))  # 512 tokens: a training-like micro-batch (lesson 12b says why that matters)
    assert saved_activation_bytes(Llama(c), x, compiled=True) == compiled_activation_bytes(c, 4, 128)


def memory_command(*args):
    return subprocess.run([sys.executable, "-m", "nanollama.memory", *args], capture_output=True, text=True, timeout=120)


def test_memory_command():
    r = memory_command("--world=4", "--batch=2")
    assert r.returncode == 0 and "4 GPUs, micro-batches of 2 × 2048 tokens" in r.stdout
    large = next(l for l in r.stdout.splitlines() if l.startswith("| large |"))
    assert large.rstrip(" |").endswith("FSDP2")  # 80 GB cards: only FSDP2 fits large at 2 × 2048 on 4 GPUs
    r = memory_command("--world=0")
    assert r.returncode != 0 and "--world must be >= 1, got 0" in r.stderr and "Traceback" not in r.stderr
