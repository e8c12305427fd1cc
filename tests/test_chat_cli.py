"""`python -m nanollama.chat_cli` end to end, as a user runs it: one-shot `-p`, clean errors, and an interactive session
in a pseudo-terminal (streaming, /clear, Ctrl-C while the model writes and at the prompt, Ctrl-D)."""
import os
import signal
import subprocess
import sys

import pexpect
import pytest

from conftest import CALC_QUESTION, PAYLOAD


@pytest.fixture(scope="module")
def env(chat_base_dir):
    return {**os.environ, "NANOLLAMA_BASE_DIR": str(chat_base_dir), "PYTHONUNBUFFERED": "1"}


def cli(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "nanollama.chat_cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_one_shot(env):
    r = cli(env, "--model-tag", "html", "-p", "hi", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == PAYLOAD + "\n"
    r = cli(env, "--model-tag", "babble", "--prompt", "hi", "--max-tokens", "7", "--seed", "3")
    assert r.returncode == 0 and r.stdout == cli(env, "--model-tag", "babble", "-p", "hi", "--max-tokens", "7", "--seed", "3").stdout


def test_one_shot_with_a_tool_call(env):
    "The calc model calls the calculator; the reply shows the call and its result inline."
    r = cli(env, "--model-tag", "calc", "-p", CALC_QUESTION, "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'Counting: [python: "strawberry".count("r") → 3] There are 3.\n'


def test_one_shot_compiled(env):
    "--compile compiles the decode step before answering, and answers what the eager engine answers, tool call included."
    r = cli(env, "--model-tag", "calc", "-p", CALC_QUESTION, "--temperature", "0", "--compile", timeout=300)
    assert r.returncode == 0 and r.stdout == 'Counting: [python: "strawberry".count("r") → 3] There are 3.\n', r.stderr
    assert "compiling the decode step" in r.stderr


def test_compile_without_a_compiler_is_one_line(env, tmp_path):
    "--compile on a machine with no working C++ compiler: a one-line error before the first prompt, not a traceback."
    broken = {**env, "CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}  # an empty cache: nothing to reuse
    r = cli(broken, "--model-tag", "html", "-p", "hi", "--compile", timeout=300)
    assert r.returncode == 1 and "could not compile the decode step" in r.stderr and "C++ compiler" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_errors_are_one_line(env):
    for args, msg in [(["--model-tag", "nope", "-p", "hi"], "no checkpoint for model tag 'nope'"),
                      (["--model-tag", "html", "-p", "hi", "--top-p", "0"], "--top-p")]:
        r = cli(env, *args)
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def default_sigint():
    "Ctrl-C reaches the child as KeyboardInterrupt even when the tests run in a background job, which ignores SIGINT."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interactive_session(env):
    child = pexpect.spawn(sys.executable, ["-m", "nanollama.chat_cli", "--model-tag", "html", "--temperature", "0"],
                          env=env, preexec_fn=default_sigint, encoding="utf-8", timeout=60, dimensions=(40, 400))
    try:
        child.expect_exact("User: ")
        child.sendline("hi")
        child.expect_exact("Assistant: " + PAYLOAD)
        child.expect_exact("User: ")
        child.sendline("hi again")  # the conversation goes on: a second turn
        child.expect_exact("Assistant: ")
        child.expect_exact("User: ")
        child.sendline("/clear")
        child.expect_exact("(new conversation)")
        child.expect_exact("User: ")
        child.sendintr()  # Ctrl-C at the prompt: a new prompt, not an exit
        child.expect_exact("^C")
        child.expect_exact("User: ")
        child.sendline("hi")
        child.expect_exact("Assistant: " + PAYLOAD)  # after /clear, the first-turn answer again
        child.expect_exact("User: ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally: child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_a_reply(env):
    child = pexpect.spawn(sys.executable, ["-m", "nanollama.chat_cli", "--model-tag", "babble", "--temperature", "0",
                                           "--max-tokens", "2000"], env=env, preexec_fn=default_sigint, encoding="utf-8", timeout=60)
    try:
        child.expect_exact("User: ")
        child.sendline("Tell me a long story.")
        child.expect_exact("Assistant: ")
        child.expect(r"\w{3}")  # it is writing
        child.sendintr()
        child.expect_exact("[stopped]")
        child.expect_exact("User: ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally: child.close()
    assert child.exitstatus == 0
