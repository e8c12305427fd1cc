"""What one bfloat16-autocast training forward saves for backward under torch.compile, measured, against lesson 12b's count.

Lesson 12b's `saved_activation_bytes` counts what autograd saves (`saved_tensors_hooks`), each storage once; the
lesson checks its eager count the same way.
Compiling takes about half a minute per shape on a CPU.
    python runs/count_activations.py
"""
import torch
from nanollama.llama import Llama, LlamaConfig
from nanollama.memory import compiled_activation_bytes, saved_activation_bytes

SHAPES = [(dict(vocab_size=512, n_layer=2, n_embd=192, n_head=3, n_kv_head=1, max_seq_len=128), 4, 128),
          (dict(vocab_size=1000, n_layer=3, n_embd=256, n_head=4, n_kv_head=2, max_seq_len=96, softcap=0.0), 8, 96),
          (dict(vocab_size=512, n_layer=2, n_embd=192, n_head=6, n_kv_head=3, max_seq_len=128, qk_norm=False), 4, 128),
          (dict(vocab_size=32000, n_layer=2, n_embd=192, n_head=3, n_kv_head=1, max_seq_len=160), 2, 160)]


def main():
    for kw, B, T in SHAPES:
        torch.manual_seed(0)
        c = LlamaConfig(**kw)
        model, x = Llama(c), torch.randint(0, c.vocab_size, (B, T))
        measured, counted = saved_activation_bytes(model, x, compiled=True), compiled_activation_bytes(c, B, T)
        print(f"{B}×{T} {kw}: measured {measured:,} bytes, lesson 12b counts {counted:,} ({counted / measured - 1:+.2%})", flush=True)
        torch._dynamo.reset()


if __name__ == "__main__": main()
