"""base_train end to end through its command line: two CPU processes under torchrun against one process with the
same global batch, a kill in the middle of a checkpoint write, and the errors for bad flags, bad checkpoints and a
diverging loss."""
import json, os, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch

from nanollama.checkpoint import complete_steps, load_model

TINY = ["--depth=1", "--seq-len=64", "--eval-tokens=1024", "--eval-every=0", "--sample-every=0",
        "--personality-ratio=0.2", "--num-iterations=4", "--save-every=2"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    "A base directory with a small tokenizer, as `tok_train` would leave it."
    d = tmp_path_factory.mktemp("base")
    from nanollama.dataset import embedded_text
    from nanollama.tokenizer import Tokenizer
    Tokenizer.train([embedded_text("train")[:200_000]], vocab_size=512).save(d / "tokenizer" / "tokenizer.model")
    return d


def run(base_dir, *args, torchrun=0, check=True):
    env = {**os.environ, "NANOLLAMA_BASE_DIR": str(base_dir), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable]
    r = subprocess.run([*launcher, "-m", "nanollama.base_train", *args], env=env, capture_output=True, text=True, timeout=600)
    if check: assert r.returncode == 0, r.stdout + r.stderr
    return r


def final_meta(base_dir, tag):
    d = base_dir / "checkpoints" / tag
    return json.loads((d / f"meta_{complete_steps(d)[-1]:06d}.json").read_text())


def test_torchrun_two_ranks_match_one_process(base_dir):
    run(base_dir, *TINY, "--device-batch-size=8", "--total-batch-size=512", "--model-tag=single")
    r = run(base_dir, *TINY, "--device-batch-size=4", "--total-batch-size=512", "--model-tag=ddp", torchrun=2)
    assert "parameters identical on all 2 ranks" in r.stdout
    single, ddp = final_meta(base_dir, "single"), final_meta(base_dir, "ddp")
    assert single["step"] == ddp["step"] == 4
    assert abs(single["metrics"]["loss"] - ddp["metrics"]["loss"]) < 1e-5 and abs(single["metrics"]["val_bpb"] - ddp["metrics"]["val_bpb"]) < 1e-5
    # weights are not compared element by element: Adam's first steps are ~lr * sign(grad), so coordinates whose
    # gradient is ~0 can flip with the summation order; the loss and bpb above depend on all of them.


def test_kill_during_checkpoint_write_keeps_previous(base_dir):
    "The process dies (SIGKILL) halfway through writing step 4's weights: step 2 must still load."
    run(base_dir, *TINY, "--device-batch-size=8", "--total-batch-size=512", "--model-tag=killed", "--num-iterations=2")
    script = textwrap.dedent("""
        import os, signal, torch
        from nanollama import checkpoint
        from nanollama.checkpoint import load_model, save_checkpoint
        model, _ = load_model("killed")
        def dying_save(obj, f):
            f.write(b"PK half a zip archive"); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.torch.save = dying_save
        save_checkpoint("killed", 4, model)
    """)
    env = {**os.environ, "NANOLLAMA_BASE_DIR": str(base_dir)}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    d = base_dir / "checkpoints" / "killed"
    assert not (d / "model_000004.pt").exists() and complete_steps(d) == [2]
    os.environ["NANOLLAMA_BASE_DIR"] = str(base_dir)
    try: assert load_model("killed")[1]["step"] == 2
    finally: os.environ.pop("NANOLLAMA_BASE_DIR")
    r = run(base_dir, *TINY, "--device-batch-size=8", "--total-batch-size=512", "--model-tag=killed", "--resume")
    assert "resumed killed at step 2" in r.stdout + r.stderr and complete_steps(d)[-1] == 4


@pytest.mark.parametrize("args, message", [
    (["--depth=0"], "--depth must be > 0, got 0"),
    (["--personality-ratio=1.5"], "--personality-ratio must be in [0, 1], got 1.5"),
    (["--total-batch-size=1000", "--device-batch-size=8", "--seq-len=64"], "--total-batch-size=1000 is not a multiple"),
    (["--resume", "--model-tag=nothing-here"], "--resume: no complete checkpoint in"),
    (["--dtype=float8"], "--dtype must be auto, bfloat16 or float32"),
])
def test_bad_flags_fail_clearly(base_dir, args, message):
    r = run(base_dir, *TINY, *args, check=False)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_missing_tokenizer_and_corrupt_checkpoint(base_dir, tmp_path):
    r = run(tmp_path, *TINY, check=False)
    assert r.returncode != 0 and "no tokenizer at" in r.stderr and "tok_train" in r.stderr
    run(base_dir, *TINY, "--device-batch-size=8", "--total-batch-size=512", "--model-tag=corrupt", "--num-iterations=2")
    model_file = base_dir / "checkpoints" / "corrupt" / "model_000002.pt"
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated
    r = run(base_dir, *TINY, "--model-tag=corrupt", "--resume", check=False)
    assert r.returncode != 0 and f"{model_file} is not a readable checkpoint" in r.stderr


def test_diverging_loss_stops_and_keeps_last_checkpoint(base_dir):
    r = run(base_dir, *TINY, "--device-batch-size=8", "--total-batch-size=512", "--model-tag=diverged",
            "--num-iterations=40", "--save-every=1", "--embedding-lr=1e30", "--unembedding-lr=1e30", check=False)
    assert r.returncode != 0 and "stopping; the last good checkpoint" in r.stderr, r.stderr
    d = base_dir / "checkpoints" / "diverged"
    os.environ["NANOLLAMA_BASE_DIR"] = str(base_dir)
    try:
        model, meta = load_model("diverged")
        assert all(torch.isfinite(p).all() for p in model.parameters()) or meta["step"] == complete_steps(d)[-1]
    finally: os.environ.pop("NANOLLAMA_BASE_DIR")


@pytest.mark.parametrize("recipe, runs", [("speedrun.sh", 1), ("miniseries.sh", 8), ("scaling_laws.sh", 12)])
def test_gpu_recipes_parse(base_dir, recipe, runs):
    "Every training command of the GPU recipes parses its flags and derives a configuration (DRY_RUN=1)."
    env = {**os.environ, "NANOLLAMA_BASE_DIR": str(base_dir), "DRY_RUN": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", f"runs/{recipe}"], env=env, capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("horizon:") == runs and "device cpu × 8" in r.stdout


def test_lambda_setup_dry_run():
    r = subprocess.run(["bash", "runs/lambda_setup.sh"], env={**os.environ, "DRY_RUN": "1"}, capture_output=True,
                       text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert r.returncode == 0 and "pip install -q torch" in r.stdout and "ready:" in r.stdout


def test_bfloat16_on_cpu_trains_and_measures_mfu_in_bfloat16(base_dir):
    "`--dtype=bfloat16` on a CPU trains under bf16 autocast, and MFU is measured against bf16 matmuls, not float32 ones."
    r = run(base_dir, *TINY, "--device-batch-size=8", "--total-batch-size=512", "--dtype=bfloat16", "--model-tag=bf16")
    assert "bfloat16 matmuls measured on this CPU" in r.stdout
    meta = final_meta(base_dir, "bf16")
    assert meta["step"] == 4 and 0 < meta["metrics"]["loss"] < 7.0  # finite, near ln(512) = 6.24 after 4 steps
