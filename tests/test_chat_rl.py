"""chat_rl end to end through its command line on a tiny fine-tuned model: two processes under torchrun (DDP and FSDP2)
against one, exact resume, lineage, a checker that raises, replies cut at the length limit, and one-line errors for
bad input."""
import json, shutil

import pytest

from conftest import FIXTURES, run_stage, tiny_chat_base
from nanollama.checkpoint import complete_steps, resolve_model_tag

# A toy task the tiny model can score on by chance: an even number of characters is right. With TOY_RAISE set, its
# checker raises on replies whose length is a multiple of 3, as a buggy reward function would.
TOY = '''
import os, sys
from nanollama import chat_rl
from nanollama.tasks import ListTask

class Toy(ListTask):
    def score(self, conversation, completion):
        if os.path.exists(os.environ.get("TOY_DIE_AFTER", "/nonexistent")): os._exit(9)  # killed in the middle of a step
        n = len(completion)
        if os.environ.get("TOY_RAISE") and n % 3 == 0: raise ZeroDivisionError(f"cannot score {n} characters")
        return float(n % 2 == 0)

prompts = lambda n, what: Toy([{"messages": [{"role": "user", "content": f"Say {what}."}]}] * n)  # one length: no padding
chat_rl.RL_TASKS["Toy"] = chat_rl.RLTask(lambda cfg: prompts(40, "a word"), lambda cfg: prompts(8, "a number"))
chat_rl.main(sys.argv[1:])
'''
RL = ["--tasks=Toy", "--prompts-per-step=4", "--num-samples=4", "--max-tokens=12", "--num-iterations=4", "--eval-every=2",
      "--eval-prompts=4", "--eval-samples=2", "--save-every=2", "--lr-frac=0.5"]


run = run_stage


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    "A base directory with a tokenizer (tool tokens included), a tiny `base`, a briefly fine-tuned `sft` and the toy task's script."
    d = tiny_chat_base(tmp_path_factory.mktemp("rl"))
    run(d, "nanollama.chat_sft", "--seq-len=64", "--mixture=identity=1,spellingbee=1", "--synthetic-size=40", "--val-per-source=4",
        "--eval-every=0", "--chat-eval-tasks=", "--num-iterations=2", "--device-batch-size=4")
    (d / "toy.py").write_text(TOY)
    return d


def meta(base_dir, tag):
    d = base_dir / "checkpoints" / tag
    return json.loads((d / f"meta_{complete_steps(d)[-1]:06d}.json").read_text())


def steps(m, key):
    return [h[key] for h in m["history"] if key in h]


def test_torchrun_two_ranks_match_one_process_and_lineage(base_dir):
    toy = str(base_dir / "toy.py")
    run(base_dir, toy, *RL, "--device-batch-size=8", "--output-tag=single")
    r = run(base_dir, toy, *RL, "--device-batch-size=4", "--output-tag=ddp", torchrun=2)
    assert "done: 4 steps" in r.stdout
    r = run(base_dir, toy, *RL, "--device-batch-size=4", "--output-tag=fsdp", "--fsdp", torchrun=2)
    assert "data parallel: FSDP2" in r.stdout  # rollouts sampled from gathered copies
    single, ddp, fsdp = meta(base_dir, "single"), meta(base_dir, "ddp"), meta(base_dir, "fsdp")
    assert single["step"] == ddp["step"] == fsdp["step"] == 4 and fsdp["fsdp"]
    for other in (ddp, fsdp):
        assert steps(single, "reward") == steps(other, "reward") and steps(single, "Toy_pass1") == steps(other, "Toy_pass1")
        for a, b in zip(steps(single, "loss"), steps(other, "loss")): assert abs(a - b) < 1e-5
    assert len(set(steps(single, "reward"))) > 1 and min(steps(single, "zero_var")) < 1  # groups had something to learn
    assert single["stage"] == "rl" and single["parent"]["tag"] == "sft" and single["parent"]["stage"] == "sft"
    assert [h["step"] for h in single["history"] if "Toy_pass1" in h] == [0, 2, 4]
    assert {"reward", "zero_var", "length", "cut", "sample_tok_s", "lr"} <= set(single["history"][1])
    assert single["tasks"] == ["Toy"]
    lrs = steps(single, "lr")
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] > 0  # the warmdown, never below 0


def test_replies_that_never_end_are_cut_at_the_limit(base_dir):
    "The tiny model rarely ends its turn: its replies stop at --max-tokens, and the run goes on."
    m = meta(base_dir, "single")
    assert max(steps(m, "length")) <= 12 and max(steps(m, "cut")) > 0


def test_resume_is_exact(base_dir):
    toy = str(base_dir / "toy.py")
    run(base_dir, toy, *RL, "--device-batch-size=8", "--output-tag=straight")
    run(base_dir, toy, *RL, "--device-batch-size=8", "--output-tag=stopped", "--time-budget=0.0001")
    assert complete_steps(base_dir / "checkpoints" / "stopped") == [1]  # the budget ran out after one step
    r = run(base_dir, toy, *RL, "--device-batch-size=8", "--output-tag=stopped", "--resume")
    assert "resumed stopped at step 1" in r.stdout
    a, b = meta(base_dir, "straight"), meta(base_dir, "stopped")
    assert b["step"] == 4 and steps(a, "loss") == steps(b, "loss") and steps(a, "reward") == steps(b, "reward")
    assert a["metrics"]["Toy_pass1"] == b["metrics"]["Toy_pass1"]
    r = run(base_dir, toy, *RL, "--output-tag=stopped", "--resume", "--prompts-per-step=8", check=False)
    assert r.returncode == 1 and "--resume: the training data differ" in r.stderr
    killed = base_dir / "checkpoints" / "killed"
    r = run(base_dir, toy, *RL, "--device-batch-size=8", "--output-tag=killed", "--save-every=1", check=False,
            TOY_DIE_AFTER=str(killed / "model_000002.pt"))  # dies sampling step 3, right after saving step 2
    assert r.returncode == 9 and complete_steps(killed) == [1, 2]
    run(base_dir, toy, *RL, "--device-batch-size=8", "--output-tag=killed", "--save-every=1", "--resume")
    c = meta(base_dir, "killed")
    assert c["step"] == 4 and steps(a, "loss") == steps(c, "loss") and steps(a, "reward") == steps(c, "reward")


def test_a_raising_checker_scores_zero_and_is_reported(base_dir):
    r = run(base_dir, str(base_dir / "toy.py"), *RL, "--device-batch-size=8", "--output-tag=raising", TOY_RAISE="1")
    assert "the checker raised on" in r.stderr + r.stdout and "ZeroDivisionError: cannot score" in r.stderr + r.stdout
    m = meta(base_dir, "raising")
    assert m["step"] == 4 and sum(steps(m, "checker_errors")) > 0


def test_rl_model_is_the_default_chat_model(base_dir):
    run(base_dir, str(base_dir / "toy.py"), *RL, "--num-iterations=1", "--eval-every=0")  # saved as rl, the default --output-tag
    assert resolve_model_tag(None, base_dir / "checkpoints").name == "rl"  # what chat_cli, chat_web and the widget load (rl > sft > base)


@pytest.mark.parametrize("args, message", [
    (["--model-tag=nosuch"], "no checkpoint for model tag 'nosuch'"),
    (["--model-tag=othertok"], "was trained with tokenizer"),
    (["--tasks=Nope"], "unknown task 'Nope'"),
    (["--num-samples=1"], "--num-samples must be at least 2"),
    (["--temperature=0"], "--temperature must be > 0"),
    (["--resume", "--output-tag=never"], "--resume: no complete checkpoint in"),
])
def test_bad_input_fails_in_one_line_before_training(base_dir, args, message):
    if "--model-tag=othertok" in args:  # the sft model, beside a tokenizer other than the one it was trained with
        other = base_dir / "checkpoints" / "othertok"
        if not other.exists():
            shutil.copytree(base_dir / "checkpoints" / "sft", other)
            shutil.copy(FIXTURES / "pretrain" / "tokenizer.model", other / "tokenizer.model")
    r = run(base_dir, "nanollama.chat_rl", "--tasks=SpellingBee", "--train-size=20", "--eval-prompts=4", *args, check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "step/s" not in r.stderr  # one line, and no training started
