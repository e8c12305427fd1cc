"""`nanollama.core_eval`: CORE's bundle layouts (nanollama's core.json and nanochat's core.yaml), the errors for a missing
folder, a malformed row (file:line) and an unknown task, few-shot sampling, each task type scored on hand-made rows with
a fake model whose preferences we set, the per-character normalisation, the centered formula against core.json's
baselines, rank splitting, and the KV-cache shortcut against the plain forward pass. A few seconds in all."""
import csv
import gzip
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"
from nanollama.core_eval import (CORE_TASKS, CoreTask, Example, LlamaLogits, core_score, encode_all, evaluate_core,
                                 evaluate_task, fewshot_indices, judge, load_bundle, option_scores, prompts, read_rows,
                                 task_rows, to_example)
from nanollama.evaluation import centered
from nanollama.llama import Llama, LlamaConfig

FIXTURE = Path(__file__).parent / "fixtures" / "core"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "evals" / "core"
needs_shared = pytest.mark.skipif(not (SHARED / "core.json").is_file(), reason=f"no CORE files at {SHARED}")


class ByteTokenizer:
    "One token per UTF-8 byte, BOS = 256: spans are exactly the characters."
    bos_id, vocab_size = 256, 257
    def encode(self, text, bos=False): return ([self.bos_id] if bos else []) + list(text.encode())


def first_char_model(ids):
    "Logits that expect every next token to repeat the first token after BOS (a context-dependent fake model)."
    return F.one_hot(ids[:, 1:2].expand_as(ids), 257).float() * 8


def write_ours(folder: Path, tasks: dict):
    "A bundle in nanollama's layout: `tasks` maps a label to (type, shots, delimiter, baseline %, rows)."
    folder.mkdir(parents=True, exist_ok=True)
    meta = []
    for label, (kind, shots, delim, base, rows) in tasks.items():
        with gzip.open(folder / f"{label}.jsonl.gz", "wt", encoding="utf-8") as f: f.write("".join(json.dumps(r) + "\n" for r in rows))
        meta.append(dict(label=label, icl_task_type=kind, num_fewshot=shots, continuation_delimiter=delim,
                         random_baseline_v1=base, random_baseline_v2=base, file=f"{label}.jsonl.gz"))
    (folder / "core.json").write_text(json.dumps({"tasks": meta}))
    return folder


def write_nanochat(folder: Path, tasks: dict):
    "The same tasks in nanochat's eval-bundle layout."
    (folder / "eval_data" / "g").mkdir(parents=True, exist_ok=True)
    yaml_lines = ["icl_tasks:"]
    with open(folder / "eval_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f); w.writerow(["Eval Task", "Task Category", "Random baseline"])
        for label, (kind, shots, delim, base, rows) in tasks.items():
            (folder / "eval_data" / "g" / f"{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            yaml_lines += [f"- label: {label}", f"  dataset_uri: g/{label}.jsonl", f"  num_fewshot: [{shots}]",
                           f"  icl_task_type: {kind}"] + ([f"  continuation_delimiter: {json.dumps(delim)}"] if delim != " " else [])
            w.writerow([label, "x", base])
    (folder / "core.yaml").write_text("\n".join(yaml_lines) + "\n")
    return folder


# Hand-made rows, zero-shot so that the fake model sees the item's own first character. Expected verdicts in comments.
MC = [{"query": "a?", "choices": ["aaaa", "bbbb"], "gold": 0},             # right
      {"query": "b?", "choices": ["aaaa", "bbbb", "cc"], "gold": 1},       # right
      {"query": "c?", "choices": ["cccc", "aaaa"], "gold": 1}]             # wrong
SCHEMA = [{"context_options": ["x is", "z is"], "continuation": "zzz", "gold": 1},   # right: the z context predicts z
          {"context_options": ["x is", "z is"], "continuation": "zzz", "gold": 0}]   # wrong
LM = [{"context": "q: ", "continuation": "qqq"},                            # right: greedy writes qqq (context stripped)
      {"context": "q:", "continuation": "qqr"}]                             # wrong
TASKS = {"mc": ("multiple_choice", 0, " ", 25.0, MC), "schema": ("schema", 0, " ", 50.0, SCHEMA),
         "lm": ("language_modeling", 0, "", 0.0, LM)}  # no delimiter: with one token per byte a space would start the span


def by_task(results): return {r["task"]: r for r in results}


def test_each_task_type_scored_on_hand_made_rows(tmp_path):
    res = by_task(evaluate_core(first_char_model, ByteTokenizer(), write_ours(tmp_path, TASKS)))
    assert (res["mc"]["accuracy"], res["mc"]["count"]) == (2 / 3, 3)
    assert res["schema"]["accuracy"] == 0.5 and res["lm"]["accuracy"] == 0.5
    assert res["lm"]["accuracy_norm"] is None and res["mc"]["accuracy_norm"] == 2 / 3
    assert math.isclose(res["mc"]["centered"], (2 / 3 - 0.25) / 0.75) and res["schema"]["centered"] == 0.0


def test_both_layouts_give_the_same_tasks_and_results(tmp_path):
    ours, theirs = load_bundle(write_ours(tmp_path / "ours", TASKS)), load_bundle(write_nanochat(tmp_path / "nc", TASKS))
    strip = lambda t: (t.label, t.kind, t.shots, t.delimiter, t.baseline)
    assert [strip(t) for t in ours.values()] == [strip(t) for t in theirs.values()]
    assert evaluate_core(first_char_model, ByteTokenizer(), ours) == evaluate_core(first_char_model, ByteTokenizer(), theirs)
    with pytest.raises(ValueError, match="only the v1 baselines"): load_bundle(tmp_path / "nc", baselines="v2")


def test_fixture_in_nanochat_layout_matches(tmp_path):
    "The committed fixture (real rows) converted to nanochat's layout, with a real delimiter and shots."
    ours = load_bundle(FIXTURE)
    tasks = {t.label: (t.kind, t.shots, t.delimiter, t.baseline * 100, read_rows(t)) for t in ours.values() if t.label in ("arc_easy", "copa")}
    theirs = load_bundle(write_nanochat(tmp_path, tasks))
    assert theirs["arc_easy"].delimiter == "\nAnswer: " and theirs["arc_easy"].shots == 10 and theirs["copa"].delimiter == " "
    for label in tasks:
        (a, _), (b, _) = task_rows(ours[label]), task_rows(theirs[label])
        assert a == b and prompts(ours[label], a, 3) == prompts(theirs[label], b, 3)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")): load_bundle(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither core.json"): load_bundle(tmp_path / "empty")
    bundle = load_bundle(write_ours(tmp_path / "b", TASKS))
    with pytest.raises(ValueError, match=r"unknown task 'mcq'; known tasks: mc, schema, lm"):
        evaluate_core(first_char_model, ByteTokenizer(), bundle, tasks="mc,mcq")
    with pytest.raises(FileNotFoundError, match="no file for jeopardy"):
        evaluate_core(first_char_model, ByteTokenizer(), FIXTURE, tasks=["jeopardy"])
    path = tmp_path / "b" / "mc.jsonl.gz"
    for line, message in [("{not json", "not valid JSON"), ('{"query": "q", "choices": ["a"]}', "missing field 'gold'"),
                          ('{"query": "q", "choices": ["a", "b"], "gold": 5}', "gold 5 is not an index of its 2 options"),
                          ('{"query": "q", "choices": "ab", "gold": 0}', "field 'choices' should be list")]:
        with gzip.open(path, "wt") as f: f.write(json.dumps(MC[0]) + "\n\n" + line + "\n")
        with pytest.raises(ValueError, match=f"{path}:3: {message}"): read_rows(bundle["mc"])


def test_fewshot_sampling_is_seeded_and_excludes_the_item():
    for n, i, k in [(100, 0, 10), (100, 99, 10), (20321, 5000, 10), (11, 3, 10)]:
        got = fewshot_indices(n, i, k)
        assert got == random.Random(1234 + i).sample([j for j in range(n) if j != i], k) and i not in got and len(set(got)) == k
    assert fewshot_indices(5, 2, 0) == []
    task = CoreTask("t", "multiple_choice", 3, "\nA: ", 0.25, None)
    rows = [{"query": f"Q{i}", "choices": [f"c{i}", f"d{i}"], "gold": i % 2} for i in range(10)]
    texts = prompts(task, rows, 4)
    shots = texts[0].split("\n\n")
    assert len(shots) == 4 and shots[-1] == "Q4\nA: c4" and texts[1].endswith("Q4\nA: d4")
    assert shots[:3] == [f"Q{j}\nA: {rows[j]['choices'][j % 2]}" for j in fewshot_indices(10, 4, 3)]
    assert all("Q4" not in s for s in shots[:3]) and prompts(task, rows, 4) == texts


def test_shuffle_before_truncation_and_quick_look_equals_full_run_prefix():
    task = load_bundle(FIXTURE)["copa"]
    rows, n = task_rows(task, 5)
    expected = read_rows(task); random.Random(1337).shuffle(expected)
    assert rows == expected and n == 5 and task_rows(task)[1] == 24 and task_rows(task, 100)[1] == 24


def test_per_character_normalisation_can_disagree_with_per_token():
    ex = Example([[0, 1, 2], [0, 1, 2]], [1, 1], gold=0, chars=[1, 6])
    loss, count = torch.tensor([4.0, 6.0]), torch.tensor([2, 2])  # per token 2 < 3: choice 0; per character 4 > 1: choice 1
    assert judge([ex], "multiple_choice", loss, count, torch.zeros(2, dtype=torch.bool)) == [(True, False)]


def test_spans_and_left_truncation():
    tok, task = ByteTokenizer(), CoreTask("t", "multiple_choice", 0, " ", 0.5, None)
    row = {"query": "the long question", "choices": ["xy", "abcd"], "gold": 0}
    ex = to_example(task, row, encode_all(tok, prompts(task, [row], 0)))
    assert [bytes(s[st:]) for s, st in zip(ex.seqs, ex.starts)] == [b"xy", b"abcd"] and ex.shared == ex.starts[0]
    cut = to_example(task, row, encode_all(tok, prompts(task, [row], 0)), max_len=8)
    assert max(map(len, cut.seqs)) == 8 and [bytes(s[st:]) for s, st in zip(cut.seqs, cut.starts)] == [b"xy", b"abcd"]
    same = {"query": "q", "choices": ["ab", "abcd"], "gold": 0}  # one choice a prefix of the other: back off one token
    ex = to_example(task, same, encode_all(tok, prompts(task, [same], 0)))
    assert [bytes(s[st:]) for s, st in zip(ex.seqs, ex.starts)] == [b"b", b"bcd"]
    schema = CoreTask("s", "schema", 0, " ", 0.5, None)
    row = {"context_options": ["one", "two"], "continuation": "end", "gold": 0}
    ex = to_example(schema, row, encode_all(tok, prompts(schema, [row], 0)))
    assert [bytes(s[st:]) for s, st in zip(ex.seqs, ex.starts)] == [b" end", b" end"] and ex.shared == 1


@needs_shared
def test_centered_formula_against_core_json_baselines():
    meta = {t["label"]: t for t in json.loads((SHARED / "core.json").read_text())["tasks"]}
    assert tuple(meta) == CORE_TASKS
    for version in ("v1", "v2"):
        for label, task in load_bundle(SHARED, version).items():
            b = meta[label][f"random_baseline_{version}"]
            for acc in (0.0, 0.3, 0.7, 1.0):
                assert math.isclose(centered(acc, task.baseline), (acc - 0.01 * b) / (1 - 0.01 * b))
    assert load_bundle(SHARED)["bigbench_language_identification"].baseline == 0.091


@needs_shared
def test_shared_files_match_core_json():
    bundle, meta = load_bundle(SHARED), json.loads((SHARED / "core.json").read_text())["tasks"]
    assert sum(t.path is not None for t in bundle.values()) == 19
    for t in meta:
        if t["file"] and t["rows"] < 2000: assert len(read_rows(bundle[t["label"]])) == t["rows"]


def test_ranks_split_the_items_and_their_counts_sum_to_one_process(tmp_path):
    bundle = load_bundle(write_ours(tmp_path, {"mc": TASKS["mc"], "lm": TASKS["lm"]}))
    for task in bundle.values():
        one = evaluate_task(first_char_model, ByteTokenizer(), task)
        parts = [evaluate_task(first_char_model, ByteTokenizer(), task, rank=r, world=2) for r in range(2)]
        assert {k: sum(p[k] for p in parts) for k in ("correct", "correct_norm", "total")} == {k: one[k] for k in ("correct", "correct_norm", "total")}


def test_core_label_is_honest():
    full = [dict(task=t, centered=0.2, count=3, rows=3) for t in CORE_TASKS]
    assert core_score(full)[1] == "CORE" and math.isclose(core_score(full)[0], 0.2)
    assert core_score(full[:19])[1] == "CORE over 19 of 22 tasks"
    assert core_score([dict(r, count=2) for r in full])[1] == "CORE over 22 of 22 tasks, at most 2 items per task"


def test_kv_cache_shortcut_equals_plain_batches():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=257, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=64))
    with torch.no_grad():
        for p in model.parameters(): p.normal_(0, 0.1)
    task, tok = load_bundle(FIXTURE)["arc_easy"], ByteTokenizer()
    rows, _ = task_rows(task)
    examples = [to_example(task, rows[i], encode_all(tok, prompts(task, rows, i)), max_len=64) for i in range(6)]
    assert all(max(map(len, ex.seqs)) == 64 for ex in examples)  # cut from the left to the context
    fast = option_scores(LlamaLogits(model), examples, pad_id=tok.bos_id, min_shared=8)
    plain = option_scores(lambda ids: model(ids), examples, pad_id=tok.bos_id, batch_tokens=200)
    torch.testing.assert_close(fast[0], plain[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(fast[1], plain[1]) and torch.equal(fast[2], plain[2])
