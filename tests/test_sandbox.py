"""The HumanEval sandbox (`nanollama.benchmarks.run_python`) against hostile programs: each is contained, scored as a
failure (or passes harmlessly where nothing is harmed), ends within its time limit, and the evaluator keeps going.
Run both with the guards (the default) and with Linux namespaces alone (`guard=False`, where namespaces are available)
or the guards alone (`isolate=False`), so that every layer is seen to hold by itself."""
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nanollama.benchmarks import HumanEval, run_python

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SHARED = Path(__file__).parents[2] / "shared" / "data"
TIMEOUT = 2.0
HAS_NAMESPACES = sys.platform == "linux" and run_python("pass").isolated
needs_namespaces = pytest.mark.skipif(not HAS_NAMESPACES, reason="Linux namespaces are not available here")
# (guard, isolate): the full sandbox, the kernel's layers alone, the Python guards alone
LAYERS = [pytest.param(True, True, id="full"),
          pytest.param(False, True, id="namespaces-only", marks=needs_namespaces),
          pytest.param(True, False, id="guards-only")]


def run(code, **kw):
    "Run `code` in the sandbox and check it ended within the time limit (plus the time to start and clean up)."
    r = run_python(code, timeout=TIMEOUT, **kw)
    assert r.seconds < TIMEOUT + 1.5, f"took {r.seconds:.2f}s"
    return r


def last_line(r): return (r.stderr.strip().splitlines() or [""])[-1]


def test_ordinary_programs():
    assert run("assert 1 + 1 == 2").passed
    r = run("print('out'); import sys; print('err', file=sys.stderr); assert False")
    assert not r and r.returncode == 1 and r.stdout == "out\n" and "AssertionError" in r.stderr
    r = run("import sys; print(sys.flags.isolated, sys.flags.no_site, 'nanollama' in sys.modules, 'torch' in sys.modules)")
    assert r.stdout.split() == ["1", "1", "False", "False"]  # its own interpreter: nothing of ours is loaded
    assert run("open('scratch.txt', 'w').write('x'); import os; assert sorted(os.listdir('.')) == ['program.py', 'scratch.txt']")


@pytest.mark.parametrize("code", ["while True: pass", "import time; time.sleep(10**6)", "while True:\n    try: pass\n    except BaseException: pass"])
def test_stopped_at_the_time_limit(code):
    r = run(code)
    assert r.returncode is None and not r and TIMEOUT <= r.seconds


@pytest.mark.parametrize("guard, isolate", LAYERS)
def test_8gb_allocation(guard, isolate):
    r = run("x = bytearray(8 * 2**30)", guard=guard, isolate=isolate)
    assert not r and "MemoryError" in r.stderr


def test_exiting_early_is_not_passing():
    assert run("import sys; sys.exit(0)").returncode == 3
    assert not run("raise SystemExit")
    assert not run("import os; os._exit(0)")  # refused by the guards


def test_output_is_captured_and_truncated():
    r = run("print('x' * 100_000)", max_output=1000)
    assert r.passed and r.stdout == "x" * 1000
    r = run("while True: print('y' * 10**6)")  # past the file-size limit (16 MB): the write fails
    assert not r and "File too large" in r.stderr and len(r.stdout) == 10_000


@pytest.mark.parametrize("guard, isolate", LAYERS)
def test_fork_bomb(guard, isolate):
    if not guard and os.geteuid() == 0:
        pytest.skip("as root RLIMIT_NPROC is not enforced: only the guard stops a fork bomb early (the lesson shows this)")
    r = run("import os\nwhile True: os.fork()", guard=guard, isolate=isolate)
    assert not r


@pytest.mark.parametrize("exits", [False, True], ids=["times-out", "exits-at-once"])
@pytest.mark.parametrize("isolate", [True, False])
def test_nothing_left_running(exits, isolate):
    "Children the program leaves behind (forked past the guard) die with it, whether it times out or exits at once."
    if isolate and not HAS_NAMESPACES: pytest.skip("Linux namespaces are not available here")
    code = ("import os, time\nprint(open('/proc/self/cmdline', 'rb').read().hex(), flush=True)\n"
            "for _ in range(8):\n    if os.fork() == 0: time.sleep(60)\n" + ("" if exits else "time.sleep(60)\n"))
    r = run(code, guard=False, isolate=isolate)
    cmdline = bytes.fromhex(r.stdout.split()[0])
    time.sleep(0.2)
    left = []
    for p in Path("/proc").glob("[0-9]*"):
        try: left += [p.name] if (p / "cmdline").read_bytes() == cmdline and "zombie" not in (p / "status").read_text() else []
        except OSError: pass
    assert not left, f"processes left running: {left}"


@needs_namespaces
def test_escaping_the_process_group_does_not_help():
    "A child in a new session escapes `killpg`, but not the PID namespace."
    code = ("import os, time\nprint(open('/proc/self/cmdline', 'rb').read().hex(), flush=True)\n"
            "if os.fork() == 0: os.setsid(); time.sleep(60)\n")
    r = run(code, guard=False)
    cmdline = bytes.fromhex(r.stdout.split()[0])
    time.sleep(0.2)
    assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p) == cmdline]


def _cmdline(p):
    try: return (p / "cmdline").read_bytes()
    except OSError: return None


@pytest.mark.parametrize("guard, isolate", LAYERS)
def test_writing_outside_its_directory(tmp_path, guard, isolate):
    mine = tmp_path / "mine.txt"
    mine.write_text("ours")
    for code in (f"open({str(mine)!r}, 'w').write('pwned')", f"open({str(mine)!r}, 'a').write('pwned')",
                 f"import os; os.remove({str(mine)!r})", f"import pathlib; pathlib.Path({str(tmp_path)!r}, 'new.txt').write_text('x')",
                 f"import os; os.rename({str(mine)!r}, 'stolen.txt')", f"import shutil; shutil.rmtree({str(tmp_path)!r})",
                 f"import os; fd = os.open({str(tmp_path / 'new2.txt')!r}, os.O_CREAT | os.O_WRONLY); os.write(fd, b'x')"):
        r = run(code, guard=guard, isolate=isolate)
        assert not r, code
    assert mine.read_text() == "ours" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


# Programs run by a separate evaluator process that has a secret in its environment from its start (so it is in
# /proc/<pid>/environ too, not only in os.environ) and that must survive them all and score one more program after.
ENV_PROBE = """
import os
in_env = [k for k, v in os.environ.items() if 'hunter2' in v]
in_proc = []
for pid in os.listdir('/proc'):
    try: in_proc += [pid] if b'hunter2' in open(f'/proc/{pid}/environ', 'rb').read() else []
    except OSError: pass
print(len(in_env), len(in_proc))
"""
CHILD_PROGRAMS = {"env": ENV_PROBE, "kill parent": "import os, signal; os.kill(os.getppid(), signal.SIGKILL)",
                  "kill group": "import os, signal; os.killpg(0, signal.SIGKILL)",
                  "kill evaluator": "import os, signal; os.kill(EVALUATOR, signal.SIGKILL)", "after": "assert 1 + 1 == 2"}
CHILD = """import json, os, sys
from nanollama.benchmarks import run_python
programs, guard, isolate = json.loads(sys.argv[1]), sys.argv[2] == "True", sys.argv[3] == "True"
results = {}
for name, code in programs.items():
    r = run_python(code.replace("EVALUATOR", str(os.getpid())), timeout=2, guard=guard, isolate=isolate)
    results[name] = [r.returncode, r.stdout, r.isolated]
print(json.dumps(results))
"""


@pytest.fixture(scope="module", params=[pytest.param(p.values, id=p.id, marks=p.marks) for p in LAYERS])
def child_evaluator(request):
    "What the child evaluator saw, program by program: `[returncode, stdout, isolated]`, and the layers `(guard, isolate)`."
    guard, isolate = request.param
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CHILD_PROGRAMS), str(guard), str(isolate)],
                         env={**os.environ, "NANOLLAMA_TEST_SECRET": "hunter2"}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"the evaluator did not survive: {out.returncode} {out.stderr[-2000:]}"
    return json.loads(out.stdout), guard, isolate


def test_reading_environment_variables(child_evaluator):
    results, guard, isolate = child_evaluator
    returncode, stdout, isolated = results["env"]
    in_env, in_proc = stdout.split()
    assert in_env == "0"
    if isolated: assert in_proc == "0"  # without a PID namespace another process's /proc/<pid>/environ stays readable


def test_killing_its_parent_or_the_evaluator(child_evaluator):
    results, guard, isolate = child_evaluator
    assert results["after"][0] == 0  # the evaluator survived every kill, and went on scoring
    assert results["kill evaluator"][0] != 0
    if guard: assert results["kill parent"][0] != 0 and results["kill group"][0] != 0  # refused: scored as failures
    else: assert results["kill parent"][0] == 0  # a PID 1 the kernel protects: the kill is ignored, the program passes harmlessly


@pytest.mark.parametrize("guard, isolate", LAYERS)
def test_opening_a_socket(guard, isolate):
    "A server of ours listens on localhost; the program can neither connect to it nor reach anything else."
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0)); server.listen(); server.setblocking(False)
        port = server.getsockname()[1]
        for code in (f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')",
                     f"import socket; s = socket.socket(); s.connect(('127.0.0.1', {port}))",
                     "import urllib.request; urllib.request.urlopen('http://example.com', timeout=1)"):
            assert not run(code, guard=guard, isolate=isolate), code
        with pytest.raises(BlockingIOError): server.accept()  # nobody connected


def test_humaneval_scores_hostile_completions_as_failures():
    he = HumanEval(FIXTURES, timeout=TIMEOUT)
    c = he[0]
    hostile = ["    while True: pass\n", "    import os; os.kill(os.getppid(), 9)\n", "    import sys; sys.exit(0)\n",
               "    import socket; socket.create_connection(('127.0.0.1', 9))\n", "    x = bytearray(8 * 2**30)\n",
               "import sys; sys.exit(0)\n"]  # the last at module level: exits before the tests run
    t0 = time.time()
    assert [he.score(c, h) for h in hostile] == [0.0] * len(hostile)
    assert time.time() - t0 < len(hostile) * (TIMEOUT + 1)
    assert he.score(c, c["messages"][-1]["content"]) == 1.0  # and it still scores a right answer


@pytest.mark.skipif(not (SHARED / "evals" / "humaneval").is_dir(), reason="needs the full HumanEval set in ../shared/data")
def test_every_canonical_solution_passes_in_the_sandbox():
    he = HumanEval(SHARED)
    with ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(lambda c: he.score(c, c["messages"][-1]["content"]), he))
    assert len(scores) == 164 and [c["task_id"] for c, s in zip(he, scores) if s != 1.0] == []
