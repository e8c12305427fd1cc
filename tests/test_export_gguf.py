"""The GGUF export against the real tool: llama.cpp (through llama-cpp-python) must compute our logits, continue
greedily with our tokens, tokenize text into our ids and format chats into our ids, for both architectures we
export to (`llama` without QK-norm, `qwen3` with it). Quantized files must keep a trained model's greedy output.
Known, documented exceptions: a literal `▁` (U+2581) in text, which llama.cpp reads as a space (lesson 07)."""
import ctypes
import os
import subprocess
import sys

import gguf
import llama_cpp
import pytest
import torch
from fastcore.script import CliError
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

import nanollama.export_gguf as export_gguf
from nanollama.checkpoint import save_checkpoint
from nanollama.dataset import embedded_text
from nanollama.export_gguf import main, write_gguf
from nanollama.tokenizer import LLAMA31_CHAT_TEMPLATE
from nanollama.llama import Llama, LlamaConfig

TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "Numbers: 0 1 22 333 4444 3.14159 -2e10 1,000,000 and 2024-11-24.",
    "Unicode: café, naïve, Ærø, 日本語のテキスト, 中文，标点。, 한국어, Ελληνικά, русский, emoji 😀👩‍👩‍👧‍👦🏳️‍🌈.",
    "def f(x):\n\tif x > 0:\n        return x ** 2  # square\n    return {'a': [1, 2]}\n",
    "  leading spaces, trailing spaces   ", "\n\n\nnewlines\r\nand\rreturns\n", " ", "\t", "", "a",
    "<|eot_id|> and <|begin_of_text|> typed as text", "<unk> <s> </s> <0x0A>", "x" * 300 + " y" * 100,
]
CHATS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4."}, {"role": "user", "content": "  And 3+3?  "},
     {"role": "assistant", "content": "6, I think. 🙂\nSure."}],
    [{"role": "user", "content": "Write code:\n\n    def f():\n\treturn 1\n"}, {"role": "assistant", "content": "日本語 123"}],
    [{"role": "user", "content": "Half of 48, then count the r's in strawberry."},
     {"role": "assistant", "content": "Half of 48 is", "tool_call": "48/2"}, {"role": "ipython", "content": "24"},
     {"role": "assistant", "content": "24. And", "tool_call": '"strawberry".count("r")'}, {"role": "ipython", "content": "3"},
     {"role": "assistant", "content": "3 r's."}],
]
CHAT_IDS = ["one", "multi", "code", "tool"]


def prompt_of(chat):
    "The conversation up to its last user message: what the model is asked to answer."
    last_user = max(i for i, m in enumerate(chat) if m["role"] == "user")
    return chat[:last_user + 1]


def load_gguf(path, n_ctx=256):
    "The file in llama.cpp with float32 KV cache and logits at every position."
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=2, logits_all=True, type_k=0, type_v=0, verbose=False)


def llama_cpp_logits(llm, ids):
    llm.reset(); llm.eval(ids)
    return torch.from_numpy(llm.scores[:len(ids)].copy())


def llama_cpp_greedy(llm, prompt, n):
    llm.reset()
    return [t for _, t in zip(range(n), llm.generate(prompt, temp=0.0))]


def llama_cpp_chat(llm, messages, add_assistant=False) -> str:
    "The chat formatted by llama.cpp's own C++ code, from the template stored in the file."
    tmpl = llama_cpp.llama_model_chat_template(llm.model, None)
    msgs = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages])
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(tmpl, msgs, len(messages), add_assistant, buf, len(buf))
    return buf.raw[:n].decode()


@pytest.fixture(scope="module")
def exported(export_models, export_tok, tmp_path_factory):
    "Model tag -> (our model, the f32 file loaded in llama.cpp)."
    d, out = tmp_path_factory.mktemp("gguf"), {}
    with pytest.warns(UserWarning) as caught:
        for tag, model in export_models.items(): out[tag] = model, load_gguf(write_gguf(model, export_tok, d / f"{tag}.gguf"))
    assert len(caught) == 2 and all("llama.cpp" in str(w.message) and "no cap" in str(w.message) for w in caught)
    yield out
    for _, llm in out.values(): llm.close()


def held_out_ids(tok, n=128):
    return tok.encode(embedded_text("val")[:4000], bos=True)[:n]


@pytest.mark.parametrize("tag", ["llama", "qwen3"])
def test_logits_match(exported, export_tok, tag):
    model, llm = exported[tag]
    ids = held_out_ids(export_tok)
    assert len(ids) >= 64
    with torch.no_grad(): ours = model(torch.tensor([ids]))[0]
    diff = (llama_cpp_logits(llm, ids) - ours).abs().max().item()
    print(f"{tag}: max |logit diff| over {len(ids)} tokens = {diff:.2e}")
    assert diff <= 1e-3


@pytest.mark.parametrize("tag", ["llama", "qwen3"])
def test_greedy_matches(exported, export_tok, tag):
    model, llm = exported[tag]
    for prompt in (held_out_ids(export_tok, 10), export_tok.encode("ROMEO:", bos=True)):
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=32)[0, len(prompt):].tolist()
        assert llama_cpp_greedy(llm, prompt, 32) == ref


@pytest.mark.parametrize("tag", ["llama-capped", "qwen3-capped"])
def test_softcap_is_llama_cpp_logits_through_the_cap(exported, export_tok, tag):
    model, llm = exported[tag]
    ids, cap = held_out_ids(export_tok), model.config.softcap
    with torch.no_grad(): ours = model(torch.tensor([ids]))[0]
    theirs = llama_cpp_logits(llm, ids)
    assert theirs.abs().max() > cap, "logits too small: the cap would not be exercised"
    assert (cap * torch.tanh(theirs / cap) - ours).abs().max().item() <= 1e-3
    prompt = ids[:10]
    assert llama_cpp_greedy(llm, prompt, 32) == model.generate(torch.tensor([prompt]), 32)[0, 10:].tolist()


def test_the_permutation_is_what_makes_llama_match(export_models, export_tok, tmp_path, monkeypatch):
    "The test above is sensitive: without the q/k row permutation, `llama` files compute another model."
    monkeypatch.setattr(export_gguf, "halves_to_adjacent", lambda w, n_heads: w)
    model, ids = export_models["llama"], held_out_ids(export_tok)
    llm = load_gguf(write_gguf(model, export_tok, tmp_path / "unpermuted.gguf"))
    with torch.no_grad(): ours = model(torch.tensor([ids]))[0]
    theirs = llama_cpp_logits(llm, ids)
    llm.close()
    assert (theirs - ours).abs().max() > 0.5


def test_tokenizer_matches(exported, export_tok):
    llm = exported["qwen3"][1]
    texts = TEXTS + [embedded_text("val")[:20000]]
    for s in texts:
        assert llm.tokenize(s.encode(), add_bos=False, special=False) == export_tok.encode(s), repr(s[:40])
        assert llm.tokenize(s.encode(), add_bos=True, special=False) == export_tok.encode(s, bos=True), repr(s[:40])
        assert llm.detokenize(export_tok.encode(s)).decode() == s, repr(s[:40])
    specials = [export_tok.bos_id, export_tok.start_header_id, export_tok.end_header_id, export_tok.eot_id, export_tok.eos_id,
                export_tok.python_tag_id, export_tok.eom_id]
    assert llm.tokenize("".join(map(export_tok.decode, [[i] for i in specials])).encode(), add_bos=False, special=True) == specials
    assert (llm.token_bos(), llm.token_eos()) == (export_tok.bos_id, export_tok.eot_id)


@pytest.mark.parametrize("chat", CHATS, ids=CHAT_IDS)
def test_chat_template_gives_our_ids(exported, export_tok, chat):
    llm = exported["llama"][1]
    template = llm.metadata["tokenizer.chat_template"]
    assert template == LLAMA31_CHAT_TEMPLATE
    # llama-cpp-python's Jinja path (its server and create_chat_completion) with the file's template, which renders BOS
    # itself; llama.cpp's tokenizer parses <|python_tag|> and <|eom_id|> as the control tokens
    jinja = lambda messages, prompt: Jinja2ChatFormatter(template, eos_token="<|eot_id|>", bos_token="<|begin_of_text|>",
                                                         add_generation_prompt=prompt)(messages=messages).prompt
    assert llm.tokenize(jinja(chat, False).encode(), add_bos=False, special=True) == export_tok.render_conversation(chat)[0]
    assert llm.tokenize(jinja(prompt_of(chat), True).encode(), add_bos=False, special=True) == export_tok.render_for_completion(chat)
    if any("tool_call" in m for m in chat): return  # llama.cpp's C function takes only a role and a content per message
    # llama.cpp's own C++ chat formatting (recognises the template as Llama 3's), then tokenization with specials
    assert llm.tokenize(llama_cpp_chat(llm, chat).encode(), add_bos=True, special=True) == export_tok.render_conversation(chat)[0]
    prompt = llama_cpp_chat(llm, prompt_of(chat), add_assistant=True)
    assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == export_tok.render_for_completion(chat)


@pytest.fixture(scope="module")
def trained(export_tok):
    "The default configuration (QK-norm, soft-cap) trained for a few hundred AdamW steps on a slice of Shakespeare."
    torch.manual_seed(0)
    data = torch.tensor(export_tok.encode(embedded_text("train")[:5000]))
    model = Llama(LlamaConfig(vocab_size=export_tok.vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    g, threads = torch.Generator().manual_seed(0), torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains no faster on more threads, and far slower on a busy machine
    try:
        for _ in range(300):
            x = torch.stack([data[s:s + 65] for s in torch.randint(0, len(data) - 65, (16,), generator=g)])
            loss = model(x[:, :-1], targets=x[:, 1:])
            opt.zero_grad(); loss.backward(); opt.step()
    finally: torch.set_num_threads(threads)
    assert loss.item() < 2.5
    return model.eval(), data


@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0"])
def test_quantized_files_keep_the_greedy_output(trained, export_tok, tmp_path, dtype):
    """Rounding the weights moves the logits a little (measured here: ~0.01 for f16, ~0.1 for bf16, ~0.3 for q8_0,
    where llama.cpp also rounds activations to 8 bits), so it can only flip a choice between two nearly tied tokens.
    Wherever our top-2 margin over the first 16 tokens is more than twice that error, the 16 tokens must agree."""
    model, data = trained
    cap = model.config.softcap
    with pytest.warns(UserWarning): path = write_gguf(model, export_tok, tmp_path / f"{dtype}.gguf", dtype)
    assert gguf.GGUFReader(path).fields["general.file_type"].contents() == export_gguf.GGUF_DTYPES[dtype][1]
    llm, agree, decided = load_gguf(path), [], 0
    for start in range(0, 1200, 100):  # prompts from the text the model was trained on
        prompt = [export_tok.bos_id] + data[start:start + 12].tolist()
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=32)[0].tolist()
        out = llama_cpp_greedy(llm, prompt, 32)
        agree.append(next((i for i, (a, b) in enumerate(zip(out, ref[len(prompt):])) if a != b), 32))
        with torch.no_grad(): ours = model(torch.tensor([ref]))[0]
        error = (cap * torch.tanh(llama_cpp_logits(llm, ref) / cap) - ours).abs().max().item()
        top2 = ours[len(prompt) - 1:len(prompt) + 15].topk(2).values
        if (top2[:, 0] - top2[:, 1]).min() > 2 * error:
            decided += 1
            assert agree[-1] >= 16, f"prompt at {start}: {dtype} differs after {agree[-1]} tokens with margins above 2×{error:.3f}"
    llm.close()
    print(f"{dtype}: greedy tokens agreeing (of 32) for 12 prompts: {agree}; {decided} prompts decided by a clear margin")
    assert decided >= 6


def test_errors(export_models, export_base_dir, export_tok, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(export_base_dir))
    ckpt = str(export_base_dir / "checkpoints" / "llama" / "model_000001.pt")
    def error_of(**kw):
        with pytest.raises(CliError) as e: main(**kw)
        return str(e.value)
    assert "model tag 'nope'" in error_of(model_tag="nope", output=str(tmp_path / "a.gguf"))
    assert "available: llama, llama-capped, qwen3, qwen3-capped" in error_of(model_tag="nope")
    assert "no complete step 7" in error_of(model_tag="llama", step=7)
    assert "checkpoint file not found" in error_of(checkpoint=str(tmp_path / "missing.pt"))
    assert "unknown dtype 'q4'" in error_of(checkpoint=ckpt, dtype="q4", output=str(tmp_path / "b.gguf"))
    (tmp_path / "file").write_text("not a directory")
    assert "cannot write" in error_of(checkpoint=ckpt, output=str(tmp_path / "file" / "c.gguf"))
    assert "no tokenizer at" in error_of(checkpoint=ckpt, tokenizer=str(tmp_path / "missing.model"))
    odd = Llama(LlamaConfig(vocab_size=export_tok.vocab_size, n_layer=1, n_embd=48, n_head=3, n_kv_head=1))
    d = save_checkpoint("odd", 1, odd, tokenizer_file=export_base_dir / "tokenizer" / "tokenizer.model", root=tmp_path)
    msg = error_of(checkpoint=str(d / "model_000001.pt"), dtype="q8_0", output=str(tmp_path / "odd.gguf"))
    assert "blocks of 32" in msg and "token_embd.weight (768, 48)" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "odd"]  # nothing written, no temporary files left
    with pytest.raises(ValueError, match="SentencePiece"): write_gguf(odd, object(), tmp_path / "d.gguf")  # e.g. Llama 3's tiktoken


def test_command_line(export_models, export_base_dir, tmp_path):
    env = {**os.environ, "NANOLLAMA_BASE_DIR": str(export_base_dir)}
    out = tmp_path / "model.gguf"
    r = subprocess.run([sys.executable, "-m", "nanollama.export_gguf", "--model-tag=qwen3-capped", f"--output={out}", "--dtype=q8_0"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "warning: this model soft-caps its logits at 15" in r.stdout and f"wrote {out}" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
    llm = load_gguf(out)
    assert llm.metadata["general.architecture"] == "qwen3" and llm.n_vocab() == export_models["qwen3-capped"].config.vocab_size
    llm.close()
    r = subprocess.run([sys.executable, "-m", "nanollama.export_gguf", "--model-tag=missing", f"--output={tmp_path / 'x.gguf'}"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "error: no checkpoint for model tag 'missing'" in r.stderr and "Traceback" not in r.stderr
