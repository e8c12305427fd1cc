"""`nanollama.tasks` and `nanollama.benchmarks`: indexing, slicing and shuffling tasks, mixtures, conversation checks and
files, and every benchmark loader on small fixtures in the hub schemas (plus the full sets in ../shared/data when they
are there): conversations are valid and render, scoring tells right from wrong, GSM8K becomes calculator calls and
leaves out GSM-Symbolic's sources, HumanEval runs code in a separate process with a timeout."""
import gzip
import json
import os
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
from nanollama import benchmarks
from nanollama.benchmarks import (ARC, GSM8K, MMLU, PIQA, CommonsenseQA, HellaSwag, HumanEval, SmolTalk, gsm8k_messages,
                                  hellaswag_text, load_rows, run_python)
from nanollama.dataset import embedded_text
from nanollama.synthetic import gsm8k_answer, gsm8k_symbolic_sources
from nanollama.tasks import (PERSONALITY_DIR, Conversations, ListTask, Mixture, TaskView, check_conversation, data_file, data_root,
                             load_conversations, read_conversations, read_jsonl)
from nanollama.tokenizer import Tokenizer
from nanollama.tools import calculator

FIXTURES = Path(__file__).parent / "fixtures"
DATA = FIXTURES / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # the course's full data, next to the repository
needs_shared = pytest.mark.skipif(not (SHARED / "evals").is_dir(), reason=f"no full data at {SHARED}")


def chat(*pairs): return [{"role": r, "content": c} for r, c in pairs]
def numbered(n): return ListTask([{"messages": chat(("user", f"{i}?"), ("assistant", str(i))), "i": i} for i in range(n)])
def ids(task): return [c["i"] for c in task]


@pytest.fixture(scope="module")
def tok():
    "The fixture tokenizer, or a small new one if the fixture predates the tool-call tokens."
    tok = Tokenizer.load(FIXTURES / "pretrain" / "tokenizer.model")
    return tok if tok.has_tools else Tokenizer.train([embedded_text("val")], vocab_size=600)


def test_indexing_and_slicing():
    t = numbered(10)
    assert len(t) == 10 and t[0]["i"] == 0 and t[-1]["i"] == 9 and t[-10]["i"] == 0
    for i in (10, -11, 100):
        with pytest.raises(IndexError, match="out of range"): t[i]
    assert ids(t[2:5]) == [2, 3, 4] and ids(t[::-3]) == [9, 6, 3, 0] and ids(t[-2:]) == [8, 9] and len(t[5:2]) == 0
    view = t[1:9][::2]
    assert isinstance(view, TaskView) and view.task is t and ids(view) == [1, 3, 5, 7]
    with pytest.raises(IndexError): view[4]
    assert list(t) == [t[i] for i in range(10)]


def test_shuffle_is_deterministic():
    t = numbered(50)
    a, b, c = ids(t.shuffle(0)), ids(t.shuffle(0)), ids(t.shuffle(1))
    assert a == b != c and sorted(a) == sorted(c) == list(range(50))
    assert ids(t.shuffle(0)[:5]) == a[:5] and ids(t[10:20].shuffle(3)) == [10 + j for j in ids(numbered(10).shuffle(3))]


def test_mixture():
    a, b = numbered(10), ListTask([{"messages": chat(("user", "b?"), ("assistant", "b")), "i": 100 + i} for i in range(20)])
    m = Mixture([a, b], weights=[2, 0.25], seed=0)
    got = ids(m)
    assert len(m) == 2 * 10 + 5 and all(got.count(i) == 2 for i in range(10))
    part = [i for i in got if i >= 100]
    assert len(part) == len(set(part)) == 5, "a fractional weight takes distinct rows"
    assert ids(Mixture([a, b], [2, 0.25], seed=0)) == got != ids(Mixture([a, b], [2, 0.25], seed=1))
    assert sorted(ids(Mixture([a, b]))) == list(range(10)) + list(range(100, 120))
    assert got[:10] != sorted(got[:10]), "sources are interleaved, not concatenated"
    for bad in ([1], [1, -1]):
        with pytest.raises(ValueError, match="weights"): Mixture([a, b], bad)


def test_check_conversation_tool_calls():
    call = [{"role": "assistant", "content": "2+2 is", "tool_call": "2+2"}, {"role": "ipython", "content": "4"}]
    q, a = {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."}
    assert check_conversation({"messages": [q, *call, *call, a], "answer": "4"})[-1] == a
    for bad, why in [([q, *call], "ends with an assistant"), ([q, call[0], a], "followed by ipython"),
                     ([q, a, call[1], a], "followed by user"), ([a, q, a], "starts with"), ([q, q, a], "followed by assistant"),
                     ([q, a, q], "ends with an assistant"), ([], "non-empty"), ({"messages": "hi"}, "non-empty")]:
        with pytest.raises(ValueError, match=why): check_conversation(bad)


# conversation files (moved here from the dataloader tests)
@pytest.mark.parametrize("name, content, line", [
    ("a.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]}\n[oops\n', 2),
    ("b.jsonl", '\n\n[{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]\n', 3),
    ("c.jsonl", '[{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]\n', 1),
    ("d.json", '[\n  [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}],\n\n  {"messages": "no"}\n]', 4),
    ("e.json", '[\n  [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]\n]', 2),
    ("f.json", '[\n  [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]\n  []\n]', 3),
])
def test_malformed_conversation_file_names_file_and_line(tmp_path, name, content, line):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError) as e: read_conversations(tmp_path / name)
    assert str(e.value).startswith(f"{tmp_path / name}:{line}: "), str(e.value)
    with pytest.raises(ValueError, match=name): load_conversations(tmp_path)
    with pytest.raises(ValueError, match=name): Conversations(tmp_path)


def test_conversation_file_formats(tmp_path):
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]
    (tmp_path / "a.json").write_text(json.dumps([conv, {"messages": conv}]))
    (tmp_path / "b.jsonl").write_text(json.dumps({"messages": conv}) + "\n\n" + json.dumps(conv) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert load_conversations(tmp_path) == [conv] * 4
    assert list(Conversations(tmp_path)) == [{"messages": conv}] * 4 and list(Conversations(tmp_path / "a.json")) == [{"messages": conv}] * 2
    with pytest.raises(FileNotFoundError): load_conversations(tmp_path / "missing")


def test_shipped_personality_task(tok):
    task = Conversations()
    assert len(task) == len(load_conversations(PERSONALITY_DIR)) >= 40 and task.eval_type is None
    assert all(tok.render_conversation(c["messages"])[0][0] == tok.bos_id for c in task)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOLLAMA_DATA", raising=False)
    assert data_root() is None
    with pytest.raises(FileNotFoundError, match="nowhere"): data_root(tmp_path / "nowhere")
    monkeypatch.setenv("NANOLLAMA_DATA", str(tmp_path))
    assert data_root() == tmp_path
    with pytest.raises(FileNotFoundError, match=r"evals/gsm8k/test\.jsonl\.gz"): GSM8K()  # from $NANOLLAMA_DATA, never the hub
    monkeypatch.setenv("NANOLLAMA_DATA", str(DATA))
    assert len(ARC("ARC-Easy", "test")) == len(read_jsonl(data_file(DATA, "evals/arc_easy/test.jsonl.gz")))


def test_hub_names(monkeypatch):
    "Without a data directory every task asks `datasets` for the hub dataset, config and split."
    monkeypatch.delenv("NANOLLAMA_DATA", raising=False)
    calls = []
    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return read_jsonl(DATA / {"allenai/ai2_arc": "evals/arc_easy/test.jsonl.gz", "cais/mmlu": "evals/mmlu/test.jsonl.gz",
                                  "openai/gsm8k": "evals/gsm8k/test.jsonl.gz", "openai/openai_humaneval": "evals/humaneval/test.jsonl.gz",
                                  "HuggingFaceTB/smol-smoltalk": "sft/chitchat.jsonl.gz", "Rowan/hellaswag": "evals/hellaswag/validation.jsonl.gz",
                                  "ybisk/piqa": "evals/piqa/validation.jsonl.gz", "tau/commonsense_qa": "evals/commonsense_qa/validation.jsonl.gz"}[name])
    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    ARC("ARC-Challenge", "validation"); MMLU("dev"); GSM8K("train"); HumanEval(); SmolTalk("test")
    HellaSwag(); PIQA("train"); CommonsenseQA()
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "validation"), ("cais/mmlu", "all", "dev"), ("openai/gsm8k", "main", "train"),
                     ("openai/openai_humaneval", None, "test"), ("HuggingFaceTB/smol-smoltalk", None, "test"),
                     ("Rowan/hellaswag", None, "validation"), ("ybisk/piqa", None, "train"), ("tau/commonsense_qa", None, "validation")]


ALL_FIXTURE_TASKS = [lambda: ARC("ARC-Easy", "validation", DATA), lambda: ARC("ARC-Easy", "test", DATA),
                     lambda: ARC("ARC-Challenge", "validation", DATA), lambda: ARC("ARC-Challenge", "test", DATA),
                     lambda: MMLU("dev", DATA), lambda: MMLU("validation", DATA), lambda: MMLU("test", DATA),
                     lambda: GSM8K("test", DATA), lambda: HumanEval(DATA), lambda: SmolTalk(data_dir=DATA),
                     lambda: HellaSwag(data_dir=DATA), lambda: PIQA(data_dir=DATA), lambda: CommonsenseQA(data_dir=DATA)]


@pytest.mark.parametrize("make", ALL_FIXTURE_TASKS)
def test_loaders_on_fixtures(make, tok):
    task = make()
    assert len(task) > 0
    for conv in task:
        check_conversation(conv)
        ids, mask = tok.render_conversation(conv["messages"])
        assert ids[0] == tok.bos_id and sum(mask) > 0
        if task.eval_type is not None: assert task.score(conv, conv["messages"][-1]["content"]) == 1.0, "the reference answer scores 1"


def test_multiple_choice_scoring():
    arc = ARC("ARC-Easy", "validation", DATA)
    c = next(c for c in arc if c["answer"] == "A")
    assert c["letters"] == ["A", "B", "C", "D"] and c["messages"][1]["content"] == "A" and arc.eval_type == "categorical"
    assert [arc.score(c, r) for r in ("A", "A.", "The answer is A", "B", "B, not A", "", "a")] == [1, 1, 1, 0, 0, 0, 0]
    numeric = next(r for r in arc.rows if r["choices"]["label"][0] == "1")  # hub items labelled 1-4 are shown as letters
    assert arc.conversation(numeric)["answer"] == "ABCD"[numeric["choices"]["label"].index(numeric["answerKey"])]
    five = ARC("ARC-Easy", "validation", DATA).conversation(next(r for r in arc.rows if len(r["choices"]["label"]) == 5))
    assert five["letters"] == list("ABCDE") and "E. " in five["messages"][0]["content"]
    mmlu = MMLU("test", DATA)
    c = mmlu[0]
    assert c["answer"] == "ABCD"[mmlu.rows[0]["answer"]] and c["subject"] == mmlu.rows[0]["subject"]
    wrong = next(l for l in "ABCD" if l != c["answer"])
    assert mmlu.score(c, c["answer"]) == 1.0 and mmlu.score(c, wrong) == 0.0


# the multiple-choice practice sets (validation splits): fixture rows, the answer's index and the choices as shown
PRACTICE = [(HellaSwag, 6, lambda r: int(r["label"]), lambda r: [hellaswag_text(e) for e in r["endings"]]),
            (PIQA, 5, lambda r: r["label"], lambda r: [r["sol1"].strip(), r["sol2"].strip()]),
            (CommonsenseQA, 5, lambda r: r["choices"]["label"].index(r["answerKey"]), lambda r: r["choices"]["text"])]


@pytest.mark.parametrize("cls, n, answer_index, choices", PRACTICE)
def test_practice_sets_on_fixtures(cls, n, answer_index, choices):
    task = cls(data_dir=DATA)
    assert len(task) == n == len(read_jsonl(DATA / f"evals/{cls.folder}/validation.jsonl.gz")) and task.split == "validation"
    assert repr(task) == f"{cls.__name__}(validation: {n} questions)" and task.eval_type == "categorical"
    for row, c in zip(task.rows, task):
        user, letters = c["messages"][0]["content"], "ABCDE"[:len(choices(row))]
        assert c["letters"] == list(letters) and c["answer"] == c["messages"][1]["content"] == letters[answer_index(row)]
        for letter, choice in zip(letters, choices(row)): assert f"\n{letter}. {choice}\n" in user
        wrong = next(l for l in letters if l != c["answer"])
        assert [task.score(c, r) for r in (c["answer"], f"The answer is {c['answer']}.", wrong, "")] == [1, 1, 0, 0]


def test_practice_sets_questions_and_errors():
    hs, piqa, csqa = HellaSwag(data_dir=DATA), PIQA(data_dir=DATA), CommonsenseQA(data_dir=DATA)
    assert hs[0]["messages"][0]["content"].startswith(f"Which ending continues this best?\n\n{hs.rows[0]['activity_label']}: {hs.rows[0]['ctx']} ...")
    assert f"Goal: {piqa.rows[0]['goal']}" in piqa[0]["messages"][0]["content"] and csqa[0]["id"] == csqa.rows[0]["id"]
    wikihow = next(hs.conversation(r) for r in hs.rows if r["source_id"].startswith("wikihow"))
    assert "[" not in wikihow["messages"][0]["content"] and ".. " not in wikihow["messages"][0]["content"]
    assert hellaswag_text("[header] How to X [title] Do Y. [step] Then z.") == "How to X. Do Y. Then z."
    assert hellaswag_text("[substeps] Rinse. [title] Dry it.") == "Rinse. Dry it." and hellaswag_text("the [portrait] key") == "the [portrait] key"
    with pytest.raises(ValueError, match=r"HellaSwag item 24: label '' "): hs.conversation(hs.rows[0] | {"label": ""})
    with pytest.raises(ValueError, match=r"PIQA item 'open a jar': label -1 "): piqa.conversation(piqa.rows[0] | {"goal": "open a jar", "label": -1})
    with pytest.raises(ValueError, match=rf"CommonsenseQA item {csqa.rows[0]['id']}: answer 'F' "): csqa.conversation(csqa.rows[0] | {"answerKey": "F"})
    with pytest.raises(FileNotFoundError, match=r"evals/piqa/test\.jsonl\.gz"): PIQA("test", DATA)


def test_gsm8k_tool_calls():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
    assert gsm8k_messages(solution) == [
        {"role": "assistant", "content": "Natalia sold 48/2 = ", "tool_call": "48/2"}, {"role": "ipython", "content": "24"},
        {"role": "assistant", "content": "24 clips in May.\nNatalia sold 48+24 = ", "tool_call": "48+24"}, {"role": "ipython", "content": "72"},
        {"role": "assistant", "content": "72 clips altogether in April and May.\n#### 72"}]
    assert gsm8k_messages("no calls\n#### 5") == [{"role": "assistant", "content": "no calls\n#### 5"}]
    assert gsm8k_messages("x <<1/0=7>>7\n#### 7")[1]["content"] == "7", "a calculator error keeps the annotated result"


def test_gsm8k_scoring():
    gsm = GSM8K("test", DATA)
    c = next(c for c in gsm if int(c["answer"]) >= 10)
    right, wrong = c["answer"], str(int(c["answer"]) + 1)
    assert gsm.eval_type == "generative"
    assert [gsm.score(c, r) for r in (f"#### {right}", f"so\n#### {int(right):,}", f"#### ${right}.00", f"#### {wrong}", right, "")] == [1, 1, 1, 0, 0, 0]
    assert gsm8k_answer("#### 1,234,567") == "1234567" and gsm8k_answer("#### -2.5 kg") == "-2.5"


def test_gsm8k_leaves_out_symbolic_sources_on_fixture():
    rows = read_jsonl(DATA / "evals/gsm8k/test.jsonl.gz")
    kept = [c["index"] for c in GSM8K("test", DATA)]
    assert kept == [i for i in range(len(rows)) if i not in set(gsm8k_symbolic_sources())]


@needs_shared
def test_gsm8k_exclusion_on_full_data():
    rows, gsm = read_jsonl(SHARED / "evals/gsm8k/test.jsonl.gz"), GSM8K("test", SHARED)
    sources = gsm8k_symbolic_sources()
    assert len(rows) == 1319 and len(sources) == len(set(sources)) == 100 and len(gsm) == 1319 - 100
    left_out = {rows[i]["question"] for i in sources}
    assert not any(c["messages"][0]["content"] in left_out for c in gsm)


@needs_shared
def test_gsm8k_full_data_converts_and_calculator_agrees(tok):
    gsm = GSM8K("test", SHARED)
    for c in gsm: check_conversation(c)
    tok.render_conversation(gsm[0]["messages"])
    rows = read_jsonl(SHARED / "evals/gsm8k/test.jsonl.gz")
    pairs = [(m[2], calculator(m[1])) for r in rows for m in benchmarks.ANNOTATION.finditer(r["answer"])]
    def same(a, b):
        try: return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
        except ValueError: return False
    agree = sum(same(a, b) for a, b in pairs)
    assert len(pairs) > 4000 and agree >= 0.99 * len(pairs), (agree, len(pairs))


@needs_shared
@pytest.mark.parametrize("make, n", [(lambda: ARC("ARC-Easy", "test", SHARED), 2376), (lambda: ARC("ARC-Challenge", "validation", SHARED), 299),
                                     (lambda: MMLU("test", SHARED), 14042), (lambda: HumanEval(SHARED), 164), (lambda: SmolTalk(data_dir=SHARED), None),
                                     (lambda: HellaSwag(data_dir=SHARED), 10042), (lambda: PIQA(data_dir=SHARED), 1838),
                                     (lambda: CommonsenseQA(data_dir=SHARED), 1221)])
def test_full_data_loads(make, n):
    task = make()
    assert n is None or len(task) == n
    for conv in task: check_conversation(conv)


def test_humaneval_runs_code_in_a_separate_process():
    he = HumanEval(DATA, timeout=2)
    c = he[0]
    assert he.eval_type == "generative" and c["task_id"] == "HumanEval/0"
    assert he.score(c, c["messages"][-1]["content"]) == 1.0
    assert he.score(c, he.rows[0]["canonical_solution"]) == 1.0
    assert he.score(c, f"```python\n{c['messages'][-1]['content']}\n```") == 1.0
    assert he.score(c, "    return False\n") == 0.0
    assert he.score(c, "    return not_defined\n") == 0.0
    t0 = time.time()
    assert he.score(c, "    while True: pass\n") == 0.0 and time.time() - t0 < 10
    assert run_python("import sys; assert 'nanollama' not in sys.modules and sys.flags.isolated")


def test_smoltalk_cleans_rows(tmp_path):
    rows = read_jsonl(DATA / "sft/chitchat.jsonl.gz")
    talk = SmolTalk(data_dir=DATA)
    assert talk.eval_type is None and talk.skipped == 1 and len(talk) == len(rows) - 1
    assert all(c["messages"][-1]["role"] == "assistant" for c in talk)
    ends_with_user = next(i for i, r in enumerate(rows) if r["messages"][-1]["role"] == "user")
    assert talk[ends_with_user]["messages"] == rows[ends_with_user]["messages"][:-1]
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"messages": chat(("user", "hi"), ("assistant", "hello"))}) + "\n" + json.dumps({"messages": []}) + "\n")
    task = SmolTalk(files=[mine])
    assert len(task) == 1 and task.skipped == 1
    with pytest.raises(ValueError, match="train"): SmolTalk("test", data_dir=DATA)


def test_bad_local_rows_name_file_and_line(tmp_path):
    path = tmp_path / "evals" / "gsm8k" / "test.jsonl.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f: f.write('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(ValueError, match=rf"{path}:2: invalid JSON"): GSM8K("test", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"evals/mmlu/test\.jsonl\.gz"): load_rows("cais/mmlu", "all", "test", "evals/mmlu/test.jsonl.gz", tmp_path)
