"""Supervised fine-tuning speed: TRL's `SFTTrainer` on the same packed rows as nanollama's chat_sft, float32 on the CPU.

    NANOLLAMA_BASE_DIR=... NANOLLAMA_DATA=../shared/data python runs/bench_sft.py [--model-tag base] [--batch-size 16] [--steps 10]

`trl_run` fine-tunes the Hugging Face export of our weights (nanollama.export_hf) with TRL's `SFTTrainer` on rows that
are already packed: each row holds several whole conversations and padding, L = seq_len + 1 tokens, and a mask says
which tokens are scored (assistant content; never prompt or padding). It reports the time of each optimiser step
(forward, backward, clipping, AdamW), tokens/s (batch x (L - 1) positions per step, padding included, first step left
out as warm-up) and the loss of each step, the mean over the batch's scored tokens.

How the rows reach TRL unchanged: a pre-tokenized dataset (an `input_ids` column) skips TRL's chat template and
tokenization, so nothing is added (no BOS, no EOS) and nothing is packed again (`packing=False`); its `assistant_masks`
column is folded into `labels` (-100 where the mask is 0) and dropped. (`assistant_only_loss=True` is for a
`messages` dataset: TRL refuses it on a pre-tokenized one; the mask column alone is what applies.) The collator is
checked on every batch: exactly our rows, in order, and as many scored targets as `assistant_mask[:, 1:].sum()`.
TRL's fused LM head shifts the labels (position t predicts labels[t + 1]) and divides the batch's summed loss by
that count, as ours does. TRL's own defaults that would make the comparison unfair are turned off: bf16 (TRL turns it
on) and gradient checkpointing (TRL turns it on). The RMSNorm weights of the export, all ones because our norms have
none, are frozen so both train the same parameters; our model's logit soft-cap is given to TRL's fused LM head
(`final_logit_softcapping`), which applies it like ours. Left as TRL has them: AdamW (torch's fused one, betas 0.9 and
0.999, no weight decay) and gradient clipping at norm 1 (keyword arguments override any SFTConfig field). The HF model
runs all L tokens of a row, the last one predicting nothing; ours runs L - 1: both count L - 1 positions.

Run as a script, it builds chat_sft's mixture and packed rows for the `--model-tag` checkpoint of NANOLLAMA_BASE_DIR,
exports that checkpoint to a temporary folder, and alternates rounds of chat_sft's own training steps and TRL's on
the same rows in the same order (both start from the same loss: checked), printing tokens/s of each, the ratio, and
the losses step by step. Ours trains with chat_sft's recipe (Muon + AdamW at its default learning rates), TRL with
AdamW at `--lr`: the losses compare the two recipes, the tokens/s the two implementations.
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
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer


class StepTimer(TrainerCallback):
    "Seconds of each optimiser step (forward, backward, clipping, optimiser), and between the ends of consecutive steps (the trainer's loop too)."
    def __init__(self): self.step_s, self.period_s, self.start, self.last_end = [], [], None, None

    def on_step_begin(self, args, state, control, **kwargs): self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.step_s.append(now - self.start)
        if self.last_end is not None: self.period_s.append(now - self.last_end)
        self.last_end = now


class CheckedCollator:
    "TRL's collator, checking that each batch is the next `batch_size` of our rows, with the same tokens scored."
    def __init__(self, collate, input_ids, assistant_mask, batch_size: int):
        self.collate, self.input_ids, self.assistant_mask, self.batch_size, self.n = collate, input_ids, assistant_mask, batch_size, 0

    def __call__(self, examples):
        batch = self.collate(examples)
        rows = slice(self.n * self.batch_size, (self.n + 1) * self.batch_size)
        if not torch.equal(batch["input_ids"], self.input_ids[rows]):
            raise RuntimeError(f"TRL's batch {self.n} is not rows {rows.start}..{rows.stop - 1} as given")
        scored, ours = (batch["labels"][:, 1:] != -100), self.assistant_mask[rows, 1:]
        if not torch.equal(scored, ours):
            raise RuntimeError(f"TRL's batch {self.n} scores {int(scored.sum())} targets, ours {int(ours.sum())} (or not the same ones)")
        if "attention_mask" in batch and not bool(batch["attention_mask"].all()):
            raise RuntimeError(f"TRL's batch {self.n} masks tokens out of attention; ours attends to every token of a row")
        self.n += 1
        return batch


def trl_run(hf_dir, input_ids, assistant_mask, batch_size: int, steps: int, lr: float, threads: int,
            softcap: float = 0.0, **config) -> dict:
    """Fine-tune the HF model in hf_dir with TRL's SFTTrainer on pre-packed rows; returns per-step times, tokens/s and losses.
    `softcap`: our model's final-logit cap (0: none); `config` overrides SFTConfig fields (e.g. `max_grad_norm`, `weight_decay`)."""
    n, L = input_ids.shape
    if assistant_mask.shape != input_ids.shape: raise ValueError(f"assistant_mask is {tuple(assistant_mask.shape)}, input_ids {tuple(input_ids.shape)}")
    if n < batch_size * steps: raise ValueError(f"{steps} steps of batch {batch_size} need {batch_size * steps} rows, got {n}")
    if steps < 2: raise ValueError("need at least 2 steps: the first one is a warm-up")
    input_ids, assistant_mask = input_ids[:batch_size * steps].long(), assistant_mask[:batch_size * steps].bool()
    if not assistant_mask[:, 1:].any(dim=1).all():
        raise ValueError("a row has no scored token: TRL would drop it from the dataset, and the batches would shift")
    torch.set_num_threads(threads)

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.config.final_logit_softcapping = softcap or None  # read by TRL's fused LM head when the trainer is built
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"): p.requires_grad_(False)  # our RMSNorms have no weight: train the same parameters
    dataset = Dataset.from_dict({"input_ids": input_ids.tolist(), "assistant_masks": assistant_mask.int().tolist()})
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(**dict(output_dir=out, per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, max_steps=steps,
                                learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch_fused",
                                bf16=False, fp16=False, activation_checkpointing=False, use_cpu=True,
                                packing=False, padding_free=False, max_length=L, shuffle_dataset=False, train_sampling_strategy="sequential",
                                dataloader_num_workers=0, dataloader_pin_memory=False, eval_strategy="no", save_strategy="no",
                                logging_steps=1, report_to="none", disable_tqdm=True) | config)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(hf_dir),
                             callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # the losses come back in the result
        trainer.data_collator = collator = CheckedCollator(trainer.data_collator, input_ids, assistant_mask, batch_size)
        trainer.train()
    if collator.n != steps: raise RuntimeError(f"TRL collated {collator.n} batches for {steps} steps")
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    tokens = batch_size * (L - 1)
    return {"step_s": timer.step_s, "tok_s": tokens / statistics.median(timer.step_s[1:]),
            "tok_s_loop": tokens / statistics.median(timer.period_s), "losses": losses, "threads": torch.get_num_threads()}


def ours_run(run, steps: int) -> dict:
    "chat_sft's own training steps (FineTuning.step: its loader, loss and optimisers), without the evaluations in between."
    from nanollama.train import run_loop
    loop = run.start()
    run_loop(loop, run.step)
    step_s = [run.rows_per_step * run.seq_len / h["tok_s"] for h in loop.history]
    return {"step_s": step_s, "tok_s": run.rows_per_step * run.seq_len / statistics.median(step_s[1:]), "losses": [h["loss"] for h in loop.history]}


def main():
    from nanollama import chat_sft
    from nanollama.export_hf import write_hf
    from nanollama.sft_data import SFTLoader

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-tag", default="base", help="checkpoint in NANOLLAMA_BASE_DIR to fine-tune")
    p.add_argument("--mixture", default="identity=2,spellingbee=1,arithmetic=1,smoltalk=0.05", help="chat_sft's --mixture")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4, help="TRL's (AdamW) learning rate; ours is chat_sft's default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of ours and TRL's; the best of each is reported")
    a = p.parse_args()
    datasets.disable_progress_bars(); transformers.logging.disable_progress_bar()
    torch.set_num_threads(a.threads)

    cfg = chat_sft.SFTConfig(model_tag=a.model_tag, output_tag="bench_sft", mixture=a.mixture, device_batch_size=a.batch_size,
                    num_iterations=a.steps, warmdown_ratio=0.0, device="cpu", dtype="float32", compile=False)
    run = chat_sft.FineTuning(cfg)
    rows = torch.from_numpy(SFTLoader(run.data.train, a.batch_size, seed=cfg.seed).take(a.batch_size * a.steps))
    input_ids, assistant_mask = run.data.train.ids[rows].long(), run.data.train.mask[rows]  # the rows ours trains on, in order
    model = run.load()[0]
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():  # "transformers has no soft-cap": TRL's fused LM head applies it, see trl_run
            warnings.simplefilter("ignore", UserWarning)
            hf_dir = write_hf(model, run.tokenizer, os.path.join(tmp, "hf"))
        results = {"ours": [], "TRL": []}
        for _ in range(a.rounds):
            results["ours"].append(ours_run(run, a.steps))
            results["TRL"].append(trl_run(hf_dir, input_ids, assistant_mask, a.batch_size, a.steps, a.lr, a.threads, softcap=model.config.softcap))
    ours, trl = (max(results[k], key=lambda r: r["tok_s"]) for k in ("ours", "TRL"))
    assert abs(ours["losses"][0] - trl["losses"][0]) < 1e-4 * ours["losses"][0], "the two do not start from the same loss"
    print(f"{a.steps} steps of {a.batch_size} rows x {run.seq_len} positions ({a.batch_size * run.seq_len:,} tokens a step), "
          f"float32, {torch.get_num_threads()} threads, best of {a.rounds} alternating rounds (first step left out as warm-up)")
    print(f"ours (chat_sft: Muon + AdamW): {ours['tok_s']:,.0f} tokens/s, median step {statistics.median(ours['step_s'][1:]):.3f}s")
    print(f"TRL SFTTrainer (AdamW):        {trl['tok_s']:,.0f} tokens/s, median step {statistics.median(trl['step_s'][1:]):.3f}s")
    print(f"ratio: {ours['tok_s'] / trl['tok_s']:.2f}x")
    for name, r in (("ours", ours), ("TRL", trl)): print(f"{name:>4} losses: " + " ".join(f"{x:.4f}" for x in r["losses"]))
    print(f"loss after {a.steps * a.batch_size * run.seq_len:,} tokens: ours {ours['losses'][-1]:.4f}, TRL {trl['losses'][-1]:.4f} (lr {a.lr})")


if __name__ == "__main__":
    main()
