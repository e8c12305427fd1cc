"""Is data ever the bottleneck? Tokenizer and dataloader throughput against what CPU training of the nano preset eats.

Measures, in one process on this machine: encoding (tokens/s, one core and all cores via `encode_batch`), the whole
pre-tokenization pass (read, encode, write shards), the dataloader (tokens/s of (inputs, targets) batches, personality
mixed in at 20%), and a nano-preset training step (forward with targets + backward, batch 4 x 256). Prints each
data rate as a multiple of the training rate; the target is at least 20x.

    python runs/bench_data.py                                     # Shakespeare; a 32k tokenizer trained on the spot
    python runs/bench_data.py --source /path/to/parquet-shards --tokenizer ~/.cache/nanollama/tokenizer

Measurements alternate in rounds (median of each), so that a busy machine slows them alike.
"""
import argparse, os, statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch

from nanollama.dataloader import DataLoader, personality_tokens
from nanollama.tasks import load_conversations
from nanollama.dataset import count_docs, embedded_text, iter_docs, pretokenize, source_name
from nanollama.llama import Llama, LlamaConfig
from nanollama.tokenizer import Tokenizer, get_tokenizer


def tokens_per_second(fn):
    t = time.perf_counter(); n = fn()
    return n / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="shakespeare", help="'shakespeare' or a directory/glob of parquet shards (a `text` column)")
    p.add_argument("--tokenizer", default=None, help="tokenizer file or directory (default: train a --vocab-size one on the embedded corpus)")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--encode-chars", type=int, default=1_000_000, help="characters of documents per encode measurement")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}")

    if a.tokenizer: tok = get_tokenizer(a.tokenizer)
    else:
        t = time.perf_counter(); tok = Tokenizer.train([embedded_text("train")], vocab_size=a.vocab_size)
        print(f"trained a {tok.vocab_size:,}-token tokenizer on the embedded corpus in {time.perf_counter() - t:.1f}s")
    docs, n_chars = [], 0
    for d in iter_docs(a.source, "train"):
        docs.append(d[:a.encode_chars - n_chars]); n_chars += len(docs[-1])
        if n_chars >= a.encode_chars: break

    data = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    for split in ("train", "val"): pretokenize(a.source, tok, split, data, docs_per_shard=256, progress=False)
    secs = time.perf_counter() - t
    n_tokens = sum(len(np.load(f, mmap_mode="r")) for f in data.glob("*.npy"))
    total_docs = count_docs(a.source, "train") + count_docs(a.source, "val")
    print(f"pre-tokenization of {source_name(a.source)}: {total_docs:,} documents, {n_tokens:,} tokens in {secs:.2f}s "
          f"({n_tokens / secs:,.0f} tokens/s, read + encode on all cores + write)")

    B, T = a.batch_size, a.seq_len
    loader = DataLoader(data, B, T, personality=personality_tokens(load_conversations(), tok), personality_ratio=0.2)
    x, y = next(loader)  # real batches for the training step
    model = Llama(LlamaConfig.preset("nano", max_seq_len=T))
    def train_steps(n=2):
        for _ in range(n):
            model.zero_grad(set_to_none=True)
            model(x, targets=y).backward()
        return n * B * T
    def load_batches(n=500):
        for _ in range(n): next(loader)
        return n * B * T
    measures = {f"nano training step (fwd+bwd, {B}x{T})": train_steps,
                "tokenizer encode, 1 core": lambda: sum(len(tok.encode(d)) for d in docs),
                "tokenizer encode_batch, all cores": lambda: sum(map(len, tok.encode_batch(docs))),
                f"dataloader ({B}x{T}, 20% personality)": load_batches}
    for f in measures.values(): f()  # warm up
    rates = {k: [] for k in measures}
    for _ in range(a.rounds):  # alternate, so that noise from the machine hits every measurement alike
        for k, f in measures.items(): rates[k].append(tokens_per_second(f))
    rate = {k: statistics.median(v) for k, v in rates.items()}
    rate["pre-tokenization (read, encode, write; once)"] = n_tokens / secs
    training = next(iter(rate.values()))

    print(f"\n{'':46s} {'tokens/s':>12s}  {'x training':>10s}")
    for k, r in rate.items(): print(f"{k:46s} {r:12,.0f}  {r / training:10.1f}")
    worst = min(list(rate.values())[2:]) / training
    print(f"\ndata is at worst {worst:,.0f}x faster than nano training consumes it: {'meets' if worst >= 20 else 'BELOW'} the 20x target")


if __name__ == "__main__":
    main()
