"""The training toolkit under pretraining: the same losses as before it moved out of base_train, MFU that never
passes 100% when the CPU was busy at start, a progress bar that follows the time budget and leaves evaluations out of its ETA, the passes-over-data
warning, best and last checkpoints, lineage written and checked, and unknown config keys refused by name."""
import json, os, re, subprocess, sys, time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from nanollama import train as toolkit
from nanollama.base_train import TrainConfig, train
from nanollama.checkpoint import complete_steps, load_model, save_checkpoint
from nanollama.llama import Llama, LlamaConfig

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER = FIXTURES / "pretrain" / "tokenizer.model"  # 512 tokens, trained on 200k characters of the embedded corpus
SMALL_SOURCE = FIXTURES / "webtext"  # twelve sonnets to train on, six held out


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(tmp_path))
    return tmp_path


def tiny(**kw) -> TrainConfig:
    "A depth-2 run of a few steps on the embedded corpus, with the hyperparameters base_train had when the losses were recorded."
    settings = dict(depth=2, seq_len=64, device_batch_size=4, total_batch_size=512, num_iterations=6, eval_every=3,
                    eval_tokens=1024, sample_every=0, save_every=0, warmdown_ratio=0.5, tokenizer=str(TOKENIZER),
                    weight_decay=0.0, dropout=0.0)
    return TrainConfig(**{**settings, **kw})


def test_same_losses_as_before_the_move(base_dir):
    "The run recorded in fixtures/pretrain/losses.json with base_train before the toolkit existed gives the same numbers."
    expected = json.loads((FIXTURES / "pretrain" / "losses.json").read_text())["history"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as when the losses were recorded
    try: history = [{k: v for k, v in h.items() if k in ("step", "loss", "val_bpb")} for h in train(tiny())]
    finally: torch.set_num_threads(threads)
    assert [h.keys() for h in history] == [h.keys() for h in expected]
    for got, want in zip(history, expected):
        for k in ("loss", "val_bpb"):
            if k in want: assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-5), (got, want)


def test_mfu_never_above_100_percent_after_a_busy_start(base_dir, monkeypatch, capsys):
    "The peak measured at start came out far too low (a busy CPU): MFU re-measures it instead of reporting 1000%."
    monkeypatch.setattr(toolkit, "peak_flops", lambda device, dtype=torch.float32: 1e8)  # 0.1 GFLOP/s: any step beats it
    history = train(tiny(num_iterations=4, eval_every=0))
    mfus = [h["mfu"] for h in history if "mfu" in h]
    assert mfus and all(m <= 1.0 for m in mfus), mfus  # nan compares False: every step got a real figure
    assert "MFU reference re-measured: 0 ->" in capsys.readouterr().out


def test_mfu_with_the_cpu_really_busy_at_start(base_dir):
    "Two busy processes hold both cores while the run measures its peak, then stop: no step reports more than 100% MFU."
    hogs = [subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 12: pass"])
            for _ in range(2)]
    try:
        r = subprocess.run([sys.executable, "-m", "nanollama.base_train", "--depth=3", "--seq-len=128", "--device-batch-size=8",
                            "--total-batch-size=4096", "--num-iterations=40", "--eval-every=0", "--eval-tokens=1024",
                            "--sample-every=0", "--save-every=0", f"--tokenizer={TOKENIZER}", "--source", str(SMALL_SOURCE)],
                           env={**os.environ}, capture_output=True, text=True, timeout=600)
    finally:
        for h in hogs: h.kill()
    assert r.returncode == 0, r.stderr
    figures = [int(m) for m in re.findall(r"mfu=(\d+)%", r.stderr)]
    assert figures and max(figures) <= 100, (max(figures), r.stdout)


def test_progress_bar_follows_the_time_budget(base_dir):
    "A 6-second budget against a plan of 100,000 steps: the bar's total ends at the steps made, not at 100,000."
    r = subprocess.run([sys.executable, "-m", "nanollama.base_train", "--depth=1", "--seq-len=64", "--device-batch-size=4",
                        "--total-batch-size=256", "--num-iterations=100000", "--time-budget=0.1", "--eval-every=0",
                        "--eval-tokens=256", "--sample-every=0", "--save-every=0", f"--tokenizer={TOKENIZER}"],
                       env={**os.environ}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    done, total = map(int, re.findall(r"(\d+)/(\d+) \[", r.stderr)[-1])
    assert total < 100_000 and abs(total - done) <= 1, (done, total)


def test_eta_leaves_out_the_time_spent_in_hooks():
    "An evaluation of 1.5 s at the start must not make the bar think each 20 ms step takes longer."
    loop = toolkit.TrainLoop([], num_iterations=20)
    slow_eval = toolkit.Hook(10**9, lambda loop: time.sleep(1.5), at_start=True)
    toolkit.run_loop(loop, lambda loop: (time.sleep(0.02), (1.0, 1))[1], [slow_eval])
    assert loop.bar.format_dict["elapsed"] < 1.0  # 20 steps of 20 ms; the evaluations at the start and the end are left out
    assert loop.bar.format_dict["n"] == 20


def run_small(*args):
    "base_train on the twelve sonnets at depth 1, without evaluations, samples or saves in between."
    r = subprocess.run([sys.executable, "-m", "nanollama.base_train", "--depth=1", "--seq-len=64", "--device-batch-size=4",
                        "--total-batch-size=256", "--eval-every=0", "--eval-tokens=256", "--sample-every=0", "--save-every=0",
                        f"--tokenizer={TOKENIZER}", "--source", str(SMALL_SOURCE), *args],
                       env={**os.environ}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_passes_over_data_warning(base_dir):
    "200 steps over twelve sonnets is dozens of passes: the run says so before training, and names the remedies."
    out = run_small("--num-iterations=200")
    m = re.search(r"warning: the plan: ([\d.]+) passes over the ([\d.]+)M training tokens", out)
    assert m and float(m.group(1)) > 4, out
    assert "--model-tag=base:best" in out
    quiet = run_small("--num-iterations=2")
    assert re.search(r"the plan: 0\.\d passes", quiet) and "warning" not in quiet, quiet


def test_derived_horizon_stops_after_max_passes(base_dir):
    "Left to derive its horizon on twelve sonnets, the run stops after four passes, and says so; --max-passes=0 does not."
    out = run_small("--save-every=0")
    m = re.search(r"the derived horizon \(([\d,]+) steps\) would read the training data ([\d,]+) times: stopping after 4 "
                  r"passes instead, (\d+) steps", out)
    assert m and int(m.group(2).replace(",", "")) > 4, out
    steps = int(m.group(3))
    assert re.search(r"the plan: 4\.0 passes", out) and "warning" not in out
    assert f"done: {steps} steps" in out
    meta = load_model("base")[1]
    assert meta["step"] == steps and meta["train_config"]["max_passes"] == 4
    uncapped = run_small("--max-passes=0", "--time-budget=0.05")
    assert "stopping after" not in uncapped and "warning: the plan:" in uncapped


def test_best_and_last_checkpoints_and_lineage(base_dir):
    "Many passes over twelve sonnets: the best model by validation bpb is kept beside the last, with its lineage."
    history = train(tiny(source=str(SMALL_SOURCE), num_iterations=30, eval_every=3, save_every=10, personality_ratio=0.0))
    evals = [h for h in history if "val_bpb" in h]
    best_bpb = min(h["val_bpb"] for h in evals)
    best, best_meta = load_model("base:best")
    last, last_meta = load_model("base")
    assert best_meta["metrics"]["val_bpb"] == best_bpb and last_meta["step"] == 30 == complete_steps(base_dir / "checkpoints" / "base")[-1]
    assert best_meta["step"] == next(h["step"] for h in evals if h["val_bpb"] == best_bpb)
    tok_fp = __import__("hashlib").sha256(TOKENIZER.read_bytes()).hexdigest()[:16]
    for meta in (best_meta, last_meta):
        assert meta["stage"] == "base" and meta["parent"] is None and meta["tokenizer"] == tok_fp
    assert last_meta["metrics"] == {"val_bpb": evals[-1]["val_bpb"], "loss": history[-2]["loss"]}
    # a new run under the same tag, with another tokenizer, replaces the old checkpoints and the tokenizer copy
    other = base_dir / "other.model"
    from nanollama.dataset import embedded_text
    from nanollama.tokenizer import Tokenizer
    Tokenizer.train([embedded_text("train")[:100_000]], vocab_size=400).save(other)
    train(tiny(num_iterations=2, eval_every=0, tokenizer=str(other)))
    d = base_dir / "checkpoints" / "base"
    assert complete_steps(d) == [2] and (d / "tokenizer.model").read_bytes() == other.read_bytes()
    assert load_model("base")[1]["tokenizer"] != tok_fp


def test_stale_tokenizer_and_unknown_config_keys_are_refused(base_dir, tmp_path):
    model = Llama(LlamaConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=4, n_kv_head=2, max_seq_len=16))
    tok_a, tok_b = tmp_path / "a.model", tmp_path / "b.model"
    tok_a.write_bytes(b"tokenizer a"); tok_b.write_bytes(b"tokenizer b")
    save_checkpoint("mixed", 1, model, tokenizer_file=tok_a, stage="base")
    save_checkpoint("mixed", 2, model, tokenizer_file=tok_b, stage="base")
    assert load_model("mixed")[1]["step"] == 2
    with pytest.raises(ValueError, match="model_000001.pt was trained with tokenizer .* but .*tokenizer.model is"):
        load_model("mixed:1")
    path = base_dir / "checkpoints" / "future" / "model_000001.pt"
    save_checkpoint("future", 1, model)
    torch.save({"config": {**asdict(model.config), "mixture_of_experts": 8}, "model": model.state_dict()}, path)
    with pytest.raises(ValueError, match="unknown config keys mixture_of_experts"):
        load_model("future")
    r = subprocess.run([sys.executable, "-m", "nanollama.chat_cli", "--model-tag=future", "-p", "hi"],
                       env={**os.environ}, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "unknown config keys mixture_of_experts" in r.stderr and "Traceback" not in r.stderr
