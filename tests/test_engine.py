"""The inference engine: incremental decoding equals a full forward pass, the KV cache is exactly as large as GQA says,
sampling obeys its settings and its seed, samples stop at <|eot_id|>, the context window is handled, not hit, and tool
calls are run per row, their output forced in and flagged."""
import pytest
import torch

import nanollama.engine as engine_module
from nanollama.engine import Engine, ReplyStream, TextStream, compile_step, load_engine, parse_reply, sample_next
from nanollama.llama import PRESETS, Llama, LlamaConfig
from nanollama.tools import calculator
from conftest import CALC_CHAT, CALC_QUESTION, PAYLOAD, random_model


@pytest.fixture(scope="module")
def engines(chat_base_dir):
    "The `html` and `babble` engines, loaded by model tag as the commands load them."
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOLLAMA_BASE_DIR", str(chat_base_dir))
        yield load_engine("html", device="cpu"), load_engine("babble", device="cpu")


@pytest.mark.parametrize("qk_norm,softcap", [(True, 15.0), (False, 0.0)])
def test_incremental_decoding_equals_full_forward(qk_norm, softcap):
    model = random_model(qk_norm, softcap, vocab_size=300)
    model.lm_head.weight.data.mul_(0.25)  # logits of a few units, like a trained model's, so 1e-5 is float32 rounding
    seq = torch.randint(0, 300, (3, 80), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(seq)
        cache = model.new_cache(3, 80)
        steps = [model(seq[:, :17], cache=cache)] + [model(seq[:, t:t + 1], cache=cache) for t in range(17, 80)]
    assert full.dtype == torch.float32 and full.abs().max() > 1
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-5


def test_engine_greedy_is_argmax_of_full_forward(engines):
    _, babble = engines
    prompt = babble.tokenizer.render_for_completion([{"role": "user", "content": "Speak, friend."}])
    out = babble.generate(prompt, temperature=0, max_tokens=40)[0]
    with torch.no_grad(): logits = babble.model(torch.tensor([prompt + out]))
    assert logits[0, len(prompt) - 1:-1].argmax(-1).tolist() == out
    assert babble.generate(prompt, num_samples=4, temperature=0, max_tokens=40) == [out] * 4  # one prefill, forked


def test_generation_computes_one_row_of_logits_per_sample(engines):
    "The prefill of a long prompt asks for the last position's logits only, and they equal the full pass's last row."
    _, babble = engines
    rows = []
    hook = babble.model.lm_head.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[:2]))
    try: babble.generate(list(range(1, 200)), num_samples=3, temperature=0, max_tokens=4)
    finally: hook.remove()
    assert rows == [(1, 1)] + [(3, 1)] * 3  # prefill: 1 row, not 199; then a row per sample per step
    seq = torch.tensor([list(range(1, 50))])
    with torch.no_grad(): torch.testing.assert_close(babble.model(seq, last_only=True), babble.model(seq)[:, -1:])
    with pytest.raises(ValueError, match="last_only"): babble.model(seq, targets=seq, last_only=True)


def test_compiled_decode_generates_what_eager_does_and_compiles_once(engines, chat_base_dir):
    "`compile=True` changes speed only: the same greedy tokens, one sample or several, up to the context limit, all from one compiled step."
    _, babble = engines
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOLLAMA_BASE_DIR", str(chat_base_dir))
        fast = load_engine("babble", device="cpu", compile=True)  # compiles the step while loading
    step = fast.step
    limit = fast.max_len
    for prompt_len, n in [(5, 30), (17, 9), (60, 50), (limit - 12, 40)]:  # new prompt and cache lengths; the last one runs into the context limit
        prompt = [3 + i % 300 for i in range(prompt_len)]
        out = fast.generate(prompt, temperature=0, max_tokens=n)
        assert out == babble.generate(prompt, temperature=0, max_tokens=n) and len(out[0]) <= n
    assert len(out[0]) == 12  # stopped at the last position of the context window
    for k in (3, 5):
        assert fast.generate(prompt, num_samples=k, temperature=0, max_tokens=20) == babble.generate(prompt, num_samples=k, temperature=0, max_tokens=20)
    assert fast.step is step  # compiled once: every length, position and number of rows ran the same program


def test_compiled_step_updates_the_cache_like_the_forward_pass(engines):
    "The compiled step returns the forward pass's logits and writes the same keys and values, at any position of a cache of any length."
    _, babble = engines
    model = babble.model
    step = compile_step(model)
    for rows, length, pos in [(2, 10, 3), (1, 50, 49), (3, 33, 1)]:
        compiled, eager = model.new_cache(rows, length), model.new_cache(rows, length)
        with torch.no_grad():
            for c in (compiled, eager): model(torch.randint(0, 300, (rows, pos), generator=torch.Generator().manual_seed(pos)), cache=c)
            tokens = torch.randint(0, 300, (rows, 1), generator=torch.Generator().manual_seed(rows))
            torch.testing.assert_close(step(tokens, compiled), model(tokens, cache=eager, last_only=True)[:, -1])
        assert compiled.pos == eager.pos == pos + 1
        for a, b in zip(compiled.k + compiled.v, eager.k + eager.v): torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_per_token(name, dtype):
    c = LlamaConfig.preset(name)
    with torch.device("meta"): model = Llama(c).to(dtype)
    cache = model.new_cache(batch_size=1, max_len=1000)
    per_token = 2 * c.n_layer * c.n_kv_head * c.head_dim * dtype.itemsize
    assert cache.nbytes == per_token * 1000
    assert cache.nbytes * (c.n_head // c.n_kv_head) == 2 * c.n_layer * c.n_head * c.head_dim * dtype.itemsize * 1000  # vs MHA
    assert model.new_cache(batch_size=4, max_len=1000).nbytes == 4 * cache.nbytes


def test_sampling_settings():
    z = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0]]).expand(5000, -1)
    g = lambda: torch.Generator().manual_seed(0)
    assert (sample_next(z, temperature=0) == 0).all()
    assert set(sample_next(z, top_k=2, generator=g()).tolist()) == {0, 1}
    p = z[0].softmax(-1)  # 0.63, 0.23, 0.086, ...: top_p=0.8 keeps the first two, 0.9 three
    assert set(sample_next(z, top_p=0.8, generator=g()).tolist()) == {0, 1}
    assert set(sample_next(z, top_p=0.9, generator=g()).tolist()) == {0, 1, 2}
    freq = torch.bincount(sample_next(z, generator=g()), minlength=6) / 5000
    assert (freq - p).abs().max() < 0.03
    hot = torch.bincount(sample_next(z, temperature=3.0, generator=g()), minlength=6) / 5000
    assert hot[0] < freq[0] and hot[5] > freq[5]
    assert sample_next(z, generator=g()).tolist() == sample_next(z, generator=g()).tolist()


def test_seeds_samples_and_stopping(engines):
    html, babble = engines
    prompt = html.tokenizer.render_for_completion([{"role": "user", "content": "hi"}])
    reply = html.generate(prompt, temperature=0)[0]
    assert reply[-1] == html.tokenizer.eot_id and html.tokenizer.decode(reply[:-1]) == PAYLOAD
    runs = [babble.generate(prompt, num_samples=6, temperature=1.0, max_tokens=30, seed=s) for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]
    assert len({tuple(s) for s in runs[0]}) == 6 and all(len(s) == 30 for s in runs[0])
    steps = list(html.stream(prompt, num_samples=3, temperature=0))  # all stop together, then the stream ends
    assert len(steps) == len(reply) and all(t == [reply[i]] * 3 and f == [False] * 3 for i, (t, f) in enumerate(steps))


def test_context_window_is_handled(engines):
    _, babble = engines
    n = babble.max_len
    ids = [10 + i % 400 for i in range(n)]
    assert len(babble.generate(ids[:-3], temperature=0, max_tokens=100)[0]) == 3
    with pytest.raises(ValueError, match="no room"): babble.generate(ids)
    turns = [{"role": r, "content": f"turn {i} " + "words " * 200} for i in range(30) for r in ("user", "assistant")]
    messages = [{"role": "system", "content": "Be brief."}, *turns, {"role": "user", "content": "last question"}]
    assert len(babble.tokenizer.render_for_completion(messages)) > 3 * n
    ids, room = babble.fit_prompt(messages, max_tokens=300)
    text = babble.tokenizer.decode(ids)
    assert room == 300 and len(ids) + room <= n and "Be brief." in text and "last question" in text and "turn 0 " not in text
    reply = "".join(babble.chat(messages, max_tokens=300, temperature=0))
    assert len(reply) > 0
    ids, room = babble.fit_prompt([{"role": "user", "content": "x " * 5000 + "the end"}], max_tokens=10**6)
    assert len(ids) + room == n and room == n // 2 and babble.tokenizer.decode(ids).endswith("the end<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    with pytest.raises(ValueError, match="end with a user message"): babble.fit_prompt([{"role": "assistant", "content": "hi"}])


def test_text_stream_holds_back_partial_characters(engines):
    tok = engines[0].tokenizer
    text = "naïve 東京 🙂 done"
    s = TextStream(tok)
    pieces = [s.push(i) for i in tok.encode(text) + [tok.eot_id]]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


def scripted_sampler(scripts, logits_seen):
    "A stand-in for `sample_next` that returns, at step k, token k of each row's script, and records the logits it was given."
    step = iter(range(10**6))
    def sample(logits, *args, **kw):
        k = next(step)
        logits_seen.append(logits.clone())
        return torch.tensor([s[min(k, len(s) - 1)] for s in scripts])
    return sample


def test_tool_call_in_one_row_only(engines, monkeypatch):
    """Two rows decode together; row 0 calls the calculator, row 1 just talks. Row 0 gets the tool's output forced in
    (flagged), row 1 is untouched, and the model really read the forced tokens: the logits at every step equal a full
    forward pass over each row's tokens so far."""
    _, babble = engines
    tok = babble.tokenizer
    call, output = [tok.python_tag_id, *tok.encode("6*7"), tok.eom_id], tok.render_tool_output("42")
    answer = tok.encode(" so 42.") + [tok.eot_id]
    scripts = [call + [0] * len(output) + answer,  # the sampled values while the output is forced are ignored
               tok.encode("No tools for me, just words.") + [tok.eot_id]]
    seen = []
    monkeypatch.setattr(engine_module, "sample_next", scripted_sampler(scripts, seen))
    prompt = tok.render_for_completion([{"role": "user", "content": "What is 6*7?"}])
    rows = [[], []]
    for tokens, forced in babble.stream(prompt, num_samples=2, max_tokens=100):
        for row, t, f in zip(rows, tokens, forced):
            if t is not None: row.append((t, f))
    assert rows[0] == [(t, False) for t in call] + [(t, True) for t in output] + [(t, False) for t in answer]
    assert rows[1] == [(t, False) for t in scripts[1]]
    with torch.no_grad():
        for i, row in enumerate(rows):
            ids = prompt + [t for t, _ in row]
            full = babble.model(torch.tensor([ids]))[0, len(prompt) - 1:-1]
            torch.testing.assert_close(torch.stack([seen[k][i] for k in range(len(row))]), full, rtol=0, atol=1e-4)


def test_no_tool_without_tool_tokens_or_when_disabled(engines, monkeypatch):
    "An engine with `tool=None` never forces anything: the call's tokens are just tokens."
    _, babble = engines
    tok = babble.tokenizer
    script = [tok.python_tag_id, *tok.encode("6*7"), tok.eom_id, *tok.encode("ok"), tok.eot_id]
    monkeypatch.setattr(engine_module, "sample_next", scripted_sampler([script], []))
    plain = Engine(babble.model, tok, tool=None)
    steps = list(plain.stream(tok.render_for_completion([{"role": "user", "content": "hi"}]), max_tokens=50))
    assert [t for (t,), _ in steps] == script and not any(f for _, (f,) in steps)


def test_calc_model_calls_the_tool_and_reply_keeps_the_turns(chat_base_dir, monkeypatch):
    "The model that memorised a tool call makes it; the reply shows it inline and rebuilds the messages it was trained on."
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(chat_base_dir))
    calc = load_engine("calc", device="cpu")
    reply = ReplyStream(calc.tokenizer)
    shown = "".join(calc.chat([{"role": "user", "content": CALC_QUESTION}], temperature=0, reply=reply))
    assert shown == 'Counting: [python: "strawberry".count("r") → 3] There are 3.'
    assert reply.messages == CALC_CHAT[1:] and parse_reply(shown) == CALC_CHAT[1:]
    follow_up = [CALC_CHAT[0], *parse_reply(shown), {"role": "user", "content": "Thanks"}]
    assert calc.fit_prompt(follow_up)[0][:len(calc.tokenizer.render_conversation(CALC_CHAT)[0])] == calc.tokenizer.render_conversation(CALC_CHAT)[0]


def test_calc_model_uses_the_real_result(chat_base_dir, monkeypatch):
    "Whatever the tool answers is what the model reads next: a different tool gives a different forced output."
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(chat_base_dir))
    calc = load_engine("calc", device="cpu")
    seen = []
    liar = Engine(calc.model, calc.tokenizer, tool=lambda code: (seen.append(code), "7")[1])
    shown = "".join(liar.chat([{"role": "user", "content": CALC_QUESTION}], temperature=0))
    assert seen == ['"strawberry".count("r")'] and '→ 7]' in shown
    assert calculator(seen[0]) == "3"
