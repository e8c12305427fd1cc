"""Reinforcement learning speed: TRL's `GRPOTrainer` against nanollama's chat_rl, same model, prompts, group size,
generation length and reward function, float32 on the CPU.

    NANOLLAMA_BASE_DIR=... NANOLLAMA_DATA=../shared/data python runs/bench_rl.py [--model-tag sft] [--steps 5]

Both start from the `--model-tag` checkpoint (TRL from its Hugging Face export, nanollama.export_hf) and make `--steps`
optimiser steps, each on the same `--prompts` prompts of chat_rl's task (SpellingBee by default, its training
split, in chat_rl's order) with `--group` samples of at most `--max-tokens` tokens each, at temperature 1 and top-k
50, rewarded by the task's own checker. A step is everything: sampling, scoring, the forward and backward passes
and the optimiser. TRL is set up as the same algorithm: strictly on-policy (one update per generation,
`num_iterations=1`), no reference model (`beta=0`), advantages reward − group mean (`scale_rewards="none"`), and a
loss normalised by the number of sampled tokens (`loss_type="dapo"`). TRL's defaults that would make the comparison
unfair are turned off: bf16 and gradient checkpointing. Its prompts come from the export's chat template, checked
here to give exactly the tokens chat_rl's engine starts from.

One difference stays, and is reported: chat_rl's engine runs the calculator when a reply calls it and feeds back the
result (forced tokens, not sampled), as the SFT model was trained to expect; TRL's `generate` samples those tokens
too. So the two do not sample the same number of tokens: the script prints sampled tokens/s of each (tokens the model
chose, per second of the whole step) and seconds per optimiser step, and the ratio of both.
"""
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never ask the Hub

import argparse
import statistics
import tempfile
import time
import warnings

from peers import require
require("transformers", "trl")

import datasets
import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from bench_sft import StepTimer


def trl_run(hf_dir, prompts: list[list[dict]], score, group: int, max_tokens: int, steps: int, batch_size: int, lr: float,
            threads: int, softcap: float = 0.0, **config) -> dict:
    """`steps` GRPO steps of TRL on the HF model in hf_dir, `len(prompts) // steps` prompts a step in order, `group` samples each,
    trained `batch_size` replies per pass; `score(prompt number, reply text) -> reward`. Returns per-step times, sampled tokens and rewards."""
    per_step = len(prompts) // steps
    accumulation = per_step * group // batch_size
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.config.final_logit_softcapping = softcap or None
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"): p.requires_grad_(False)  # our RMSNorms have no weight: train the same parameters
    sampled, rewards = [], []

    def reward(prompts, completions, completion_ids, index, **kwargs):
        sampled.append(sum(len(c) for c in completion_ids))
        out = [score(i, c[0]["content"]) for i, c in zip(index, completions)]
        rewards.append(sum(out) / len(out))
        return out

    dataset = Dataset.from_dict({"prompt": prompts, "index": list(range(len(prompts)))})
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(**dict(output_dir=out, per_device_train_batch_size=batch_size, num_generations=group,
                                 gradient_accumulation_steps=accumulation, steps_per_generation=accumulation,  # one generation of
                                 num_iterations=1, max_steps=steps,  # per_step × group replies a step, trained batch_size at a time
                                 max_completion_length=max_tokens, temperature=1.0, top_k=50, top_p=1.0, beta=0.0,
                                 scale_rewards="none", loss_type="dapo", learning_rate=lr, lr_scheduler_type="constant",
                                 warmup_steps=0, bf16=False, fp16=False, activation_checkpointing=False, use_cpu=True,
                                 shuffle_dataset=False, dataloader_num_workers=0, dataloader_pin_memory=False,
                                 save_strategy="no", logging_steps=1, report_to="none", disable_tqdm=True, log_completions=False) | config)
        tok = AutoTokenizer.from_pretrained(hf_dir)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tok, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    if len(timer.step_s) != steps: raise RuntimeError(f"TRL made {len(timer.step_s)} steps, not {steps}")
    return {"step_s": timer.step_s, "sampled": sampled, "rewards": rewards}


def ours_run(run, steps: int) -> dict:
    "chat_rl's own steps (Reinforcement.step: the engine's groups, the checker, the loss and the optimisers), without evaluations."
    from nanollama.train import run_loop
    loop, step_s = run.start(), []
    def timed(loop):
        t = time.perf_counter(); out = run.step(loop); step_s.append(time.perf_counter() - t); return out
    run_loop(loop, timed)
    history = [h for h in loop.history if "reward" in h]
    return {"step_s": step_s, "sampled": [h["length"] * run.cfg.prompts_per_step * run.cfg.num_samples for h in history],
            "rewards": [h["reward"] for h in history]}


def check_prompts(run, hf_dir, convs: list[dict]):
    "The export's chat template gives exactly the prompt tokens chat_rl's engine starts from."
    from nanollama.chat_eval import prompt_messages
    tok = AutoTokenizer.from_pretrained(hf_dir)
    for conv in convs:
        messages = prompt_messages(conv)
        ours = run.engine.fit_prompt(messages, run.cfg.max_tokens)[0]
        theirs = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        if list(theirs) != ours: raise RuntimeError(f"the chat template's prompt differs from ours for {messages}")


def summary(name: str, r: dict) -> tuple[float, float]:
    "Median seconds per step and sampled tokens/s (first step left out as warm-up), printed."
    s = statistics.median(r["step_s"][1:])
    tok_s = sum(r["sampled"][1:]) / sum(r["step_s"][1:])
    print(f"{name:<22} median step {s:6.2f}s, {tok_s:7,.0f} sampled tokens/s, {sum(r['sampled']) / len(r['sampled']):7,.0f} sampled tokens a step, "
          f"mean reward {sum(r['rewards']) / len(r['rewards']):.3f}")
    return s, tok_s


def main():
    from nanollama import chat_rl
    from nanollama.chat_eval import prompt_messages
    from nanollama.engine import Engine
    from nanollama.export_hf import write_hf

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-tag", default="sft", help="checkpoint in NANOLLAMA_BASE_DIR to start from")
    p.add_argument("--tasks", default="SpellingBee", help="chat_rl's --tasks")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="replies per forward/backward pass, both (a step accumulates over prompts x group)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-5, help="TRL's (AdamW) learning rate; ours is chat_rl's default")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    datasets.disable_progress_bars(); transformers.logging.disable_progress_bar()
    torch.set_num_threads(a.threads)

    cfg = chat_rl.RLConfig(model_tag=a.model_tag, output_tag="bench_rl", tasks=a.tasks, prompts_per_step=a.prompts, num_samples=a.group,
                           max_tokens=a.max_tokens, num_iterations=a.steps, device_batch_size=a.batch_size, warmdown_ratio=0.0,
                           device="cpu", dtype="float32", compile=False, save_every=0)
    run = chat_rl.Reinforcement(cfg)
    convs = [(run.tasks[k], run.tasks[k][i]) for s in range(a.steps) for _, k, i in run.step_prompts(s)]  # what ours samples, in order
    model = run.load()[0]
    run.engine = Engine(model, run.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            hf_dir = write_hf(model, run.tokenizer, os.path.join(tmp, "hf"))
        check_prompts(run, hf_dir, [c for _, c in convs])
        trl = trl_run(hf_dir, [prompt_messages(c) for _, c in convs], lambda i, text: convs[i][0].score(convs[i][1], text),
                      a.group, a.max_tokens, a.steps, a.batch_size, a.lr, a.threads, softcap=model.config.softcap)
    ours = ours_run(run, a.steps)
    if a.prompts * a.group % a.batch_size: raise SystemExit(f"--batch-size {a.batch_size} must divide prompts x group = {a.prompts * a.group}")
    print(f"{a.steps} steps of {a.prompts} prompts x {a.group} samples of at most {a.max_tokens} tokens, {a.batch_size} per pass, {a.tasks}, float32, "
          f"{torch.get_num_threads()} threads (first step left out as warm-up)")
    ours_s, ours_tok = summary("ours (chat_rl)", ours)
    trl_s, trl_tok = summary("TRL GRPOTrainer", trl)
    print(f"ratio: {trl_s / ours_s:.2f}x faster per step, {ours_tok / trl_tok:.2f}x sampled tokens/s")


if __name__ == "__main__":
    main()
