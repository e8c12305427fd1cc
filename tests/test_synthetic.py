"""The synthetic tasks of `nanollama.synthetic` (lesson 10c): disjoint splits, determinism, valid conversations that
render with a tokenizer, tool results, scoring, and the list of GSM8K test items the GSM-Symbolic templates came from."""
import os
from pathlib import Path

import pytest

from nanollama.synthetic import (Arithmetic, GSMSymbolic, SpellingBee, english_words, gsm8k_symbolic_mapping,
                                 gsm8k_symbolic_sources, match_gsm8k_sources, read_gsm8k_test, split_words, spelled)
from nanollama.tasks import check_conversation
from nanollama.tokenizer import Tokenizer
from nanollama.tools import calculator

REPO = Path(__file__).resolve().parents[1]
FIXTURE_TOKENIZER = REPO / "tests/fixtures/pretrain/tokenizer.model"


def tasks(size=300):
    return [SpellingBee("train", size), SpellingBee("test", size), Arithmetic("train", size), Arithmetic("test", size), GSMSymbolic(size)]


def test_spelling_bee_words_disjoint():
    train, test = set(split_words("train")), set(split_words("test"))
    assert not train & test and train | test == set(english_words())
    assert 0.05 < len(test) / len(english_words()) < 0.15
    assert {c["word"] for c in SpellingBee("test", 500)} <= test and {c["word"] for c in SpellingBee("train", 500)} <= train


def test_arithmetic_expressions_disjoint():
    exprs = {s: {c["messages"][1]["tool_call"] for c in Arithmetic(s, 2000)} for s in ("train", "test")}
    assert not exprs["train"] & exprs["test"]


@pytest.mark.parametrize("make", [lambda s: SpellingBee("train", 50, s), lambda s: Arithmetic("test", 50, s), lambda s: GSMSymbolic(50, s)])
def test_deterministic(make):
    assert list(make(0)) == list(make(0))
    assert list(make(0)) != list(make(1))


def test_conversations_valid():
    for task in tasks():
        for conv in task: check_conversation(conv)


def test_bad_split():
    with pytest.raises(ValueError, match="split"): SpellingBee("validation")
    with pytest.raises(ValueError, match="split"): Arithmetic("dev")


def test_tool_results():
    "Every tool call's ipython result is what the calculator prints, and the true answer."
    n = 0
    for task in tasks()[:4]:
        for conv in task:
            msgs = conv["messages"]
            for call, result in ((a, b) for a, b in zip(msgs, msgs[1:]) if "tool_call" in a):
                assert result["role"] == "ipython" and result["content"] == calculator(call["tool_call"])
                assert float(result["content"]) == float(conv["answer"])
                n += 1
    assert n > 600  # every arithmetic item and about half the spelling ones make a call


def test_true_answers():
    for conv in SpellingBee("test", 300):
        word = conv["word"]
        if conv["kind"] == "count":
            letter = conv["messages"][1]["tool_call"].split('"')[3]
            assert conv["answer"] == str(word.count(letter))
        else:
            assert conv["answer"] == word and spelled(word) in conv["messages"][-1]["content"]
    for conv in Arithmetic("train", 300):  # Python itself evaluates our own expressions: the reference
        assert eval(conv["messages"][1]["tool_call"], {"__builtins__": {}}) == int(conv["answer"])


def test_scoring():
    bee = SpellingBee("test", 100)
    count = next(c for c in bee if c["kind"] == "count")
    spell = next(c for c in bee if c["kind"] == "spell")
    assert bee.score(count, count["messages"][-1]["content"]) == 1.0
    assert bee.score(count, f"There are {int(count['answer']) + 1}.") == 0.0
    assert bee.score(spell, spell["messages"][-1]["content"]) == 1.0
    assert bee.score(spell, spelled(spell["word"][::-1] + "z")) == 0.0 and bee.score(spell, "I don't know") == 0.0
    arith = Arithmetic("test", 10)
    conv = arith[0]
    assert arith.score(conv, conv["messages"][-1]["content"]) == 1.0
    assert arith.score(conv, f"{int(conv['answer']) + 1}") == 0.0 and arith.score(conv, "no number") == 0.0
    gsm = GSMSymbolic(10)
    conv = gsm[0]
    assert gsm.score(conv, conv["messages"][-1]["content"]) == 1.0
    assert gsm.score(conv, f"#### {float(conv['answer']) + 1}") == 0.0 and gsm.score(conv, conv["answer"]) == 0.0


@pytest.fixture(scope="module")
def tool_tokenizer():
    "The fixture tokenizer if it has the tool-call tokens, else a small one trained on the tasks' own text (which has them)."
    tok = Tokenizer.load(FIXTURE_TOKENIZER)
    if tok.has_tools: return tok
    text = [m["content"] + " " + m.get("tool_call", "") for t in tasks(200) for c in t for m in c["messages"]]
    return Tokenizer.train(text, vocab_size=600)


def test_render():
    "Conversations without tool calls render with the test fixture tokenizer; the mask covers the assistant's words."
    tok = Tokenizer.load(FIXTURE_TOKENIZER)
    for conv in [*GSMSymbolic(20), *(c for c in SpellingBee("train", 40) if c["kind"] == "spell")]:
        ids, mask = tok.render_conversation(conv["messages"])
        assert len(ids) == len(mask) and ids[0] == tok.bos_id
        assert tok.decode([i for i, m in zip(ids, mask) if m]).startswith(conv["messages"][-1]["content"].strip())


def test_render_tool_calls(tool_tokenizer):
    "Tool-call conversations render; the tool's result is never trained on, the call and the answer are."
    tok = tool_tokenizer
    convs = [*Arithmetic("test", 20), *(c for c in SpellingBee("test", 40) if c["kind"] == "count")]
    for conv in convs:
        ids, mask = tok.render_conversation(conv["messages"])
        assert ids.count(tok.python_tag_id) == 1 and ids.count(tok.eom_id) == 1
        trained = tok.decode([i for i, m in zip(ids, mask) if m])
        assert conv["messages"][1]["tool_call"] in trained and conv["messages"][-1]["content"].strip() in trained
        assert mask[ids.index(tok.eom_id)] == 1


def test_gsm8k_sources_list():
    sources = gsm8k_symbolic_sources()
    assert len(sources) == len(set(sources)) == 100 and sources == sorted(sources)
    assert all(isinstance(i, int) and 0 <= i <= 1318 for i in sources)
    assert sorted(gsm8k_symbolic_mapping()) == list(range(100))


def gsm8k_data_dir():
    "The local data directory with GSM8K's test split: $NANOLLAMA_DATA, else the course's shared/data beside the repo."
    for d in (os.environ.get("NANOLLAMA_DATA"), REPO.parent / "shared/data"):
        if d and (Path(d) / "evals/gsm8k/test.jsonl.gz").is_file(): return Path(d)


@pytest.mark.skipif(gsm8k_data_dir() is None, reason="no local GSM8K test file")
def test_gsm8k_sources_rederived():
    rows = read_gsm8k_test(gsm8k_data_dir())
    assert len(rows) == 1319
    assert match_gsm8k_sources(rows) == gsm8k_symbolic_mapping()
