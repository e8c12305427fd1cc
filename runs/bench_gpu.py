"""The GPU path of pretraining, measured: base_train's own step (bfloat16 autocast, SDPA, Muon + AdamW) at depths 12
and 20, eager and compiled, and sharded by FSDP2 in a group of one; tokens/s, MFU against the GPU's datasheet peak,
and peak memory against lesson 12b's plan for one GPU (weights, gradients, optimiser state, activations; no DDP
buckets). One process, one GPU. On a CPU it runs too (MFU against the measured bfloat16 matmul peak, no memory
figures), which is how it is checked without a GPU:

    python runs/bench_gpu.py                                   # on a GPU: depths 12 and 20, 16 × 2048 tokens a step
    python runs/bench_gpu.py --depths 2 --seq-len 64 --batch 2 --steps 3   # a quick run on a CPU
"""
import argparse, os, time

import torch
import torch.distributed as dist

from nanollama.llama import Llama, LlamaConfig
from nanollama.memory import GiB, memory_plans
from nanollama.optim import build_optimizers
from nanollama.train import autocast_for, optimizer_step, peak_flops, shard_model, training_forward

MODES = ("eager", "compiled", "fsdp2")


def one_process_group(device):
    "A process group of one, which FSDP2 needs even on a single GPU."
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1"); os.environ.setdefault("MASTER_PORT", "29511")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def measure(depth: int, mode: str, a, device) -> dict:
    "Tokens/s, MFU and peak memory of `a.steps` optimiser steps (after two warm-up steps) of a depth-`depth` model."
    torch.manual_seed(0)
    config = LlamaConfig.from_depth(depth, max_seq_len=a.seq_len)
    model = Llama(config).to(device)
    compile = mode != "eager" and not a.no_compile
    if mode == "fsdp2": one_process_group(device); shard_model(model, compile); fwd = model
    else: fwd = training_forward(model, device, 1, compile)
    optimizers = build_optimizers(model)
    autocast, mm_dtype = autocast_for(device, "bfloat16")
    batch = torch.randint(0, config.vocab_size, (a.batch, a.seq_len + 1), device=device)
    step = lambda: optimizer_step(fwd, lambda: (batch[:, :-1], batch[:, 1:]), 1, optimizers, autocast)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2): step()  # warm up (and compile)
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
    sync(); t = time.perf_counter()
    for _ in range(a.steps): loss = step()
    sync(); seconds = (time.perf_counter() - t) / a.steps
    tok_s = a.batch * a.seq_len / seconds
    peak = peak_flops(device, mm_dtype)
    plan = memory_plans(config, a.batch, a.seq_len, 1, compiled=compile)[0]
    planned = plan.total - plan.buffers  # one process: no DDP buckets
    row = dict(depth=depth, mode=mode, tok_s=tok_s, mfu=model.flops_per_token(a.seq_len) * tok_s / peak if peak else float("nan"),
               loss=loss, planned_gib=planned / GiB, peak_gib=float("nan"))
    if device.type == "cuda": row["peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    del model, fwd, optimizers
    if device.type == "cuda": torch.cuda.empty_cache()
    torch._dynamo.reset()
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="12,20")
    p.add_argument("--modes", default=",".join(MODES), help=f"any of {', '.join(MODES)}")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5, help="timed optimiser steps after two warm-up steps")
    p.add_argument("--no-compile", action="store_true", help="keep the compiled and fsdp2 modes eager (a quick check)")
    a = p.parse_args()
    modes = a.modes.split(",")
    if set(modes) - set(MODES): p.error(f"--modes: unknown {', '.join(sorted(set(modes) - set(MODES)))}; choose from {', '.join(MODES)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, bfloat16 autocast, {a.batch} × {a.seq_len} tokens a step")
    print("| depth | mode | tokens/s | MFU | peak memory | lesson 12b's plan | loss |\n|---:|---|---:|---:|---:|---:|---:|")
    for depth in map(int, a.depths.split(",")):
        for mode in modes:
            r = measure(depth, mode, a, device)
            print(f"| {depth} | {mode} | {r['tok_s']:,.0f} | {r['mfu']:.1%} | {r['peak_gib']:.1f} GiB | {r['planned_gib']:.1f} GiB | "
                  f"{r['loss']:.3f} |", flush=True)
    if dist.is_initialized(): dist.destroy_process_group()


if __name__ == "__main__": main()
