"""Training-step throughput of nanollama's `Llama` vs Hugging Face `transformers`' `LlamaForCausalLM`.

Both models get the same shapes, the same tokens and the same work (forward, loss, backward) in the same process,
timed in alternating rounds so that machine noise hits both alike. Prints tokens/s and the ratio ours / HF.

    python runs/bench_model.py                    # nano and depth-2 configs (vocab 32000, and 8192), CPU
    python runs/bench_model.py --batch-size 8 --seq-len 512 --rounds 5
"""
import argparse, statistics, time
from dataclasses import replace

import torch
from transformers import LlamaConfig as HFLlamaConfig, LlamaForCausalLM

from nanollama.llama import Llama, LlamaConfig


def hf_twin(c: LlamaConfig) -> LlamaForCausalLM:
    "`transformers`' Llama with the same shapes as `c` (its attention through SDPA, its default on CPU)."
    hc = HFLlamaConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.hidden_dim,
                       num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                       head_dim=c.head_dim, max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                       tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    return LlamaForCausalLM._from_config(hc, attn_implementation="sdpa")


def ours_step(model, idx):
    model(idx[:, :-1], targets=idx[:, 1:]).backward()

def hf_step(model, idx):
    "The same 256 input tokens per row as ours (HF shifts the labels inside, so it scores one token fewer per row)."
    model(input_ids=idx[:, :-1], labels=idx[:, :-1], use_cache=False).loss.backward()


def seconds_per_step(step, model, idx, iters):
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    for _ in range(iters): step(model, idx)
    return (time.perf_counter() - t) / iters


def compare(name, config, batch_size, seq_len, rounds, iters):
    "Time both models in alternating rounds; print the median tokens/s of each and the ratio."
    torch.manual_seed(0)
    ours, hf = Llama(config), hf_twin(config)
    idx = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1))
    ours_step(ours, idx), hf_step(hf, idx)  # warm up both
    times = {"ours": [], "hf": []}
    for _ in range(rounds):
        times["ours"].append(seconds_per_step(ours_step, ours, idx, iters))
        times["hf"].append(seconds_per_step(hf_step, hf, idx, iters))
    tokens = batch_size * seq_len
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(f"{name:34s} {ours.num_params() / 1e6:7.1f}M  {tps['ours']:9,.0f}  {tps['hf']:9,.0f}  {tps['ours'] / tps['hf']:5.2f}x")
    return tps["ours"] / tps["hf"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per model (median is reported)")
    p.add_argument("--iters", type=int, default=2, help="training steps per round")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch_size} x {a.seq_len} tokens, float32")
    print(f"{'model':34s} {'params':>8s}  {'ours tok/s':>9s}  {'HF tok/s':>9s}  ratio")
    configs = {"nano": LlamaConfig.preset("nano", max_seq_len=a.seq_len),              # depth 6, 384 wide
               "depth 2": LlamaConfig.from_depth(2, max_seq_len=a.seq_len),           # 192 wide, 3 heads, 1 KV head
               "depth 2, vocab 8192": LlamaConfig.from_depth(2, vocab_size=8192, max_seq_len=a.seq_len)}
    for name, c in configs.items():
        compare(f"{name}, as Llama 3", replace(c, qk_norm=False, softcap=0.0), a.batch_size, a.seq_len, a.rounds, a.iters)
        compare(f"{name}, QK-norm + softcap", c, a.batch_size, a.seq_len, a.rounds, a.iters)


if __name__ == "__main__":
    main()
