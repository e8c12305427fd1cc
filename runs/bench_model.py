"""Training-step throughput of nanollama's `Llama` vs Hugging Face `transformers`' `LlamaForCausalLM`.

Both models get the same shapes, the same tokens and the same work (forward, loss, backward), timed in alternating
rounds so that machine noise hits both alike. Each model lives in its own worker process: the C allocator keeps
process-wide state (when to return memory to the OS, when to map fresh pages), and in a shared process one model's
allocations change the other's page-fault costs by up to 20%. Prints tokens/s and the ratio ours / HF.

    python runs/bench_model.py                    # nano and depth-2 configs (vocab 32000, and 8192), CPU
    python runs/bench_model.py --batch-size 8 --seq-len 512 --rounds 5
"""
import argparse, statistics, time
from dataclasses import replace
import multiprocessing as mp

from peers import require
require("transformers")

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


def worker(which, config, batch_size, seq_len, iters, threads, conn):
    "Build one model, then time `iters` training steps each time the parent asks; reply with seconds per step."
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, step = (Llama(config), ours_step) if which == "ours" else (hf_twin(config), hf_step)
    idx = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1))
    step(model, idx)  # warm up
    conn.send(sum(p.numel() for p in model.parameters()))
    while conn.recv():
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        for _ in range(iters): step(model, idx)
        conn.send((time.perf_counter() - t) / iters)


def compare(name, config, batch_size, seq_len, rounds, iters):
    "Time both models in alternating rounds, each in its own process; print the median tokens/s of each and the ratio."
    ctx, pipes, procs = mp.get_context("spawn"), {}, []
    for which in ("ours", "hf"):
        pipes[which], child = ctx.Pipe()
        procs.append(ctx.Process(target=worker, args=(which, config, batch_size, seq_len, iters, torch.get_num_threads(), child)))
        procs[-1].start()
        child.close()  # only the worker holds its end now: if it dies, recv() raises EOFError instead of waiting forever
        n_params = pipes[which].recv()  # built and warmed up before the other starts: no overlap
        if which == "ours": ours_params = n_params
    times = {"ours": [], "hf": []}
    for _ in range(rounds):
        for which, conn in pipes.items():
            time.sleep(0.5)  # let the other worker's OpenMP threads stop spinning and give back the cores
            conn.send(True)
            times[which].append(conn.recv())
    for conn in pipes.values(): conn.send(False)
    for p in procs: p.join()
    tokens = batch_size * seq_len
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(f"{name:40s} {ours_params / 1e6:7.1f}M  {tps['ours']:9,.0f}  {tps['hf']:9,.0f}  {tps['ours'] / tps['hf']:5.2f}x", flush=True)
    return tps["ours"] / tps["hf"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per model (median is reported)")
    p.add_argument("--iters", type=int, default=2, help="training steps per round")
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch_size} x {a.seq_len} tokens, float32")
    print(f"{'model':40s} {'params':>8s}  {'ours tok/s':>9s}  {'HF tok/s':>9s}  ratio")
    configs = {"nano": LlamaConfig.preset("nano", max_seq_len=a.seq_len),              # depth 6, 384 wide
               "depth 2": LlamaConfig.from_depth(2, max_seq_len=a.seq_len),           # 192 wide, 3 heads, 1 KV head
               "depth 2, vocab 8192": LlamaConfig.from_depth(2, vocab_size=8192, max_seq_len=a.seq_len)}
    for name, c in configs.items():
        compare(f"{name}, as Llama 3", replace(c, qk_norm=False, softcap=0.0), a.batch_size, a.seq_len, a.rounds, a.iters)
        compare(f"{name}, QK-norm + softcap", c, a.batch_size, a.seq_len, a.rounds, a.iters)


if __name__ == "__main__":
    main()
