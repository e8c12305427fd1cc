"""Parity with Hugging Face `transformers`: our weights copied into `LlamaForCausalLM` (QK-norm off) and
`Qwen3ForCausalLM` (QK-norm on, per-head q/k RMSNorm with unit weights) must give the same logits and the same
greedy continuation. This is the proof that our model *is* Llama 3 (or Qwen3) and not merely similar to it. The
config and the weight mapping are the Hugging Face export's (`nanollama.export_hf`), so this also tests the export."""
from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from nanollama.export_hf import hf_config, hf_state_dict
from nanollama.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=512, n_layer=3, n_embd=128, n_head=4, n_kv_head=2, max_seq_len=128)


def hf_model(c: LlamaConfig):
    "The `transformers` model the HF export writes for `c`: Llama without QK-norm, Qwen3 with it."
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_config(c)), attn_implementation="eager")


def twins(config: LlamaConfig, seed=0):
    "Our model with random weights everywhere (the default init zeroes output projections) and its HF copy."
    torch.manual_seed(seed)
    ours = Llama(config).eval()
    with torch.no_grad():
        for p in ours.parameters(): p.normal_(0, 0.05)
        ours.embed_tokens.weight.normal_(0, 1)
        ours.lm_head.weight.normal_(0, 0.3)  # peaked predictions: greedy decoding is not decided by rounding
    hf = hf_model(config).eval()
    hf.load_state_dict(hf_state_dict(ours), strict=True)
    return ours, hf


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_logits_match(qk_norm):
    ours, hf = twins(replace(TINY, qk_norm=qk_norm, softcap=0.0))
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if qk_norm else "LlamaForCausalLM")
    idx = torch.randint(0, TINY.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(): a, b = ours(idx), hf(input_ids=idx).logits
    assert (a - b).abs().max().item() <= 1e-4
    with torch.no_grad():  # the loss too: HF shifts the labels itself
        torch.testing.assert_close(ours(idx[:, :-1], targets=idx[:, 1:]), hf(input_ids=idx, labels=idx).loss)


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_softcap_is_hf_logits_through_the_cap(qk_norm):
    ours, hf = twins(replace(TINY, qk_norm=qk_norm, softcap=15.0))
    idx = torch.randint(0, TINY.vocab_size, (2, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(): a, b = ours(idx), hf(input_ids=idx).logits
    assert b.abs().max() > 15, "weights too small: the cap would not be exercised"
    assert (a - 15 * torch.tanh(b / 15)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_greedy_generation_matches(qk_norm):
    ours, hf = twins(replace(TINY, qk_norm=qk_norm, softcap=0.0))
    prompt = torch.randint(0, TINY.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    ref = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)
    out = ours.generate(prompt, max_new_tokens=20)
    assert out.shape == ref.shape == (1, 32)
    assert out.tolist() == ref.tolist()
