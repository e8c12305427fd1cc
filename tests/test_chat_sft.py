"""chat_sft end to end through its command line on a tiny base model: two processes under torchrun (DDP and FSDP2)
against one with the same global batch, exact resume, the learning rate with gradient accumulation, the loss of a micro-batch with
nothing to learn, lineage, and one-line errors for bad input before any training."""
import json, os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, run_stage, tiny_chat_base
from nanollama.checkpoint import complete_steps, save_checkpoint

SFT = ["--seq-len=64", "--mixture=identity=1,spellingbee=1,arithmetic=1", "--synthetic-size=40", "--val-per-source=4",
       "--eval-every=2", "--chat-eval-tasks=", "--save-every=2", "--num-iterations=4", "--lr-frac=0.5"]


run = run_stage


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    "A base directory with a tokenizer (tool tokens included) and a tiny pretrained `base`."
    return tiny_chat_base(tmp_path_factory.mktemp("sft"))


def meta(base_dir, tag, step=None):
    d = base_dir / "checkpoints" / tag
    return json.loads((d / f"meta_{step or complete_steps(d)[-1]:06d}.json").read_text())


def test_torchrun_two_ranks_match_one_process_and_lineage(base_dir):
    run(base_dir, "nanollama.chat_sft", *SFT, "--device-batch-size=4", "--total-batch-size=512", "--output-tag=single")
    r = run(base_dir, "nanollama.chat_sft", *SFT, "--device-batch-size=2", "--total-batch-size=512", "--output-tag=ddp", torchrun=2)
    assert "done: 4 steps" in r.stdout
    r = run(base_dir, "nanollama.chat_sft", *SFT, "--device-batch-size=2", "--total-batch-size=512", "--output-tag=fsdp", "--fsdp", torchrun=2)
    assert "data parallel: FSDP2" in r.stdout and "after:" in r.stdout  # answers sampled from the gathered copy
    single, ddp, fsdp = meta(base_dir, "single"), meta(base_dir, "ddp"), meta(base_dir, "fsdp")
    assert single["step"] == ddp["step"] == fsdp["step"] == 4 and fsdp["fsdp"] and not ddp["fsdp"]
    for k in ("loss", "val_bpb"): assert abs(single["metrics"][k] - ddp["metrics"][k]) < 1e-5 and abs(fsdp["metrics"][k] - ddp["metrics"][k]) < 1e-5, k
    assert (base_dir / "checkpoints" / "fsdp" / "state_000004" / ".metadata").is_file()
    assert single["stage"] == "sft" and single["parent"]["tag"] == "base" and single["parent"]["stage"] == "base"
    assert [h["step"] for h in single["history"] if "val_bpb" in h] == [0, 2, 4]
    assert single["mixture"][0]["source"] == "identity" and single["train_config"]["output_tag"] == "single"
    best = json.loads((base_dir / "checkpoints" / "single" / "meta_best.json").read_text())  # the best held-out step after step 0
    assert best["step"] == min((h for h in single["history"] if "val_bpb" in h and h["step"]), key=lambda h: h["val_bpb"])["step"]


def test_resume_is_exact(base_dir):
    run(base_dir, "nanollama.chat_sft", *SFT, "--device-batch-size=4", "--output-tag=straight")
    run(base_dir, "nanollama.chat_sft", *SFT, "--device-batch-size=4", "--output-tag=stopped", "--num-iterations=4", "--time-budget=0.0001")
    assert complete_steps(base_dir / "checkpoints" / "stopped") == [1]  # the budget ran out after one step
    r = run(base_dir, "nanollama.chat_sft", *SFT, "--device-batch-size=4", "--output-tag=stopped", "--resume")
    assert "resumed stopped at step 1" in r.stdout
    a, b = meta(base_dir, "straight"), meta(base_dir, "stopped")
    assert b["step"] == 4 and a["metrics"]["loss"] == b["metrics"]["loss"] and a["metrics"]["val_bpb"] == b["metrics"]["val_bpb"]
    r = run(base_dir, "nanollama.chat_sft", *SFT, "--device-batch-size=4", "--output-tag=stopped", "--resume", "--seed=1", check=False)
    assert r.returncode == 1 and "--resume: the training data differ" in r.stderr


def test_learning_rate_with_gradient_accumulation(base_dir, monkeypatch):
    "--num-iterations counts optimiser steps: 3 steps of 4 micro-batches each, the learning rate from its peak to 0, never below."
    from nanollama import chat_sft, train
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(base_dir)); monkeypatch.setenv("NANOLLAMA_DATA", str(FIXTURES / "data"))
    scales, real = [], train.set_learning_rates
    monkeypatch.setattr(train, "set_learning_rates", lambda opts, scale, step: (scales.append(scale), real(opts, scale, step)))
    argv = [a for a in SFT if not a.startswith("--num-iterations")] + ["--num-iterations=3", "--device-batch-size=2",
                                                                          "--total-batch-size=512", "--output-tag=accum"]
    history = chat_sft.train(train.parse_config(chat_sft.SFTConfig, argv))
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3] and meta(base_dir, "accum")["step"] == 3
    assert scales == pytest.approx([1.0, 2 / 3, 1 / 3]) and min(scales) >= 0


def test_micro_batch_without_trainable_tokens():
    from nanollama.chat_sft import step_loss
    from nanollama.llama import Llama, LlamaConfig
    from nanollama.train import optimizer_step
    model = Llama(LlamaConfig(vocab_size=32, n_layer=1, n_embd=16, n_head=2, n_kv_head=1, max_seq_len=8))
    x, y = torch.randint(0, 32, (2, 8)), torch.full((2, 8), -1)
    loss = optimizer_step(model, lambda: (x, y), 2, [], loss_fn=step_loss(0, 2, 1))
    assert loss == 0.0 and all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


def test_seq_len_256_and_own_data(base_dir, tmp_path):
    "A user's own file mixed in (--data), rows of 256 tokens (the model's context is 64: refused), and a longer context."
    own = tmp_path / "mine.jsonl"
    own.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}]}) + "\n"
                           for i in range(30)))
    r = run(base_dir, "nanollama.chat_sft", *SFT, "--seq-len=256", f"--data={own}", "--dry-run", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "error: --seq-len=256 is longer than the model's context (64 tokens)"
    r = run(base_dir, "nanollama.chat_sft", *SFT, f"--data={own}", "--dry-run")
    row = next(line.split() for line in r.stdout.splitlines() if line.startswith("data "))
    assert row[2] == "26" and row[7] == "4"  # 30 conversations: 4 held out, 26 to train on


def bad_files(tmp_path):
    (tmp_path / "notjson.jsonl").write_text("this is not JSON\n")
    (tmp_path / "order.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
                                          + "\n" + json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}) + "\n")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--data={d}/notjson.jsonl"], "notjson.jsonl:1: invalid JSON"),
    (["--data={d}/order.jsonl"], "order.jsonl:2: message 1: user must be followed by assistant or tool call, got user"),
    (["--mixture=identity=0"], "--mixture 'identity=0' is empty"),
    (["--mixture=identity=1,nosuch=2"], "--mixture: unknown source 'nosuch'"),
    (["--mixture=data=1"], "--mixture names the source 'data', but no --data file is given"),
    (["--model-tag=nosuch"], "no checkpoint for model tag 'nosuch'"),
    (["--model-tag=oldtok"], "need the tokens <|python_tag|> and <|eom_id|>, which this tokenizer"),
    (["--lr-frac=0"], "--lr-frac must be > 0"),
    (["--chat-eval-tasks=Nope"], "unknown task 'Nope'"),
])
def test_bad_input_fails_in_one_line_before_training(base_dir, tmp_path, args, message):
    if "--model-tag=oldtok" in args:  # a model saved with a tokenizer from before the tool tokens
        from nanollama.checkpoint import load_model
        os.environ["NANOLLAMA_BASE_DIR"] = str(base_dir)
        try: save_checkpoint("oldtok", 1, load_model("base")[0], tokenizer_file=FIXTURES / "pretrain" / "tokenizer.model", stage="base")
        finally: os.environ.pop("NANOLLAMA_BASE_DIR")
    d = bad_files(tmp_path)
    r = run(base_dir, "nanollama.chat_sft", *SFT, *(a.format(d=d) for a in args), check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "step/s" not in r.stderr  # one line, and no training started


def test_chat_commands_load_the_fine_tuned_model_by_default(base_dir):
    "With base and sft saved, chat_cli without --model-tag answers as sft does (rl > sft > base), not as base."
    run(base_dir, "nanollama.chat_sft", *SFT, "--device-batch-size=4", "--num-iterations=2")
    from nanollama.checkpoint import resolve_model_tag
    assert resolve_model_tag(None, base_dir / "checkpoints").name == "sft"
    ask = lambda *tag: run(base_dir, "nanollama.chat_cli", *tag, "-p", "How do you spell 'cat'?", "--temperature=0", "--max-tokens=12").stdout
    default, sft, base = ask(), ask("--model-tag=sft"), ask("--model-tag=base")
    assert default == sft and sft != base
