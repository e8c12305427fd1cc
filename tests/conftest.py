"""Shared fixtures for the export tests: a small tokenizer and small random-weight models, saved as checkpoints the
usual way (`save_checkpoint`) under a temporary base directory, one model tag per variant."""
import os, subprocess, sys
from pathlib import Path

import pytest
import torch

from nanollama.checkpoint import save_checkpoint
from nanollama.dataset import embedded_text
from nanollama.llama import Llama, LlamaConfig
from nanollama.tokenizer import Tokenizer

# model tag: (qk_norm, softcap). Without QK-norm a model exports as llama.cpp's/HF's `llama`, with it as `qwen3`.
VARIANTS = {"llama": (False, 0.0), "qwen3": (True, 0.0), "llama-capped": (False, 15.0), "qwen3-capped": (True, 15.0)}


@pytest.fixture(scope="session")
def export_base_dir(tmp_path_factory):
    "A base directory holding `tokenizer/tokenizer.model` and `checkpoints/<tag>/` for every variant."
    return tmp_path_factory.mktemp("nanollama")


@pytest.fixture(scope="session")
def export_tok(export_base_dir):
    "A 768-token tokenizer trained on a megabyte of the embedded Shakespeare, saved under the base directory."
    tok = Tokenizer.train([embedded_text("train")[:1_000_000]], vocab_size=768)
    tok.save(export_base_dir / "tokenizer" / "tokenizer.model")
    return tok


def random_model(qk_norm: bool, softcap: float, vocab_size: int, seed: int = 0) -> Llama:
    "A small model with random weights everywhere (the default init zeroes output projections), peaked predictions."
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(vocab_size=vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=256,
                              qk_norm=qk_norm, softcap=softcap)).eval()
    with torch.no_grad():
        for p in model.parameters(): p.normal_(0, 0.1)
        model.embed_tokens.weight.normal_(0, 1)
        model.lm_head.weight.normal_(0, 0.8 if softcap else 0.3)  # capped: logits large enough for the cap to matter
    return model


@pytest.fixture(scope="session")
def export_models(export_base_dir, export_tok):
    "Model tag -> the random model saved under it (step 1, with its tokenizer)."
    models = {}
    for i, (tag, (qk_norm, softcap)) in enumerate(VARIANTS.items()):
        models[tag] = random_model(qk_norm, softcap, export_tok.vocab_size, seed=i)
        save_checkpoint(tag, 1, models[tag], tokenizer_file=export_base_dir / "tokenizer" / "tokenizer.model",
                        root=export_base_dir / "checkpoints")
    return models


# --- Chat tests (engine, chat_cli, chat_web): a tokenizer and two small trained models under a temporary base dir. ---
# "html" memorised one reply that is full of HTML, to prove the page shows model output as text; "babble" was trained
# on plain text only, so it never says <|eot_id|> and greedy replies run to the token limit (for the long-reply tests).
# "calc" memorised one conversation with a tool call, so it makes the call and finishes once the engine forces the result.
PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> & <b>not bold</b>'
CALC_QUESTION = "How many r are in strawberry?"
CALC_CHAT = [{"role": "user", "content": CALC_QUESTION},
             {"role": "assistant", "content": "Counting:", "tool_call": '"strawberry".count("r")'},
             {"role": "ipython", "content": "3"}, {"role": "assistant", "content": "There are 3."}]


def _train(model, x, y, steps, lr):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small is fastest on one thread, and immune to a busy machine
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        for _ in range(steps):
            loss = model(x, targets=y)
            opt.zero_grad(); loss.backward(); opt.step()
    finally: torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def chat_base_dir(tmp_path_factory):
    "A NANOLLAMA_BASE_DIR with the model tags `html`, `babble` and `calc` (see above), each saved with its tokenizer."
    root = tmp_path_factory.mktemp("nanollama_chat")
    tok = Tokenizer.train([embedded_text("train")[:200_000]], vocab_size=512)
    tok.save(root / "tok.model")
    torch.manual_seed(0)
    small = lambda: Llama(LlamaConfig(vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=256))
    ids = torch.tensor([tok.render_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": PAYLOAD}])[0]])
    chat = _train(small(), ids[:, :-1], ids[:, 1:], steps=150, lr=1e-2)
    text = torch.tensor(tok.encode(embedded_text("train")[:20_000]))[:8 * 65].view(8, 65)
    babble = Llama(LlamaConfig(vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=2048))
    _train(babble, text[:, :-1], text[:, 1:], steps=60, lr=1e-2)
    ids = torch.tensor([tok.render_conversation(CALC_CHAT)[0]])
    calc = _train(small(), ids[:, :-1], ids[:, 1:], steps=150, lr=1e-2)
    for tag, model in (("html", chat), ("babble", babble), ("calc", calc)):
        save_checkpoint(tag, 1, model, tokenizer_file=root / "tok.model", root=root / "checkpoints")
    return root


# The training stages' tests (chat_sft, chat_rl) run the commands in subprocesses on a tiny base model.
FIXTURES = Path(__file__).parent / "fixtures"


def stage_env(base_dir, **extra) -> dict:
    "The environment of a stage's command: its base directory, one thread, offline, the fixtures' data."
    return {**os.environ, "NANOLLAMA_BASE_DIR": str(base_dir), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "NANOLLAMA_DATA": str(FIXTURES / "data"), **extra}


def run_stage(base_dir, target, *args, torchrun=0, check=True, **extra):
    "Run a module (`nanollama.x`) or a script (`x.py`), under torchrun with `torchrun` processes; `extra`: environment variables."
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable]
    what = [str(target)] if str(target).endswith(".py") else ["-m", target]
    r = subprocess.run([*launcher, *what, *args], env=stage_env(base_dir, **extra), capture_output=True, text=True, timeout=600)
    if check: assert r.returncode == 0, r.stdout + r.stderr
    return r


def tiny_chat_base(d):
    "Into base directory `d`: a tokenizer with the tool tokens that has seen SpellingBee's conversations, and a tiny pretrained `base`."
    from nanollama.synthetic import SpellingBee
    chats = [m["content"] for c in SpellingBee("train", 50) for m in c["messages"]]
    Tokenizer.train([embedded_text("train")[:100_000], *chats], vocab_size=512).save(d / "tokenizer" / "tokenizer.model")
    run_stage(d, "nanollama.base_train", "--depth=1", "--seq-len=64", "--device-batch-size=8", "--total-batch-size=512",
              "--num-iterations=3", "--eval-every=0", "--sample-every=0", "--eval-tokens=1024", "--save-every=0")
    return d
