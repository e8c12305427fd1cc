"""`nanollama.dataset` end to end, offline: a tiny parquet set in FineWeb-Edu's hub schema (`tests/fixtures/webtext`,
made by `make_webtext.py` there) read through `datasets`' parquet path, the hub path with `load_dataset` stubbed,
pre-tokenization (BOS per document, compact dtype, resumable) and the `python -m nanollama.dataset` CLI."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
from nanollama import dataset
from nanollama.dataset import (SHAKESPEARE_VAL, count_docs, embedded_docs, embedded_text, iter_docs, parquet_split,
                               pretokenize, shard_paths, token_dtype, tokens_dir)
from nanollama.tokenizer import Tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "webtext"
SHARDS = sorted(FIXTURE.glob("shard_*.parquet"))


def texts_of(files): return [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    tok = Tokenizer.train([embedded_text("val")], vocab_size=400)
    tok.save(tmp_path_factory.mktemp("tok") / "tokenizer.model")
    return tok


def test_fixture_is_the_hub_schema():
    assert len(SHARDS) == 3
    for f in SHARDS:
        assert pq.read_schema(f).names == ["text", "id", "dump", "url", "file_path", "language", "language_score",
                                           "token_count", "score", "int_score"]
        assert f.stat().st_size < 8000, "fixtures stay a few KB"


def test_parquet_through_datasets_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert list(iter_docs(str(FIXTURE), "train")) == texts_of(SHARDS[:-1])
    assert list(iter_docs(str(FIXTURE), "val")) == texts_of(SHARDS[-1:])  # the last shard is validation
    assert list(iter_docs(f"{FIXTURE}/shard_*.parquet", "val")) == texts_of(SHARDS[-1:])
    assert count_docs(str(FIXTURE), "train") == 12 and count_docs(str(FIXTURE), "val") == 6


def test_parquet_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no parquet files"): list(iter_docs(str(tmp_path)))
    with pytest.raises(ValueError, match="need at least 2"): parquet_split(SHARDS[0])
    with pytest.raises(ValueError, match="unknown split"): list(iter_docs(str(FIXTURE), "test"))
    t = pq.read_table(SHARDS[0]).rename_columns(["content"] + pq.read_schema(SHARDS[0]).names[1:])
    for i in range(2): pq.write_table(t, tmp_path / f"shard_{i}.parquet")
    with pytest.raises(ValueError, match="no `text` column"): list(iter_docs(str(tmp_path)))


def test_hub_path(monkeypatch):
    "The hub source streams FineWeb-Edu's train split; its first HUB_VAL_DOCS documents are the validation split."
    import datasets
    calls = []
    class FakeStream:
        column_names = ["text", "id", "url"]
        def iter(self, batch_size): return ({"text": [f"doc {i}" for i in range(j, min(j + batch_size, 700))]} for j in range(0, 700, batch_size))
    def fake_load_dataset(*args, **kwargs): calls.append((args, kwargs)); return FakeStream()
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(dataset, "HUB_VAL_DOCS", 300)
    val, train = list(iter_docs("fineweb-edu", "val")), list(iter_docs("fineweb-edu", "train", hub_config="sample-100BT"))
    assert val == [f"doc {i}" for i in range(300)] and train == [f"doc {i}" for i in range(300, 700)]
    assert calls[0] == (("HuggingFaceFW/fineweb-edu",), dict(name="sample-10BT", split="train", streaming=True))
    assert calls[1][1]["name"] == "sample-100BT"


def test_embedded_split():
    train, val = embedded_docs("train"), embedded_docs("val")
    assert len(train) == 39 and len(val) == len(SHAKESPEARE_VAL) == 3 and not set(train) & set(val)
    assert embedded_text("val").startswith("KING JOHN") and "MACBETH" not in embedded_text("train")
    with pytest.raises(ValueError, match="unknown split 'validation'"): embedded_text("validation")


def test_pretokenize_parquet(tok, tmp_path):
    out = pretokenize(str(FIXTURE), tok, "train", tmp_path, docs_per_shard=5, progress=False)
    paths = shard_paths(out, "train")
    assert [p.name for p in paths] == ["train_00000.npy", "train_00001.npy", "train_00002.npy"]
    stream = np.concatenate([np.load(p, mmap_mode="r") for p in paths])
    assert np.load(paths[0], mmap_mode="r").dtype == np.uint16 == token_dtype(tok.vocab_size)
    starts = np.flatnonzero(stream == tok.bos_id)
    docs = [tok.decode(d[1:].tolist()) for d in np.split(stream, starts[1:])]
    assert starts[0] == 0 and docs == texts_of(SHARDS[:-1]), "one BOS before each document, nothing lost"
    assert not list(tmp_path.glob(".*")), "no temporary files left"


def test_pretokenize_resumes(tok, tmp_path, monkeypatch):
    pretokenize(str(FIXTURE), tok, "train", tmp_path, docs_per_shard=5, max_docs=7, progress=False)
    assert [len(np.flatnonzero(np.load(p) == tok.bos_id)) for p in shard_paths(tmp_path)] == [5, 2]
    first = shard_paths(tmp_path)[0].stat().st_mtime_ns
    encoded = []
    real = tok.encode_batch
    monkeypatch.setattr(tok, "encode_batch", lambda texts, bos=False: encoded.extend(texts) or real(texts, bos))
    pretokenize(str(FIXTURE), tok, "train", tmp_path, docs_per_shard=5, progress=False)
    assert len(encoded) == 7, "the finished shard is skipped; the short last one is redone with its 5 docs, then 2 more"
    assert shard_paths(tmp_path)[0].stat().st_mtime_ns == first
    assert [len(np.flatnonzero(np.load(p) == tok.bos_id)) for p in shard_paths(tmp_path)] == [5, 5, 2]
    encoded.clear()
    pretokenize(str(FIXTURE), tok, "train", tmp_path, progress=False)
    assert encoded == [], "a complete run has nothing left to do; the shard size defaults to the directory's"
    with pytest.raises(ValueError, match="made with 5 documents per shard"):
        pretokenize(str(FIXTURE), tok, "train", tmp_path, docs_per_shard=4, progress=False)


def test_tokens_dir_depends_on_tokenizer(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLLAMA_BASE_DIR", str(tmp_path))
    other = Tokenizer.train([embedded_text("val")], vocab_size=450)
    assert tokens_dir(str(FIXTURE), tok).parent == tmp_path / "data" / "webtext"
    assert tokens_dir("shakespeare", tok) != tokens_dir("shakespeare", other)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nanollama.dataset", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=300)


def test_cli(tok, tmp_path):
    tok.save(tmp_path / "tok.model")
    r = run_cli("--source", str(FIXTURE), "--tokenizer", str(tmp_path / "tok.model"), "--out", str(tmp_path / "out"),
                "--docs-per-shard", "4", "--quiet")
    assert r.returncode == 0, r.stderr  # also: no Arrow abort (exit 134) at interpreter shutdown
    assert "in 3 shard(s)" in r.stdout.splitlines()[0] and "in 2 shard(s)" in r.stdout.splitlines()[1]
    assert len(shard_paths(tmp_path / "out", "train")) == 3 and len(shard_paths(tmp_path / "out", "val")) == 2
    r = run_cli("--source", str(FIXTURE), "--tokenizer", str(tmp_path / "tok.model"), "--out", str(tmp_path / "out"),
                "--docs-per-shard", "5", "--quiet")
    assert r.returncode == 1 and "--docs-per-shard 4" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_defaults(tok, tmp_path):
    "With no flags: the embedded corpus, the tokenizer where tok_train saves it, shards under the base dir."
    tok.save(tmp_path / "tokenizer" / "tokenizer.model")
    r = run_cli("--split", "val", "--quiet", env={"NANOLLAMA_BASE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    out = tmp_path / "data" / "shakespeare" / tokens_dir("shakespeare", tok).name
    assert [p.name for p in shard_paths(out, "val")] == ["val_00000.npy"] and str(out) in r.stdout


def test_cli_hub_offline(tok, tmp_path):
    "Offline, the hub source fails with a message, not a traceback."
    tok.save(tmp_path / "tokenizer" / "tokenizer.model")
    r = run_cli("--source", "fineweb-edu", "--max-shards", "1", "--quiet", env={"NANOLLAMA_BASE_DIR": str(tmp_path)})
    assert r.returncode == 1 and "--source fineweb-edu" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args, flag", [
    (["--source", "/no/such/dir"], "--source /no/such/dir"),
    (["--max-docs", "0"], "--max-docs"),
    (["--docs-per-shard", "-1"], "--docs-per-shard"),
    (["--split", "test"], "--split 'test'"),
    (["--tokenizer", "/no/such/tokenizer.model"], "--tokenizer"),
])
def test_cli_errors(args, flag, tmp_path):
    r = run_cli(*args, env={"NANOLLAMA_BASE_DIR": str(tmp_path)})
    assert r.returncode != 0 and flag in r.stderr and "Traceback" not in r.stderr, r.stderr
