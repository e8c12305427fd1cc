"""Examples per second of our CORE evaluation against lm-evaluation-harness on the same model, tasks and examples.

The model: the `nano` preset (6 layers, width 384) with random weights by default, or a checkpoint (`--model-tag`).
It is exported to a Hugging Face folder (no soft-cap, no QK-norm: the export computes what our model computes), and
three contenders score the same multiple-choice questions (10-shot CORE prompts of ARC-Easy and PIQA by default):

- `ours`: CORE's `evaluate_task` (prompts, tokens, batched scoring, shared prefixes run once through the KV cache)
  on our `Llama`, the path `python -m nanollama.base_eval` takes;
- `ours-hf`: the same code on the exported folder through base_eval's `HFModel` adapter (`--hf-path`);
- `lm-eval`: lm-evaluation-harness's `HFLM.loglikelihood` on the exported folder, fed the (context, choice) pairs
  of the same questions (built beforehand, so only its tokenizing and scoring are timed; ours is timed from the task
  file to the verdicts).

Each contender lives in its own worker process (allocator state of one must not tax another), and they run in
alternating rounds on the same machine. Reported: the median round and the best round of each (on a shared machine
other programs only ever add time, so the best round is the least disturbed), with the ratios to lm-eval.

    python runs/bench_eval.py                                  # CPU, nano, 24 questions per task, 3 rounds
    python runs/bench_eval.py --device cuda --dtype bfloat16 --items 200 --lm-eval-batch-size 64
    python runs/bench_eval.py --core-dir ../shared/data/evals/core --tasks arc_easy,piqa,hellaswag
"""
import argparse, multiprocessing as mp, os, statistics, tempfile, time
from pathlib import Path

from peers import require
require("transformers", "lm_eval")

import torch

from nanollama.checkpoint import load_model, save_checkpoint
from nanollama.core_eval import LlamaLogits, bundle_dir, evaluate_task, load_bundle, prompts, task_rows
from nanollama.dataset import embedded_text
from nanollama.export_hf import write_hf
from nanollama.llama import Llama, LlamaConfig
from nanollama.tokenizer import Tokenizer, get_tokenizer

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "core"


def lm_eval_pairs(task, n):
    "The (context, choice) pairs of the first `n` questions of a CORE multiple-choice task (CORE's shuffle and prompts)."
    rows, n = task_rows(task, n)
    out = []
    for i in range(n):
        for text, choice in zip(prompts(task, rows, i), rows[i]["choices"]): out.append((text[:len(text) - len(choice)], choice))
    return out, n


def worker(which, args, folder, conn):
    "Build one contender, then time one pass over the questions each time the parent asks; reply with seconds."
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.core_dir)
    tasks = [bundle[t] for t in args.tasks.split(",")]
    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bfloat16" else torch.autocast(device.type, enabled=False)
    tok = get_tokenizer(Path(folder) / "checkpoints" / "bench" / "tokenizer.model")
    if which == "lm-eval":
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
        lm = HFLM(pretrained=str(Path(folder) / "hf"), device=args.device, batch_size=args.lm_eval_batch_size, dtype=args.dtype)
        pairs = [p for t in tasks for p in lm_eval_pairs(t, args.items)[0]]
        requests = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
        run = lambda: lm.loglikelihood(requests, disable_tqdm=True)
    else:
        if which == "ours": logits_fn = LlamaLogits(load_model("bench", root=Path(folder) / "checkpoints", device=device)[0])
        else:
            from nanollama.base_eval import load_hf
            logits_fn, tok = load_hf(Path(folder) / "hf", device)
        def run():
            with autocast:
                for t in tasks: evaluate_task(logits_fn, tok, t, args.items, batch_tokens=args.batch_tokens, device=device)
    run()  # warm up
    conn.send(sum(lm_eval_pairs(t, args.items)[1] for t in tasks))
    while conn.recv():
        if device.type == "cuda": torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        if device.type == "cuda": torch.cuda.synchronize()
        conn.send(time.perf_counter() - t0)


def make_model(args, folder: Path):
    "Save the model to bench as checkpoint `bench` (with its tokenizer) and as a Hugging Face folder."
    if args.model_tag:
        model, _ = load_model(args.model_tag)
        from nanollama.checkpoint import tokenizer_file
        tok_path = tokenizer_file(args.model_tag)
        if model.config.softcap: print(f"note: {args.model_tag} is soft-capped; its export differs a little (the speed does not)")
    else:
        tok = Tokenizer.train([embedded_text("train")[:2_000_000]], vocab_size=args.vocab_size)
        tok_path = folder / "tok.model"; tok.save(tok_path)
        torch.manual_seed(0)
        model = Llama(LlamaConfig.preset(args.preset, vocab_size=tok.vocab_size, max_seq_len=2048, qk_norm=False, softcap=0.0)).eval()
        with torch.no_grad():
            for p in model.parameters(): p.normal_(0, 0.02)  # random but not uniform predictions (the default init's head is ~0)
    save_checkpoint("bench", 0, model, tokenizer_file=tok_path, root=folder / "checkpoints")
    write_hf(model, get_tokenizer(tok_path), folder / "hf")
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-tag", help="benchmark this checkpoint instead of a random model")
    p.add_argument("--preset", default="nano", help="the random model's preset (default nano: 6 layers, width 384)")
    p.add_argument("--vocab-size", type=int, default=4096, help="the random model's tokenizer (trained on the embedded corpus)")
    p.add_argument("--core-dir", default=None, help="CORE folder (default: $NANOLLAMA_DATA/evals/core, else the tests' fixture)")
    p.add_argument("--tasks", default="arc_easy,piqa", help="multiple-choice tasks, comma-separated")
    p.add_argument("--items", type=int, default=24, help="questions per task")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch-tokens", type=int, default=4096, help="our padded tokens per forward pass")
    p.add_argument("--lm-eval-batch-size", type=int, default=16, help="lm-eval's sequences per forward pass")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--contenders", default="ours,ours-hf,lm-eval")
    args = p.parse_args()
    if args.core_dir is None:
        args.core_dir = str(bundle_dir()) if os.environ.get("NANOLLAMA_DATA") else str(FIXTURE)
    if Path(args.core_dir) == FIXTURE: print(f"tasks from the tests' fixture {FIXTURE} (24 rows each); pass --core-dir for the real files")
    if "piqa" in args.tasks and load_bundle(args.core_dir)["piqa"].path is None:
        args.tasks = args.tasks.replace("piqa", "hellaswag"); print("no PIQA file here: HellaSwag instead")
    with tempfile.TemporaryDirectory() as folder:
        model = make_model(args, Path(folder))
        c = model.config
        print(f"model: {c.n_layer} layers, width {c.n_embd}, vocab {c.vocab_size}, {model.num_params() / 1e6:.1f}M parameters; "
              f"{args.device}, {args.dtype}, {args.threads} threads; tasks {args.tasks}, {args.items} questions each, {args.rounds} rounds")
        ctx, pipes, procs = mp.get_context("spawn"), {}, []
        names = args.contenders.split(",")
        for which in names:
            pipes[which], child = ctx.Pipe()
            procs.append(ctx.Process(target=worker, args=(which, args, folder, child))); procs[-1].start()
        examples = {w: pipes[w].recv() for w in names}
        assert len(set(examples.values())) == 1, examples
        n = examples[names[0]]
        times = {w: [] for w in names}
        for r in range(args.rounds):
            for w in (names if r % 2 == 0 else names[::-1]):  # alternate the order, so drift hits everyone alike
                pipes[w].send(True); times[w].append(pipes[w].recv())
            print(f"round {r + 1}: " + ", ".join(f"{w} {n / times[w][-1]:.2f} examples/s" for w in names))
        for w in names: pipes[w].send(False)
        for proc in procs: proc.join()
    print(f"\n{n} questions, {args.rounds} rounds: examples/s, median round and best round")
    median, best = ({w: n / f(times[w]) for w in names} for f in (statistics.median, min))
    for w in names:
        vs = f"  ({median[w] / median['lm-eval']:.2f}x and {best[w] / best['lm-eval']:.2f}x lm-eval)" if "lm-eval" in names and w != "lm-eval" else ""
        print(f"  {w:8s} {median[w]:8.2f} {best[w]:8.2f}{vs}")


if __name__ == "__main__":
    main()
