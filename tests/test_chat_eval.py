"""chat_eval: categorical scoring by the letters' logits (with controlled models), generative scoring of hand-made
and real replies (tool calls included), pass@k and the probes, the table and ChatCORE, clear errors, results written
next to the checkpoint, and two CPU processes under torchrun giving one process's results."""
import json, os, shutil, subprocess, sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanollama.benchmarks import ARC, GSM8K, HumanEval, MMLU
from nanollama.chat_eval import (COUNTS, TASKS, ChatEvalConfig, add_verdicts, answer_text, evaluate, judge_letters, judge_reply,
                                 letter_ids, logits_at, problem_indices, prompt_messages, sample_replies, score_categorical,
                                 summarize, task_row, tool_calls)
from nanollama.engine import load_engine
from nanollama.llama import Llama, LlamaConfig
from nanollama.synthetic import Arithmetic, SpellingBee
from nanollama.train import parse_config

from conftest import CALC_CHAT, CALC_QUESTION

DATA = Path(__file__).parent / "fixtures" / "data"


class LetterModel(nn.Module):
    "A controlled model: the next token's logits depend only on the current token, through `lm_head` (a V×V table)."
    def __init__(self, vocab_size: int, after_letter: int, favourite: int, scores: dict):
        super().__init__()
        self.config = SimpleNamespace(max_seq_len=4096)
        self.lm_head = nn.Linear(vocab_size, vocab_size, bias=False)
        with torch.no_grad():
            w = torch.zeros(vocab_size, vocab_size)  # w[next, current]
            for token, score in scores.items(): w[token, :] = score  # after any token...
            w[favourite, :] = 10.0
            w[:, list(scores)] = 0; w[after_letter, list(scores)] = 10.0  # ...except after a letter: then `after_letter`
            self.lm_head.weight.copy_(w)

    def forward(self, idx): return self.lm_head(F.one_hot(idx, self.lm_head.in_features).float())


@pytest.fixture(scope="module")
def tok(chat_base_dir):
    from nanollama.tokenizer import get_tokenizer
    return get_tokenizer(chat_base_dir / "tok.model")


def test_judge_letters_picks_the_highest_letter_logit():
    logits = torch.zeros(20); logits[[3, 4, 5, 6]] = torch.tensor([1.0, 3.0, 2.0, -1.0]); logits[10] = 9.0  # token 10 (not a letter) is the top
    after = torch.zeros(20); after[7] = 1.0
    conv = {"letters": list("ABCD"), "answer": "B"}
    assert judge_letters(logits, after, conv, [3, 4, 5, 6], eot_id=7) == {"choice": "B", "correct": True, "well_formed": False, "stopped": True}
    logits[10] = 0
    assert judge_letters(logits, after, conv | {"answer": "C"}, [3, 4, 5, 6], eot_id=8) == {"choice": "B", "correct": False, "well_formed": True, "stopped": False}


@pytest.mark.parametrize("favourite_is_letter", [True, False])
def test_score_categorical_with_a_controlled_model(tok, favourite_is_letter):
    "A model that always prefers one letter scores exactly the share of questions whose answer is that letter."
    convs = [c for c in ARC("ARC-Easy", "test", DATA) if c["letters"] == list("ABCD")]
    best = convs[0]["answer"]
    ids = dict(zip("ABCD", letter_ids(tok, "ABCD")))
    scores = {ids[l]: 5.0 if l == best else float(i) for i, l in enumerate("ABCD")}
    favourite = ids[best] if favourite_is_letter else tok.encode("the")[0]
    verdicts = score_categorical(LetterModel(tok.vocab_size, tok.eot_id, favourite, scores), tok, convs, batch_size=3)
    assert [v["choice"] for v in verdicts] == [best] * len(convs)
    assert 0 < sum(v["correct"] for v in verdicts) == sum(c["answer"] == best for c in convs) < len(convs)
    assert all(v["stopped"] for v in verdicts) and all(v["well_formed"] == favourite_is_letter for v in verdicts)


def test_batching_changes_nothing(tok):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=256)).eval()
    with torch.no_grad():
        for p in model.parameters(): p.normal_(0, 0.1)
    convs = [c for task in (ARC("ARC-Challenge", "test", DATA), MMLU("test", DATA)) for c in task]  # MMLU's are longer than 256: cut
    assert score_categorical(model, tok, convs, batch_size=7) == [score_categorical(model, tok, [c], 1)[0] for c in convs]
    idx, pos = torch.randint(0, tok.vocab_size, (2, 9)), torch.tensor([[8, 0], [3, 4]])
    with torch.no_grad(): torch.testing.assert_close(logits_at(model, idx, pos), model(idx)[torch.arange(2)[:, None], pos])


def test_letters_must_be_single_tokens(tok):
    with pytest.raises(ValueError, match="'Zebra' is"): letter_ids(tok, ["A", "Zebra"])


def reply(*messages, stopped=True): return {"messages": list(messages), "stopped": stopped}
def say(text): return {"role": "assistant", "content": text}
def call(text, code): return {"role": "assistant", "content": text, "tool_call": code}
def out(text): return {"role": "ipython", "content": text}


def test_generative_scoring_on_hand_made_replies():
    gsm = GSM8K("test", DATA)
    c = gsm[0]
    n = int(c["answer"])
    assert judge_reply("GSM8K", gsm, c, reply(call("She sells", f"{n} * 1"), out(str(n)), say(f"{n} eggs.\n#### {n}"))) == \
        {"correct": True, "well_formed": True, "stopped": True, "calls": 1, "good_calls": 1}
    assert judge_reply("GSM8K", gsm, c, reply(say(f"#### {n + 1}")))["correct"] is False
    v = judge_reply("GSM8K", gsm, c, reply(say(f"It is {n}."), stopped=False))  # right number, wrong format
    assert v["correct"] is False and v["well_formed"] is False and v["stopped"] is False

    bee = SpellingBee("test", 50)
    count = next(x for x in bee if x["kind"] == "count")
    spell = next(x for x in bee if x["kind"] == "spell")
    only_the_tool = reply(call("Counting.", f'"{count["word"]}".count("x")'), out(count["answer"]))  # the answer is the tool's, not the model's
    assert judge_reply("SpellingBee", bee, count, only_the_tool) == {"correct": False, "well_formed": False, "stopped": True, "calls": 1, "good_calls": 1}
    assert judge_reply("SpellingBee", bee, count, reply(*only_the_tool["messages"], say(f"It appears {count['answer']} times.")))["correct"]
    assert judge_reply("SpellingBee", bee, spell, reply(say(f"{spell['word']} is spelled {'-'.join(spell['word'])}.")))["correct"]

    ar = Arithmetic("test", 5)
    x = ar[0]
    assert judge_reply("Arithmetic", ar, x, reply(call("", "1 +"), out("Error: not a valid expression"), say("I don't know"))) == \
        {"correct": False, "well_formed": False, "stopped": True, "calls": 1, "good_calls": 0}

    he = HumanEval(DATA, timeout=3)
    h = he[0]
    assert judge_reply("HumanEval", he, h, reply(say(f"```python\n{h['messages'][-1]['content']}\n```")))["correct"]
    v = judge_reply("HumanEval", he, h, reply(say("def has_close_elements(:\n")))
    assert v == {"correct": False, "well_formed": False, "stopped": True, "calls": 0, "good_calls": 0}


def test_answer_text_and_tool_calls():
    msgs = [call("Let me count:", "'aa'.count('a')"), out("2"), say(" It is 2. "), call("", "(1"), ]
    assert answer_text(msgs) == "Let me count: It is 2."
    assert tool_calls(msgs) == (2, 1)  # the second call was never closed
    assert prompt_messages(CALC_CHAT_CONV) == CALC_CHAT[:1]


CALC_CHAT_CONV = {"messages": CALC_CHAT}


def test_real_replies_with_a_tool_call(chat_base_dir, monkeypatch):
    "The model that memorised a tool call: its reply runs the calculator, and the verdict scores the text it wrote."
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(chat_base_dir))
    engine = load_engine("calc", device="cpu")
    r, = sample_replies(engine, [{"role": "user", "content": CALC_QUESTION}], temperature=0)
    assert r["messages"] == CALC_CHAT[1:] and r["stopped"] and r["text"] == 'Counting: [python: "strawberry".count("r") → 3] There are 3.'
    tok = engine.tokenizer  # the tokens, as training on them needs them: the whole conversation, the tool's turn flagged as forced
    assert r["prompt"] + r["tokens"] == tok.render_conversation(CALC_CHAT)[0]
    assert [t for t, f in zip(r["tokens"], r["forced"]) if f] == tok.render_tool_output("3")
    bee = SpellingBee("test", 1)
    conv = {"messages": CALC_CHAT, "kind": "count", "word": "strawberry", "answer": "3"}
    assert judge_reply("SpellingBee", bee, conv, r) == {"correct": True, "well_formed": True, "stopped": True, "calls": 1, "good_calls": 1}
    replies = sample_replies(engine, [{"role": "user", "content": CALC_QUESTION}], num_samples=4, max_tokens=5, temperature=1.0, seed=0)
    assert len(replies) == 4 and not any(x["stopped"] for x in replies)  # cut at 5 tokens: none ended its turn


def test_pass_at_k_and_the_row():
    counts = dict.fromkeys(COUNTS, 0)
    yes, no = {"correct": True, "well_formed": True, "stopped": True, "calls": 1, "good_calls": 1}, {"correct": False, "well_formed": False, "stopped": False}
    add_verdicts(counts, [yes, no, no, no])  # problem 1: 1 of 4 right
    add_verdicts(counts, [no, no, no, no])   # problem 2: none
    add_verdicts(counts, [yes, yes, yes, yes])  # problem 3: all
    assert counts == {"problems": 3, "samples": 12, "correct": 5, "pass_k": 2.0, "well_formed": 5, "stopped": 5, "with_calls": 5, "calls": 5, "good_calls": 5}
    row = task_row("HumanEval", counts, num_samples=4)
    assert row["accuracy"] == 5 / 12 and row["pass@4"] == 2 / 3 and row["centered"] == 5 / 12 and row["calls"] == 5 / 12
    assert "pass@1" not in task_row("HumanEval", counts) and task_row("ARC-Easy", counts)["calls"] is None


def test_chatcore_over_all_tasks_or_partial():
    rows = [{"task": name, "accuracy": 0.5, "centered": 0.1 * i} for i, name in enumerate(TASKS)]
    s = summarize(rows)
    core = [t for t in TASKS if TASKS[t].in_chatcore]
    assert len(core) == 6 and "Arithmetic" not in core and s["chatcore_tasks"] == 6
    assert abs(s["chatcore"] - sum(0.1 * i for i, t in enumerate(TASKS) if t in core) / 6) < 1e-12
    assert set(summarize(rows[:2])) == {"chatcore_partial", "chatcore_tasks", "chat_eval"}
    assert {TASKS[t].baseline for t in ("ARC-Easy", "ARC-Challenge", "MMLU")} == {0.25}
    assert {TASKS[t].baseline for t in ("GSM8K", "HumanEval", "SpellingBee")} == {0.0}


def test_max_per_task_is_a_fixed_spread_subset():
    task = SpellingBee("test", 100)
    assert problem_indices(task) == list(range(100)) == problem_indices(task, 10**6)
    some = problem_indices(task, 5)
    assert len(set(some)) == 5 and some == problem_indices(task, 5) and some != list(range(5))


@pytest.fixture()
def calc_dir(chat_base_dir, tmp_path, monkeypatch):
    "A base dir holding a copy of the calc model (results get written next to it)."
    shutil.copytree(chat_base_dir / "checkpoints" / "calc", tmp_path / "checkpoints" / "calc")
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(tmp_path))
    return tmp_path


def test_errors_are_clear(calc_dir):
    for argv, message in ((["--tasks=ARC-Easy,Nope"], "unknown task 'Nope'; known tasks: ARC-Easy, ARC-Challenge, MMLU"),
                          (["--num-samples=3"], "--temperature 0 would draw 3 identical replies"), (["--batch-size=0"], "--batch-size must be > 0"),
                          (["--model-tag=nothere"], "no checkpoint for model tag 'nothere'")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            evaluate(parse_config(ChatEvalConfig, ["--model-tag=calc", f"--data-dir={DATA}", *argv]))
    r = subprocess.run([sys.executable, "-m", "nanollama.chat_eval", "--model-tag=calc", "--tasks=Nope"], capture_output=True, text=True,
                       env={**os.environ, "NANOLLAMA_BASE_DIR": str(calc_dir)}, timeout=120)
    assert r.returncode == 1 and "error: unknown task 'Nope'; known tasks:" in r.stderr


ARGS = ["--model-tag=calc", f"--data-dir={DATA}", "--tasks=ARC-Easy,MMLU,GSM8K,HumanEval,SpellingBee,Arithmetic", "--max-per-task=5",
        "--max-tokens=24", "--timeout=3", "--batch-size=2"]


def test_results_written_next_to_the_checkpoint(calc_dir, capsys):
    rows, summary = evaluate(parse_config(ChatEvalConfig, ARGS))
    d = calc_dir / "checkpoints" / "calc"
    saved = json.loads((d / "chat_eval_000001.json").read_text())
    assert saved["rows"] == rows and saved["summary"] == summary and saved["config"]["max_per_task"] == 5
    assert (d / "chat_eval_000001.csv").read_text().splitlines()[0].startswith("task,kind,problems,accuracy,baseline,centered")
    assert json.loads((d / "meta_000001.json").read_text())["metrics"]["chatcore_partial"] == summary["chatcore_partial"]
    cfg = parse_config(ChatEvalConfig, ARGS)
    assert [r["task"] for r in rows] == ["ARC-Easy", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "Arithmetic"]
    assert [r["problems"] for r in rows] == [min(5, len(TASKS[r["task"]].load(cfg))) for r in rows]
    printed = capsys.readouterr().out
    assert "partial ChatCORE over 5 of 6 tasks (not ChatCORE)" in printed and "≈ chance on CPU" in printed


def test_torchrun_two_ranks_match_one_process(calc_dir):
    def run(*launcher):
        env = {**os.environ, "NANOLLAMA_BASE_DIR": str(calc_dir), "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, *launcher, "-m", "nanollama.chat_eval", *ARGS], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout, json.loads((calc_dir / "checkpoints" / "calc" / "chat_eval_000001.json").read_text())
    one_out, one = run()
    two_out, two = run("-m", "torch.distributed.run", "--nproc_per_node=2")
    assert "2 processes" in two_out and two_out.count("ChatCORE") == one_out.count("ChatCORE")  # printed once, by rank 0
    assert two["rows"] == one["rows"] and two["summary"] == one["summary"]
