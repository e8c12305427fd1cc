"""CPU training throughput and MFU of the nano preset: full training steps (forward, loss and backward for each
accumulated micro-batch, then the Muon + AdamW steps) against the float32 matmul peak of this CPU, measured in the
same run before and after (the best of three each time). MFU counts the model's FLOPs only, as is usual; Muon's
Newton-Schulz matmuls (about 75 GFLOP per step for nano) are overhead that a realistic batch amortises.

    python runs/bench_mfu.py                       # nano, 8 x (4 x 256) = 8192 tokens per optimiser step
    python runs/bench_mfu.py --grad-accum 1        # one optimiser step per 1024 tokens: Muon's cost shows
"""
import argparse, statistics, time

import torch

from nanollama.train import measure_cpu_peak_flops
from nanollama.llama import Llama, LlamaConfig
from nanollama.optim import build_optimizers


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="nano")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--grad-accum", type=int, default=8, help="micro-batches per optimiser step")
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args()
    torch.manual_seed(0)
    model = Llama(LlamaConfig.preset(a.model, max_seq_len=a.seq_len))
    optimizers = build_optimizers(model)
    idx = torch.randint(0, model.config.vocab_size, (a.batch_size, a.seq_len + 1))

    def step():
        for _ in range(a.grad_accum): (model(idx[:, :-1], targets=idx[:, 1:]) / a.grad_accum).backward()
        for opt in optimizers: opt.step()
        model.zero_grad(set_to_none=True)

    peak_before = max(measure_cpu_peak_flops(seconds=1.0) for _ in range(3))
    step()  # warm up
    times = []
    for _ in range(a.steps):
        t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    peak_after = max(measure_cpu_peak_flops(seconds=1.0) for _ in range(3))
    peak = max(peak_before, peak_after)
    tok_s = a.grad_accum * a.batch_size * a.seq_len / statistics.median(times)
    flops = model.flops_per_token(a.seq_len)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.model}: {model.num_params():,} parameters, "
          f"{flops / 1e6:.1f} MFLOP/token at seq_len {a.seq_len}, {a.grad_accum} x {a.batch_size} sequences per step")
    print(f"matmul peak: {peak_before / 1e9:.1f} GFLOP/s before, {peak_after / 1e9:.1f} after (using the higher)")
    print(f"training: {tok_s:,.0f} tokens/s = {flops * tok_s / 1e9:.1f} GFLOP/s, MFU {flops * tok_s / peak:.1%} of the measured peak")


if __name__ == "__main__":
    main()
