"""base_eval end to end on a small trained checkpoint: the command's table, files and lineage metrics; two CPU processes
under torchrun give one process's results; the checkpoint's Hugging Face export gives the same CORE rows through
`--hf-path`; errors name the problem. And the proof against lm-evaluation-harness: on ARC-Easy and PIQA questions
(10-shot CORE prompts), our per-choice log-likelihoods equal those of lm-eval's own `HFLM` on the exported folder, and
the chosen answers agree under every usual normalisation."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pytest
import torch

from nanollama.base_eval import main
from nanollama.checkpoint import save_checkpoint
from nanollama.core_eval import Example, LlamaLogits, load_bundle, option_scores, prompts, task_rows
from nanollama.dataset import embedded_text
from nanollama.export_hf import write_hf
from nanollama.llama import Llama, LlamaConfig
from nanollama.tokenizer import Tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "core"  # the first 24 rows of six CORE files
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "evals" / "core"  # the course data beside the repository
TASKS = "arc_easy,copa,hellaswag_zeroshot,winogrande,lambada_openai"
STEPS = 300


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A base dir holding the checkpoint `tiny` (trained a few hundred steps on Shakespeare, no soft-cap, no QK-norm) and its HF export."
    root = tmp_path_factory.mktemp("base_eval")
    tok = Tokenizer.train([embedded_text("train")[:300_000]], vocab_size=768)
    tok.save(root / "tok.model")
    torch.manual_seed(0)
    data = torch.tensor(tok.encode(embedded_text("train")[:20_000]))
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=2048,
                              qk_norm=False, softcap=0.0))  # a long context: 10-shot prompts are ~1,000 tokens of this vocabulary
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    g, threads = torch.Generator().manual_seed(0), torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains no faster on more threads, and far slower on a busy machine
    try:
        for _ in range(STEPS):
            x = torch.stack([data[s:s + 65] for s in torch.randint(0, len(data) - 65, (16,), generator=g)])
            loss = model(x[:, :-1], targets=x[:, 1:])
            opt.zero_grad(); loss.backward(); opt.step()
    finally: torch.set_num_threads(threads)
    assert loss.item() < 3.0
    model.eval()
    save_checkpoint("tiny", STEPS, model, meta=dict(train_config=dict(source="shakespeare", seq_len=64)),
                    tokenizer_file=root / "tok.model", root=root / "checkpoints", stage="base", metrics={"val_bpb": 9.99})
    return dict(root=root, tok=tok, model=model, hf=write_hf(model, tok, root / "hf"))


def run(root, *args, torchrun=0):
    "The command in a child process (under torchrun with `torchrun` ranks); its output, after checking it succeeded."
    env = {**os.environ, "NANOLLAMA_BASE_DIR": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable]
    r = subprocess.run([*launcher, "-m", "nanollama.base_eval", *args], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


QUICK = [f"--core-dir={FIXTURE}", f"--tasks={TASKS}", "--max-per-task=12", "--bpb-tokens=4096", "--num-samples=1"]


@pytest.fixture(scope="module")
def single(tiny):
    "One process's run of the command on `tiny`: its output and its saved results."
    out = run(tiny["root"], "--model-tag=tiny", *QUICK)
    d = tiny["root"] / "checkpoints" / "tiny"
    saved = json.loads((d / f"base_eval_{STEPS:06d}.json").read_text())
    shutil.copy(d / f"base_eval_{STEPS:06d}.json", d / "single.json")  # the torchrun run writes the same file
    return out, saved


def test_command_prints_and_saves(tiny, single):
    out, saved = single
    d = tiny["root"] / "checkpoints" / "tiny"
    assert "CORE over 5 of 22 tasks, at most 12 items per task" in out and out.count("arc_easy ") == 1
    assert "bits per byte on shakespeare" in out and "samples, unconditioned" in out
    assert [r["task"] for r in saved["rows"]] == TASKS.split(",") and all(r["count"] == 12 for r in saved["rows"])
    assert (d / f"base_eval_{STEPS:06d}.csv").read_text().startswith("task,type,shots,accuracy")
    metrics = json.loads((d / f"meta_{STEPS:06d}.json").read_text())["metrics"]
    assert metrics["val_bpb"] == 9.99  # training's number is kept beside ours
    assert metrics["core_partial"] == saved["summary"]["core_partial"] and metrics["bpb_val"] == saved["bpb"]["val_bpb"]
    # the model read the first 20,000 characters of the train split dozens of times, and bpb reads the split from its
    # start: it has memorised that text (~0.6 bits per byte) and does worse than a fresh model on held-out text (~5)
    assert saved["bpb"]["train_bpb"] < 0.25 * saved["bpb"]["val_bpb"]


def test_torchrun_two_ranks_match_one_process(tiny, single):
    out = run(tiny["root"], "--model-tag=tiny", *QUICK, torchrun=2)
    assert out.count("CORE over 5 of 22 tasks") == 1  # rank 0 prints, once
    ddp = json.loads((tiny["root"] / "checkpoints" / "tiny" / f"base_eval_{STEPS:06d}.json").read_text())
    one = single[1]
    assert ddp["rows"] == one["rows"] and ddp["samples"] == one["samples"]
    for k in one["bpb"]: assert abs(ddp["bpb"][k] - one["bpb"][k]) < 1e-6  # nats and bytes summed in another order


def test_hf_export_gives_the_same_results(tiny, single, tmp_path):
    out = run(tiny["root"], f"--hf-path={tiny['hf']}", f"--output={tmp_path}", "--source=shakespeare", "--seq-len=64", *QUICK)
    assert "LlamaForCausalLM" in out
    hf = json.loads((tmp_path / "base_eval.json").read_text())
    assert hf["rows"] == single[1]["rows"]
    for k in single[1]["bpb"]: assert abs(hf["bpb"][k] - single[1]["bpb"][k]) < 1e-4


@pytest.mark.parametrize("args, message", [
    (["--tasks=arc_easy,trivia"], "unknown task 'trivia'; known tasks: hellaswag_zeroshot"),
    ([f"--core-dir={FIXTURE}", "--tasks=piqa"], "no file for piqa in this bundle"),
    (["--core-dir=/nowhere"], "CORE task folder /nowhere not found"),
    (["--model-tag=nothing-here"], "no checkpoint for model tag 'nothing-here'"),
    (["--hf-path=/nowhere"], "--hf-path /nowhere: no config.json there"),
    (["--max-per-task=0"], "--max-per-task must be > 0, got 0"),
    (["--output=x"], "--output is for --hf-path"),
])
def test_errors_name_the_problem(tiny, monkeypatch, capsys, args, message):
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(tiny["root"]))
    with pytest.raises(SystemExit) as e: main([f"--core-dir={FIXTURE}", "--model-tag=tiny", *args])
    assert message in str(e.value)


# --- lm-evaluation-harness ---

PARITY = ("arc_easy", "piqa") if (SHARED / "core.json").is_file() else ("arc_easy", "hellaswag")  # the fixture has no PIQA
ITEMS = 30


def lm_eval_pairs(task, n):
    "The (context, continuation) pairs of the first `n` items of a CORE multiple-choice task, and each item's gold."
    rows, n = task_rows(task, n)
    pairs, golds = [], []
    for i in range(n):
        row, texts = rows[i], prompts(task, rows, i)
        contexts = [t[:len(t) - len(c)] for t, c in zip(texts, row["choices"])]
        assert all(t.endswith(c) for t, c in zip(texts, row["choices"])) and len(set(contexts)) == 1
        pairs.append([(contexts[0], c) for c in row["choices"]]); golds.append(row["gold"])
    return pairs, golds


@pytest.fixture(scope="module")
def hflm(tiny):
    "lm-eval's own Hugging Face model class on the exported folder, in float32 on the CPU."
    from lm_eval.models.huggingface import HFLM
    return HFLM(pretrained=str(tiny["hf"]), device="cpu", batch_size=8, dtype="float32")


def common_prefix(seqs) -> int:
    "How many leading tokens all of `seqs` share (the part CORE's scorer runs once)."
    n = min(map(len, seqs))
    return next((k for k in range(n) if len({s[k] for s in seqs}) > 1), n)


def picks(lls, lengths):
    "The choice with the highest log-likelihood, raw and divided by `lengths`."
    return int(torch.tensor(lls).argmax()), int((torch.tensor(lls) / torch.tensor(lengths, dtype=torch.float64)).argmax())


@pytest.mark.parametrize("task_name", PARITY)
def test_log_likelihoods_match_lm_eval(tiny, hflm, task_name):
    """Same token ids on both sides, by construction and checked: lm-eval moves the context's trailing whitespace into the
    continuation, encodes `context + continuation` and `context` (its tokenizer, from our export, puts BOS first) and
    scores the whole encoding's tokens past the context's. We encode `BOS + context + continuation` with our tokenizer and
    score from `len(BOS + context.rstrip())`: the test asserts those are lm-eval's ids and split, for every choice. Our
    scores come from CORE's scorer (`option_scores`, shared prefixes through the KV cache) on our `Llama`; lm-eval's from
    `HFLM.loglikelihood` on the `transformers` model."""
    from lm_eval.api.instance import Instance
    tok, task = tiny["tok"], load_bundle(SHARED if (SHARED / "core.json").is_file() else FIXTURE)[task_name]
    pairs, golds = lm_eval_pairs(task, ITEMS)
    examples = []
    for item, gold in zip(pairs, golds):
        seqs = [tok.encode(ctx + cont, bos=True) for ctx, cont in item]
        starts = [len(tok.encode(ctx.rstrip(), bos=True)) for ctx, _ in item]
        for (ctx, cont), s, st in zip(item, seqs, starts):
            assert hflm._encode_pair(ctx, cont) == (s[:st], s[st:])  # lm-eval's ids and split are ours
        examples.append(Example(seqs, starts, gold, [len(c) for _, c in item], min(common_prefix(seqs), *starts)))
    loss, count, _ = option_scores(LlamaLogits(tiny["model"]), examples)
    ours = (-loss).double()
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(p for item in pairs for p in item)]
    theirs = torch.tensor([ll for ll, _ in hflm.loglikelihood(requests, disable_tqdm=True)], dtype=torch.float64)
    delta = (ours - theirs).abs()
    agree, k = {"sum": 0, "per token": 0, "per character": 0}, 0
    for item, ex in zip(pairs, examples):
        n = len(item)
        ntok, nchar = count[k:k + n].tolist(), ex.chars
        for name, a, b in [("sum", picks(ours[k:k + n].tolist(), [1] * n)[0], picks(theirs[k:k + n].tolist(), [1] * n)[0]),
                           ("per token", picks(ours[k:k + n].tolist(), ntok)[1], picks(theirs[k:k + n].tolist(), ntok)[1]),
                           ("per character", picks(ours[k:k + n].tolist(), nchar)[1], picks(theirs[k:k + n].tolist(), nchar)[1])]:
            agree[name] += a == b
        k += n
    print(f"\n{task_name}: {len(pairs)} questions, {len(requests)} choices, max |Δ log-likelihood| {delta.max():.2e} "
          f"(mean {delta.mean():.2e}, log-likelihoods {ours.min():.1f} to {ours.max():.1f}); answers agree: "
          + ", ".join(f"{v}/{len(pairs)} {name}" for name, v in agree.items()))
    assert (delta <= 1e-3 + 1e-6 * theirs.abs()).all()  # float32 sums over up to ~100 tokens, in different orders
    assert all(v == len(pairs) for v in agree.values())
