"""Parity with Hugging Face `transformers`: our weights copied into `LlamaForCausalLM` (QK-norm off) and
`Qwen3ForCausalLM` (QK-norm on, per-head q/k RMSNorm with unit weights) must give the same logits and the same
greedy continuation. This is the proof that our model *is* Llama 3 (or Qwen3) and not merely similar to it."""
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from nanollama.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=512, n_layer=3, n_embd=128, n_head=4, n_kv_head=2, max_seq_len=128)


def hf_model(c: LlamaConfig):
    "The `transformers` model with `c`'s shapes: Llama without QK-norm, Qwen3 with it."
    shared = dict(vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.hidden_dim,
                  num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                  head_dim=c.head_dim, max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
                  rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                  tie_word_embeddings=False, attention_bias=False)
    if c.qk_norm: return Qwen3ForCausalLM._from_config(Qwen3Config(**shared, use_sliding_window=False), attn_implementation="eager")
    return LlamaForCausalLM._from_config(HFLlamaConfig(**shared, mlp_bias=False), attn_implementation="eager")


def hf_state_dict(model: Llama) -> dict:
    "Our weights under Hugging Face's names, with unit weights for the norms our model leaves parameter-free."
    sd = {"model.embed_tokens.weight": model.embed_tokens.weight, "lm_head.weight": model.lm_head.weight,
          "model.norm.weight": torch.ones(model.config.n_embd)}
    for i, block in enumerate(model.layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"): sd[p + f"self_attn.{name}.weight"] = getattr(block.attn, name).weight
        for name in ("gate_proj", "up_proj", "down_proj"): sd[p + f"mlp.{name}.weight"] = getattr(block.mlp, name).weight
        sd[p + "input_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"] = torch.ones(model.config.n_embd)
        if model.config.qk_norm:
            sd[p + "self_attn.q_norm.weight"] = sd[p + "self_attn.k_norm.weight"] = torch.ones(model.config.head_dim)
    return sd


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
