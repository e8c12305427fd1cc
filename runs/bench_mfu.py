"""CPU training throughput and MFU of the nano preset: full training steps (forward, loss, backward, Muon + AdamW
steps) against the float32 matmul peak of this CPU, measured in the same run before and after.

    python runs/bench_mfu.py                       # nano, batch 4 x 256
    python runs/bench_mfu.py --batch-size 8 --seq-len 512 --steps 10
"""
import argparse, statistics, time

import torch

from nanollama.base_train import measure_cpu_peak_flops
from nanollama.llama import Llama, LlamaConfig
from nanollama.optim import build_optimizers


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="nano")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    torch.manual_seed(0)
    model = Llama(LlamaConfig.preset(a.model, max_seq_len=a.seq_len))
    optimizers = build_optimizers(model)
    idx = torch.randint(0, model.config.vocab_size, (a.batch_size, a.seq_len + 1))

    def step():
        model(idx[:, :-1], targets=idx[:, 1:]).backward()
        for opt in optimizers: opt.step()
        model.zero_grad(set_to_none=True)

    peak_before = measure_cpu_peak_flops(seconds=2.0)
    step()  # warm up
    times = []
    for _ in range(a.steps):
        t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    peak_after = measure_cpu_peak_flops(seconds=2.0)
    peak = max(peak_before, peak_after)
    tok_s = a.batch_size * a.seq_len / statistics.median(times)
    flops = model.flops_per_token(a.seq_len)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.model}: {model.num_params():,} parameters, "
          f"{flops / 1e6:.1f} MFLOP/token at seq_len {a.seq_len}, batch {a.batch_size}")
    print(f"matmul peak: {peak_before / 1e9:.1f} GFLOP/s before, {peak_after / 1e9:.1f} after (using the higher)")
    print(f"training: {tok_s:,.0f} tokens/s = {flops * tok_s / 1e9:.1f} GFLOP/s, MFU {flops * tok_s / peak:.1%} of the measured peak")


if __name__ == "__main__":
    main()
