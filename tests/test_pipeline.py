"""The whole pipeline at toy size (runs/pipeline.sh with runs/toy_flags.sh) from an empty base directory: every stage
runs, the report card lists them all, a second run reuses them instead of redoing, an interrupted stage resumes."""
import os, subprocess, sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
STAGES = ["tokenizer", "base_train", "base_eval", "chat_eval_base", "chat_sft", "chat_eval_sft", "chat_rl", "chat_eval_rl",
          "export_gguf", "export_hf", "llama_cpp", "report"]


def pipeline(base_dir, **env) -> str:
    "Run the pipeline with the toy settings in `base_dir`; its output, after checking it succeeded."
    r = subprocess.run(["bash", "-c", ". runs/toy_flags.sh && bash runs/pipeline.sh"], cwd=REPO, capture_output=True, text=True,
                       timeout=900, env={**os.environ, "NANOLLAMA_BASE_DIR": str(base_dir),
                                         "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def ran(out: str) -> list[str]:
    "The stages that ran (not reused) in a pipeline's output."
    return [s for s in STAGES if f"\n== {s}\n" in "\n" + out or f"\n== {s}: resuming" in "\n" + out]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline")
    return d, pipeline(d)


def test_every_stage_runs_and_the_report_lists_them(first):
    d, out = first
    assert ran(out) == STAGES
    assert "llama.cpp and nanollama gave the same greedy reply to 2 of 2 prompts" in out
    report = (d / "report" / "report.md").read_text()
    for row in ("| base | base:6 | scratch | 6 |", "| sft | sft:4 | base:6 | 4 |", "| rl | rl:3 | sft:4 | 3 |"): assert row in report
    assert "CORE over 7 of 22 tasks, at most 2 items per task" in report
    assert "| task | problems | base | sft | rl |" in report and "| SpellingBee | 3 |" in report
    assert "| rl.gguf |" in report and "| rl-hf/ |" in report and "python -m nanollama.chat_rl --tasks=SpellingBee" in report
    assert all((d / "report" / png).stat().st_size > 10_000 for png in ("curves.png", "chat_eval.png"))


def test_second_run_reuses_and_resumes(first):
    d, _ = first
    weights = lambda: {p: p.stat().st_mtime_ns for p in (d / "checkpoints").rglob("model_*.pt")}
    before = weights()
    out = pipeline(d)
    assert ran(out) == [] and all(f"== {s}: done before" in out for s in STAGES)
    assert weights() == before
    # RL stopped after saving step 2 of 3: its stamp says started, not done
    (d / "pipeline" / "chat_rl.done").unlink()
    for p in (d / "checkpoints" / "rl").glob("*_000003.*"): p.unlink()
    out = pipeline(d)
    assert ran(out) == ["chat_rl"] and "resumed rl at step 2" in out, out  # the same model again: what follows is reused
    # a changed command reruns its stage (and what follows it)
    assert ran(pipeline(d, REPORT_FLAGS="--gpu-price=2")) == ["report"]


def test_report_tables_and_plots_a_series_of_evaluated_base_models(first):
    "Two evaluated base models (as miniseries.sh leaves them) give the report its series table and plot."
    d, _ = first
    env = {**os.environ, "NANOLLAMA_BASE_DIR": str(d), "OMP_NUM_THREADS": "1"}
    run = lambda *args: subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=600, check=True)
    run("nanollama.base_train", "--model-tag=d2", "--depth=2", "--seq-len=64", "--device-batch-size=8", "--total-batch-size=512",
        "--num-iterations=4", "--eval-every=0", "--sample-every=0", "--eval-tokens=1024", "--save-every=0")
    run("nanollama.base_eval", "--model-tag=d2", f"--core-dir={REPO / 'tests' / 'fixtures' / 'core'}", "--max-per-task=2",
        "--bpb-tokens=2048", "--num-samples=1")
    run("nanollama.report", "--model-tag=d2", f"--output={d / 'series'}")
    report = (d / "series" / "report.md").read_text()
    assert "## The model series" in report and "| base | 1 |" in report and "| d2 | 2 |" in report
    assert (d / "series" / "series.png").stat().st_size > 10_000


def test_dry_run_prints_commands_and_clean_starts_over(first):
    d, _ = first
    out = pipeline(d, DRY_RUN="1", CLEAN="1")
    assert ran(out) == [] and "== chat_rl: python -m nanollama.chat_rl --model-tag=sft --output-tag=rl" in out
    assert "horizon:" in out and (d / "pipeline" / "chat_rl.done").is_file()  # a dry run removes nothing
    out = pipeline(d, CLEAN="1", LLAMA_CPP="0")
    assert ran(out) == [s for s in STAGES if s != "llama_cpp"] and "resum" not in out
