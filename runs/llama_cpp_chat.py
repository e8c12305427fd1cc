"""llama.cpp answers chat prompts with an exported GGUF file, and nanollama answers them with the checkpoint it came
from; both greedy. The replies should be identical: the export carries the weights, the tokenizer and the chat template.
  python runs/llama_cpp_chat.py --model-tag=rl --gguf=rl.gguf [--max-tokens=48] ["a question" ...]
Exits with 1 if a reply differs (a broken export), with one line naming the problem if a file is missing."""
import argparse, sys
from pathlib import Path

import torch

from nanollama.checkpoint import load_model, tokenizer_file
from nanollama.tokenizer import get_tokenizer

QUESTIONS = ["Who are you?", "Hi! How are you today?"]


def ours(model, tok, question: str, max_tokens: int) -> tuple[str, int]:
    "nanollama's greedy reply, up to its <|eot_id|> (tool calls stay as text: llama.cpp does not run them), and its token limit."
    ids = tok.render_for_completion([{"role": "user", "content": question}])
    n = min(max_tokens, model.config.max_seq_len - len(ids))  # llama.cpp stops where the context ends, too
    out = model.generate(torch.tensor([ids]), n)[0, len(ids):].tolist()
    return tok.decode(out[:out.index(tok.eot_id)] if tok.eot_id in out else out), n


def theirs(llm, question: str, max_tokens: int) -> str:
    "llama.cpp's greedy reply, formatted with the chat template stored in the file."
    r = llm.create_chat_completion([{"role": "user", "content": question}], temperature=0.0, max_tokens=max_tokens, repeat_penalty=1.0)
    return r["choices"][0]["message"]["content"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-tag", default="rl"); p.add_argument("--gguf", required=True)
    p.add_argument("--max-tokens", type=int, default=48); p.add_argument("questions", nargs="*", default=QUESTIONS)
    a = p.parse_args()
    if not Path(a.gguf).is_file(): sys.exit(f"error: {a.gguf} not found (python -m nanollama.export_gguf --output={a.gguf})")
    try: from llama_cpp import Llama as LlamaCpp
    except ImportError: sys.exit("error: llama-cpp-python is not installed: bash runs/install_llama_cpp.sh")
    try: model, tok = load_model(a.model_tag)[0], get_tokenizer(tokenizer_file(a.model_tag))
    except (FileNotFoundError, ValueError) as e: sys.exit(f"error: {e}")
    llm = LlamaCpp(model_path=a.gguf, n_ctx=model.config.max_seq_len, verbose=False)
    same = 0
    for q in a.questions:
        mine, n = ours(model, tok, q, a.max_tokens)
        cpp = theirs(llm, q, n)
        same += mine == cpp
        print(f"user: {q}\n  llama.cpp: {cpp!r}\n  nanollama: {'the same' if mine == cpp else repr(mine)}")
    llm.close()
    print(f"llama.cpp and nanollama gave the same greedy reply to {same} of {len(a.questions)} prompts")
    if same < len(a.questions): sys.exit(1)


if __name__ == "__main__": main()
