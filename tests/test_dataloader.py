"""`nanollama.dataloader`: ranks are disjoint and together cover the stream, documents start with BOS, batches are
deterministic for a seed, a loader resumed from its `state_dict` continues with exactly the batches an uninterrupted
one gives, and the measured fraction of personality tokens matches the requested ratio."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
from nanollama.dataloader import DataLoader, personality_tokens
from nanollama.dataset import embedded_text, iter_docs, pretokenize
from nanollama.tasks import PERSONALITY_DIR, load_conversations
from nanollama.tokenizer import Tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "webtext"
PERSONALITY_BASE = 50_000  # synthetic personality tokens are >= this, pretraining tokens below it


@pytest.fixture
def positions(tmp_path):
    "Synthetic train shards whose tokens are their own positions in the stream: 3 shards, 3601 tokens, 180 rows of T=20."
    stream = np.arange(3601, dtype=np.uint16)
    for i, part in enumerate(np.split(stream, [1000, 2500])): np.save(tmp_path / f"train_{i:05d}.npy", part)
    return tmp_path


def targets(loader, steps): return torch.cat([next(loader)[1].flatten() for _ in range(steps)]).tolist()


@pytest.mark.parametrize("world, B", [(1, 4), (2, 3), (3, 4), (4, 5)])
def test_ranks_disjoint_and_covering(positions, world, B):
    "One epoch over all ranks: every position is a target exactly once, and no two ranks share a token."
    steps = 180 // (world * B)
    seen = [targets(DataLoader(positions, B, 20, rank=r, world=world, seed=7), steps) for r in range(world)]
    for r in range(world):
        for q in range(r):
            assert not set(seen[r]) & set(seen[q]), f"ranks {q} and {r} overlap"
    everything = sorted(t for s in seen for t in s)
    assert everything == list(range(1, 180 * 20 + 1)), "together the ranks cover the stream, each target once"


def test_ranks_share_no_personality_rows(positions):
    personality = np.arange(PERSONALITY_BASE, PERSONALITY_BASE + 2001)  # 100 rows of T=20
    seen = [targets(DataLoader(positions, 5, 20, rank=r, world=2, personality=personality, personality_ratio=0.5), 8) for r in range(2)]
    mine = [{t for t in s if t >= PERSONALITY_BASE} for s in seen]
    assert not mine[0] & mine[1] and len(mine[0] | mine[1]) == 40 * 20  # the global stream's 40 personality rows, once each


def test_batches(positions):
    x, y = next(DataLoader(positions, 4, 20, seed=1))
    assert x.shape == y.shape == (4, 20) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x)), "targets are the next tokens"
    assert x.is_contiguous() and y.is_contiguous()
    x2, _ = next(DataLoader(positions, 4, 20, seed=1))
    x3, _ = next(DataLoader(positions, 4, 20, seed=2))
    assert torch.equal(x, x2) and not torch.equal(x, x3), "deterministic for a seed"
    assert next(DataLoader(positions, 2, 20, device="meta"))[0].device.type == "meta"


def test_documents_start_with_bos(tmp_path):
    "Real shards: an unshuffled epoch, rows stitched back together, is exactly BOS + document, BOS + document, ..."
    tok = Tokenizer.train([embedded_text("val")], vocab_size=400)
    pretokenize(str(FIXTURE), tok, "train", tmp_path, docs_per_shard=5, progress=False)
    loader = DataLoader(tmp_path, 1, 32, shuffle=False)
    rows = [torch.cat([x, y[:, -1:]], 1)[0] for x, y in (next(loader) for _ in range(loader.rows.n_rows))]
    stream = torch.cat([rows[0]] + [r[1:] for r in rows[1:]]).tolist()
    expected = [i for d in iter_docs(str(FIXTURE), "train") for i in tok.encode(d, bos=True)]
    assert stream == expected[:len(stream)] and len(expected) - len(stream) <= 32


@pytest.mark.parametrize("world, rank", [(1, 0), (3, 2)])
def test_resume_is_exact(positions, world, rank):
    personality = np.arange(PERSONALITY_BASE, PERSONALITY_BASE + 333)
    make = lambda: DataLoader(positions, 3, 20, rank=rank, world=world, seed=11, personality=personality, personality_ratio=0.2)
    uninterrupted = make()
    for _ in range(17): next(uninterrupted)  # crosses an epoch boundary of the personality stream
    state = uninterrupted.state_dict()
    expected = [torch.cat(next(uninterrupted)) for _ in range(25)]  # crosses the main stream's epoch too
    path = positions / "ckpt.pt"
    torch.save({"loader": state}, path)
    resumed = make()
    resumed.load_state_dict(torch.load(path, weights_only=True)["loader"])
    assert all(torch.equal(e, torch.cat(next(resumed))) for e in expected)


def test_resume_refuses_a_different_loader(positions):
    loader = DataLoader(positions, 3, 20, seed=1)
    next(loader)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="T=20"): DataLoader(positions, 3, 10, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="the 3 rows read by 1 ranks do not split evenly across 2"):
        DataLoader(positions, 3, 20, seed=1, world=2).load_state_dict(state)
    DataLoader(positions, 6, 20, seed=1).load_state_dict(state)  # a different batch size is fine: the state counts rows
    three = DataLoader(positions, 1, 20, seed=1, rank=2, world=3)
    three.load_state_dict(state)  # 3 ranks share the global stream from row 3 on: this one's next row is row 3 + 2
    assert torch.equal(next(three)[0][0], torch.from_numpy(loader.rows[5][:-1].astype("int64")))


@pytest.mark.parametrize("ratio", [0.2, 0.05, 0.33, 0.5])
@pytest.mark.parametrize("world", [1, 2])
def test_personality_fraction(positions, ratio, world):
    "Measured by token identity: the fraction of target tokens that come from the personality stream."
    personality = np.arange(PERSONALITY_BASE, PERSONALITY_BASE + 1000)
    loaders = [DataLoader(positions, 8, 20, rank=r, world=world, seed=3, personality=personality, personality_ratio=ratio)
               for r in range(world)]
    y = torch.stack([torch.tensor([targets(loader, 1) for _ in range(50)]).view(50, 8, 20) for loader in loaders], 2)
    assert ((y < 3601) | (y >= PERSONALITY_BASE)).all(), "rows are whole rows of one stream or the other"
    is_personality = (y >= PERSONALITY_BASE).all(-1).flatten()  # in global row order: step, row, rank
    rows = torch.arange(1, len(is_personality) + 1)
    assert ((is_personality.cumsum(0) - ratio * rows).abs() < 1).all(), "every prefix of the global stream holds the ratio, ±1 row"
    fraction = (y >= PERSONALITY_BASE).float().mean().item()
    assert abs(fraction - ratio) <= 0.02, fraction


@pytest.mark.parametrize("world", [2, 4])
def test_global_batch_independent_of_world_size(positions, world):
    "World W with batch B sees, step by step, exactly the rows of one process with batch B·W (personality included)."
    personality = np.arange(PERSONALITY_BASE, PERSONALITY_BASE + 777)
    make = lambda B, r, w: DataLoader(positions, B, 20, rank=r, world=w, seed=9, personality=personality, personality_ratio=0.2)
    one, many = make(2 * world, 0, 1), [make(2, r, world) for r in range(world)]
    for _ in range(6):
        rows_one = sorted(map(tuple, torch.cat(next(one)[1:]).tolist()))
        rows_many = sorted(map(tuple, torch.cat([next(l)[1] for l in many]).tolist()))
        assert rows_one == rows_many


def test_no_personality_by_default(positions):
    assert max(targets(DataLoader(positions, 8, 20), 20)) < 3601
    with pytest.raises(ValueError, match="needs personality tokens"): DataLoader(positions, 8, 20, personality_ratio=0.2)
    with pytest.raises(ValueError, match="personality_ratio"): DataLoader(positions, 8, 20, personality=np.arange(5), personality_ratio=1.0)
    with pytest.raises(ValueError, match="rank"): DataLoader(positions, 8, 20, rank=2, world=2)
    with pytest.raises(FileNotFoundError, match="no val token shards"): DataLoader(positions, 8, 20, split="val")


def test_shipped_personality():
    convs = load_conversations()
    assert len(convs) >= 40 and sorted(p.name for p in PERSONALITY_DIR.iterdir()) == ["capabilities.jsonl", "identity.jsonl"]
    assert all(c[-1]["role"] == "assistant" for c in convs)
    assert sum("nanollama" in c[-1]["content"] for c in convs) >= 15
    tok = Tokenizer.train([embedded_text("val")], vocab_size=400)
    ids = personality_tokens(convs, tok)
    assert ids[0] == tok.bos_id and np.count_nonzero(ids == tok.bos_id) == len(convs), "one BOS per conversation"
