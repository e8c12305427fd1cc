"""The Hugging Face export against `transformers`: the folder loads offline with `AutoModelForCausalLM` and
`AutoTokenizer`, computes our logits, continues greedily with our tokens, and its tokenizer and chat template give our
ids. Known, documented exceptions: `transformers` parses special-token text such as `<|eot_id|>` unless asked not to
(`split_special_tokens=True`), and reads a literal `▁` (U+2581) as a space (lesson 21)."""
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nanollama.dataset import embedded_text
from nanollama.export_hf import write_hf

from test_export_gguf import CHATS, TEXTS, prompt_of


@pytest.fixture(scope="module")
def exported(export_models, export_tok, tmp_path_factory):
    "Model tag -> (our model, the folder loaded by transformers)."
    d, out = tmp_path_factory.mktemp("hf"), {}
    for tag, model in export_models.items():
        if model.config.softcap:
            with pytest.warns(UserWarning, match="transformers' .* has no cap"): path = write_hf(model, export_tok, d / tag)
        else: path = write_hf(model, export_tok, d / tag)
        out[tag] = model, AutoModelForCausalLM.from_pretrained(path).eval()
    return out


@pytest.mark.parametrize("tag", ["llama", "qwen3"])
def test_logits_and_greedy_match(exported, export_tok, tag):
    model, hf = exported[tag]
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if tag == "qwen3" else "LlamaForCausalLM")
    ids = torch.tensor([export_tok.encode(embedded_text("val")[:4000], bos=True)[:128]])
    with torch.no_grad(): diff = (hf(ids).logits - model(ids)).abs().max().item()
    print(f"{tag}: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-4
    prompt = ids[:, :10]
    ref = model.generate(prompt, max_new_tokens=20)
    assert hf.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0).tolist() == ref.tolist()


@pytest.mark.parametrize("tag", ["llama-capped", "qwen3-capped"])
def test_softcap_is_hf_logits_through_the_cap(exported, export_tok, tag):
    model, hf = exported[tag]
    ids, cap = torch.tensor([export_tok.encode(embedded_text("val")[:4000], bos=True)[:128]]), model.config.softcap
    with torch.no_grad(): ours, theirs = model(ids), hf(ids).logits
    assert theirs.abs().max() > cap
    assert (cap * torch.tanh(theirs / cap) - ours).abs().max().item() <= 1e-4


def test_tokenizer_gives_our_ids(exported, export_tok, tmp_path):
    hf_tok = AutoTokenizer.from_pretrained(write_hf(exported["llama"][0], export_tok, tmp_path / "m"))
    for s in TEXTS + [embedded_text("val")[:20000]]:
        assert hf_tok(s, split_special_tokens=True)["input_ids"] == export_tok.encode(s, bos=True), repr(s[:40])
        assert hf_tok.decode(export_tok.encode(s)) == s, repr(s[:40])
        if "<|" not in s: assert hf_tok(s)["input_ids"] == export_tok.encode(s, bos=True), repr(s[:40])
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (export_tok.bos_id, export_tok.eot_id)
    assert hf_tok.convert_tokens_to_ids(list(export_tok.specials)) == list(export_tok.specials.values())
    assert hf_tok.decode(export_tok.encode("hi", bos=True)) == "<|begin_of_text|>hi"
    for chat in CHATS:
        assert hf_tok.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"] == export_tok.render_conversation(chat)[0]
        assert hf_tok.apply_chat_template(prompt_of(chat), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"] == export_tok.render_for_completion(chat)


def test_folder_is_replaced_atomically_and_others_are_refused(export_models, export_tok, tmp_path):
    out = write_hf(export_models["llama"], export_tok, tmp_path / "m")
    write_hf(export_models["qwen3"], export_tok, out)  # replaces the earlier export
    assert type(AutoModelForCausalLM.from_pretrained(out)).__name__ == "Qwen3ForCausalLM"
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a Hugging Face model folder"): write_hf(export_models["llama"], export_tok, tmp_path / "mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "mine"]  # no temporary folders left behind
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                    "tokenizer.json", "tokenizer_config.json"]


def test_command_line(export_models, export_base_dir, export_tok, tmp_path):
    env = {**os.environ, "NANOLLAMA_BASE_DIR": str(export_base_dir), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "nanollama.export_hf", "--model-tag=qwen3", f"--output={out}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout
    hf = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(hf.lm_head.weight, export_models["qwen3"].lm_head.weight)
    r = subprocess.run([sys.executable, "-m", "nanollama.export_hf", "--model-tag=missing", f"--output={tmp_path / 'x'}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "error: no checkpoint for model tag 'missing'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
