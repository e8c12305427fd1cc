"""Reinforcement learning's pieces on the model that memorised a tool call: the reply's sampled tokens are the targets
and the calculator's are not, a checker that raises scores 0, equal rewards give no gradient, and the KL penalty
is zero against an identical reference and positive against a different one."""
import copy

import torch

from conftest import CALC_CHAT
from nanollama.engine import load_engine
from nanollama.rl import group_advantages, policy_batch, policy_loss, sample_group, score_safely
from nanollama.synthetic import SpellingBee

CONV = {"messages": CALC_CHAT, "kind": "count", "word": "strawberry", "answer": "3"}


def test_group_rewards_and_targets(chat_base_dir, monkeypatch):
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(chat_base_dir))
    engine = load_engine("calc", device="cpu")
    tok = engine.tokenizer
    group = sample_group(engine, SpellingBee("test", 1), CONV, 3, temperature=0)
    assert [r["reward"] for r in group] == [1.0, 1.0, 1.0] and all(r["error"] is None for r in group), [r["text"] for r in group]
    r = group[0]
    assert r["prompt"] + r["tokens"] == tok.render_conversation(CALC_CHAT)[0]  # the whole conversation, tool turn included
    x, y, a = policy_batch(group, group_advantages([1.0, 1.0, 1.0]), tok.eot_id)
    trained = [int(t) for t in y[0] if t != -1]
    rendered, mask = tok.render_conversation(CALC_CHAT)
    assert trained == [t for t, m in zip(rendered, mask) if m]  # exactly what SFT trains on: not the prompt, not the tool's output
    assert torch.equal(x[0], torch.tensor(rendered[:-1]))


def test_checker_that_raises_scores_zero():
    class Broken:
        def score(self, conv, text): raise KeyError("answer")
    assert score_safely(Broken(), {}, "3") == (0.0, "KeyError: 'answer'")


def test_loss_gradients_and_kl(chat_base_dir, monkeypatch):
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(chat_base_dir))
    engine = load_engine("calc", device="cpu")
    model, tok = engine.model, engine.tokenizer
    group = sample_group(engine, SpellingBee("test", 1), CONV, 4, max_tokens=20, temperature=1.0, seed=0)
    x, y, _ = policy_batch(group, torch.zeros(4), tok.eot_id)
    loss, n, kl = policy_loss(model, x, y, torch.zeros(4), copy.deepcopy(model), kl_coef=0.5)
    loss.backward()
    assert n == int((y != -1).sum()) > 0 and kl < 1e-6
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # equal rewards: nothing to learn
    other = copy.deepcopy(model)
    with torch.no_grad(): other.lm_head.weight.mul_(1.5)
    assert policy_loss(model, x, y, torch.zeros(4), other, kl_coef=0.5)[2] > 0
    torch.testing.assert_close(group_advantages([0.0, 1.0, 1.0, 0.0], by_std=True), torch.tensor([-1.0, 1.0, 1.0, -1.0]), atol=1e-5, rtol=0)
