"""FSDP2 through base_train's command line, on two CPU processes (gloo): the losses of DDP and of one process, a
sharded checkpoint resumed by one process on the rows and steps the two would have made, its model in the engine,
and the memory plan of a dry run."""
import json, os, shutil
from pathlib import Path

import pytest
import torch

from nanollama.checkpoint import complete_steps, load_model, tokenizer_file
from nanollama.engine import Engine
from nanollama.tokenizer import get_tokenizer
from test_base_train import TINY, run

BATCH = ["--total-batch-size=512"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    "A tokenizer, and the same 4 steps trained by one process, by DDP on two and by FSDP2 on two."
    d = tmp_path_factory.mktemp("fsdp")
    from nanollama.dataset import embedded_text
    from nanollama.tokenizer import Tokenizer
    Tokenizer.train([embedded_text("train")[:200_000]], vocab_size=512).save(d / "tokenizer" / "tokenizer.model")
    run(d, *TINY, *BATCH, "--device-batch-size=8", "--model-tag=single")
    run(d, *TINY, *BATCH, "--device-batch-size=4", "--model-tag=ddp", "--no-fsdp", torchrun=2)
    r = run(d, *TINY, *BATCH, "--device-batch-size=4", "--model-tag=fsdp", "--fsdp", torchrun=2)
    assert "data parallel: FSDP2" in r.stdout and "parameters sharded across 2 ranks by FSDP2" in r.stdout
    return d


def meta(base_dir, tag, step=None):
    d = base_dir / "checkpoints" / tag
    return json.loads((d / f"meta_{step or complete_steps(d)[-1]:06d}.json").read_text())


def losses(m): return [h["loss"] for h in m["history"] if "loss" in h]


def test_fsdp_trains_as_ddp_and_one_process(base_dir):
    single, ddp, fsdp = (meta(base_dir, tag) for tag in ("single", "ddp", "fsdp"))
    assert fsdp["step"] == 4 and fsdp["fsdp"] and not ddp["fsdp"]
    for other in (single, ddp):
        torch.testing.assert_close(losses(fsdp), losses(other), rtol=0, atol=1e-5)
        assert abs(fsdp["metrics"]["val_bpb"] - other["metrics"]["val_bpb"]) < 1e-5


def test_sharded_checkpoint_is_dcp_and_its_model_is_ordinary(base_dir):
    d = base_dir / "checkpoints" / "fsdp"
    state = d / "state_000004"
    assert state.is_dir() and (state / ".metadata").is_file() and (state / "train.pt").is_file()
    assert sorted(p.name for p in state.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own slices
    assert not list(d.glob("*.partial"))
    os.environ["NANOLLAMA_BASE_DIR"] = str(base_dir)
    try:
        model, _ = load_model("fsdp")
        ddp_model, _ = load_model("ddp")
        tokenizer = get_tokenizer(tokenizer_file("fsdp"))
    finally: os.environ.pop("NANOLLAMA_BASE_DIR")
    x = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x, targets=x), ddp_model(x, targets=x), rtol=0, atol=1e-4)  # whole weights, gathered right
    out = Engine(model, tokenizer).generate(tokenizer.encode("To be", bos=True), max_tokens=8, temperature=0.0)
    assert 0 < len(out[0]) <= 8


def resumed_at_step_2(base_dir, tag: str, *args, torchrun=0) -> dict:
    "A copy of `tag`'s run without its step 4, resumed (by `args`' processes) to step 4; returns its last metadata."
    d, resumed = base_dir / "checkpoints" / tag, base_dir / "checkpoints" / f"{tag}_resumed"
    shutil.copytree(d, resumed)
    for p in resumed.glob("*_000004*"): shutil.rmtree(p) if p.is_dir() else p.unlink()
    r = run(base_dir, *TINY, *BATCH, *args, f"--model-tag={tag}_resumed", "--resume", torchrun=torchrun)
    assert f"resumed {tag}_resumed at step 2" in r.stdout + r.stderr
    again, whole = meta(base_dir, f"{tag}_resumed"), meta(base_dir, tag)
    assert again["step"] == 4
    torch.testing.assert_close(losses(again), losses(whole), rtol=0, atol=1e-5)
    assert abs(again["metrics"]["val_bpb"] - whole["metrics"]["val_bpb"]) < 1e-5
    return again


def test_two_ranks_resumed_by_one_process(base_dir):
    "Step 4 of the FSDP2 run is removed; one process resumes its step 2 from the shards and makes the same steps 3 and 4."
    assert not resumed_at_step_2(base_dir, "fsdp", "--device-batch-size=8")["fsdp"]


def test_ddp_run_resumed_with_fsdp(base_dir):
    "A DDP checkpoint (one file of whole optimiser state) resumes under FSDP2, which slices it."
    assert resumed_at_step_2(base_dir, "ddp", "--device-batch-size=4", "--fsdp", torchrun=2)["fsdp"]


def test_dry_run_prints_the_memory_plan(tmp_path):
    "`--model=large --dry-run` as on 8 GPUs, before any tokenizer exists: DDP does not fit 40 GB cards, FSDP2 does."
    os.environ["WORLD_SIZE"] = "8"
    try: r = run(tmp_path, "--model=large", "--seq-len=2048", "--device-batch-size=2", "--dry-run")
    finally: os.environ.pop("WORLD_SIZE")
    out = r.stdout
    assert "planning with the default 32,000-token vocabulary" in out and "memory per GPU (8 GPUs, micro-batch 2 × 2048" in out
    ddp, fsdp = (next(l for l in out.splitlines() if l.strip().startswith(how)) for how in ("DDP", "FSDP2"))
    assert "does not fit 40 GB" in ddp and "fits 40 GB" in fsdp and "does not fit" not in fsdp
