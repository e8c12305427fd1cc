"""Decode speed of nanollama's Engine against Hugging Face `transformers`' `generate`, same weights, same machine, same run.

    python runs/bench_engine.py [--preset nano] [--new-tokens 128] [--repeats 3] [--threads N]

Measures, for the preset (default nano, 32000-token vocabulary) on the CPU:
  - batch 1: tokens/s of greedy generation (a 32-token prompt, then --new-tokens tokens), ours vs HF, and the ratio;
  - 16 samples of one prompt: aggregate tokens/s (16 x new tokens / time) of our batched multi-sample generation,
    its ratio to our batch-1 rate, and HF's `num_return_sequences=16` for reference.
  - the batch-1 floor: the time of the decode step's matrix-vector products alone (float32 weights read once per
    token, no other work), which bounds what any float32 engine can reach on this machine.
Targets (issue): ours >= 2x HF at batch 1; 16 samples >= 5x the batch-1 aggregate throughput.
The HF model gets our weights through nanollama.export_hf (Qwen3 architecture, since nano has QK-norm); soft-capping
is off so that both compute the same logits, and greedy outputs are checked to be identical. Each measurement is
repeated and the best kept (a busy machine only ever makes a run slower). Every timing includes the prompt's prefill.
"""
import argparse
import os
import platform
import time
from types import SimpleNamespace

import torch
import transformers

from nanollama.engine import Engine, matmul_floor
from nanollama.export_hf import hf_config, hf_state_dict
from nanollama.llama import Llama, LlamaConfig


def build(preset: str):
    "Our model with random weights (peaked predictions) and the `transformers` model holding the same weights."
    torch.manual_seed(0)
    ours = Llama(LlamaConfig.preset(preset, softcap=0.0)).eval()
    with torch.no_grad():
        for p in ours.parameters(): p.normal_(0, 0.05)
        ours.embed_tokens.weight.normal_(0, 1)
        ours.lm_head.weight.normal_(0, 0.3)
    cfg = hf_config(ours.config)
    hf_cfg = transformers.AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa").eval()
    hf.load_state_dict(hf_state_dict(ours), strict=True)
    return ours, hf


def best_time(fn, repeats: int) -> tuple[float, object]:
    "The fastest of `repeats` runs of `fn` (after one warm-up run), and its result."
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's choice)")
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    n, k = args.new_tokens, args.samples

    ours, hf = build(args.preset)
    engine = Engine(ours, SimpleNamespace(eot_id=-1, eos_id=-1))  # no stop tokens: every run decodes exactly n tokens
    prompt = torch.randint(0, ours.config.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    hf_kw = dict(max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)

    ours_1, ours_tokens = best_time(lambda: engine.generate(prompt[0].tolist(), temperature=0, max_tokens=n), args.repeats)
    with torch.inference_mode(): hf_1, hf_tokens = best_time(lambda: hf.generate(prompt, do_sample=False, **hf_kw), args.repeats)
    assert ours_tokens[0] == hf_tokens[0, args.prompt_tokens:].tolist(), "greedy outputs differ: the weights were not mapped right"
    ours_k, samples = best_time(lambda: engine.generate(prompt[0].tolist(), num_samples=k, temperature=1.0, top_k=50, max_tokens=n, seed=0), args.repeats)
    assert len(samples) == k and all(len(s) == n for s in samples)
    with torch.inference_mode():
        hf_k, _ = best_time(lambda: hf.generate(prompt, do_sample=True, top_k=50, num_return_sequences=k, **hf_kw), args.repeats)

    floor = matmul_floor(ours)

    rate = lambda tokens, t: tokens / t
    c = ours.config
    print(f"# Engine decode benchmark: {args.preset} ({c.n_layer} layers, {c.n_embd} wide, {c.n_head} heads, {c.n_kv_head} KV heads, "
          f"vocab {c.vocab_size}, {ours.num_params() / 1e6:.1f}M params), float32 on the CPU")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"prompt {args.prompt_tokens} tokens, {n} new tokens, best of {args.repeats}; greedy outputs identical: yes\n")
    print("| run | nanollama Engine | HF generate | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| batch 1, greedy (tokens/s) | {rate(n, ours_1):.1f} | {rate(n, hf_1):.1f} | {hf_1 / ours_1:.2f}x |")
    print(f"| {k} samples, aggregate (tokens/s) | {rate(k * n, ours_k):.1f} | {rate(k * n, hf_k):.1f} | {hf_k / ours_k:.2f}x |")
    print(f"\n{k} samples vs batch 1 (ours): {ours_1 * k / ours_k:.2f}x the aggregate throughput")
    print(f"batch-1 floor: the {sum(1 for m in ours.modules() if isinstance(m, torch.nn.Linear))} matrix-vector products alone "
          f"take {floor * 1e3:.2f} ms/token ({1 / floor:.0f} tokens/s, {hf_1 / n / floor:.2f}x HF); ours spends "
          f"{(ours_1 / n - floor) * 1e3:.2f} ms/token on everything else, HF {(hf_1 / n - floor) * 1e3:.2f}")
    print(f"targets: batch 1 >= 2x HF: {'met' if hf_1 / ours_1 >= 2 else 'NOT met'}; "
          f"{k} samples >= 5x batch 1: {'met' if ours_1 * k / ours_k >= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
