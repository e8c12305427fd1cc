"""`nanollama.tools.calculator`: results agree with Python's on safe inputs and print cleanly; hostile inputs (code
execution, attribute walks, huge numbers and strings, deep nesting, long input) come back as `Error:` strings within
a fraction of a second, and nothing ever raises."""
import time

import pytest

from nanollama import tools
from nanollama.tools import calculator, format_result

ARITHMETIC = ["48/2", "7/2", "1 + 2*3", "(1 + 2) * 3", "3417*29", "2**10", "-3**2", "(-3)**2", "2**-2", "17//5",
              "-17//5", "17 % 5", "-17 % 5", "7.5 // 2", "5.5 % 2", "+4 - -4", "(1 + 2) * (3 - 4) / 5", "0.1 + 0.2",
              "1e3 * 1.5", "2**0.5", "10**99", "(10**99 - 1) * 9", "123456789 * 987654321", "1/3", "2/3 * 3",
              "100 - 0.01", "12.5 * 4", "(48 + 24) / 3 - 1", "2**332", "abs(-7)", "round(2.675, 2)", "round(7/2)",
              "round(12345, -2)", "max(3, 7, 5)", "min(2.5, -1)"]
STRINGS = ['"strawberry".count("r")', '"Strawberry".lower().count("r")', 'len("strawberry")', '"banana".find("n")',
           '"banana".find("z")', '"banana".index("na", 3)', '"banana".replace("a", "o")', '"banana".replace("a", "")',
           '"  hi  ".strip()', '"xxhixx".strip("x")', '"hi".upper()', '"HI".lower()', '"apple".startswith("ap")',
           '"apple".endswith("x")', '"ab" + "cd"', '"ab" * 3', '3 * "ab"', 'len("ab" * 3)', 'min("hello")',
           '"strawberry"[2]', '"strawberry"[-1]', '"strawberry"[::-1]', '"strawberry"[1:4]', '"strawberry"[::2]',
           '"abc"[10**99:]', '"mississippi".count("ss")']


@pytest.mark.parametrize("code", ARITHMETIC + STRINGS)
def test_agrees_with_python(code):
    assert calculator(code) == format_result(eval(code))  # eval only on the fixed, known-safe inputs above


@pytest.mark.parametrize("code,expected", [
    ("48/2", "24"), ("7/2", "3.5"), ("0.1 + 0.2", "0.3"), ("2/3", "0.666666666667"), ("-0.0", "0"), ("1e-5", "1e-05"),
    ("10**20 / 1", "1e+20"), ("10**20", "100000000000000000000"), ("-6/3", "-2"), ("2**0.5", "1.41421356237"),
    (" 3417 * 29 ", "99093"), ('"strawberry".count("r")', "3"), ('"hi".upper()', "HI"), ('""', ""),
    ('"apple".startswith("ap")', "True"), ('"apple".endswith("x")', "False"), ("True", "True"),
])
def test_formatting(code, expected):
    assert calculator(code) == expected


@pytest.mark.parametrize("code,message", [
    ("1/0", "Error: division by zero"), ("5 % 0", "Error: integer modulo by zero"),
    ("2.0**5000", "Error: number too large"), ("10**100", "Error: power too large: 10 to the power 100 has more than 100 digits"),
    ("10**99 * 10", "Error: number too large (more than 100 digits)"), ("(-8)**0.5", "Error: values of type complex are not allowed"),
    ('"abc".index("z")', "Error: substring not found"), ('"abc"[5]', "Error: string index out of range"),
    ("1 +", "Error: not a valid expression (invalid syntax)"), ("", "Error: not a valid expression (invalid syntax)"),
    ("x = 1", "Error: not a valid expression (invalid syntax)"), ("x", "Error: name 'x' is not allowed"),
    ('"a" - "b"', "Error: strings only allow + and *"), ('"%d" % 3', "Error: strings only allow + and *"),
    ('1 + "a"', "Error: unsupported operand type(s) for +: 'int' and 'str'"), ("1 < 2", "Error: Compare is not allowed"),
    ("round(5, ndigits=2)", "Error: keyword arguments are not allowed"), ("(5).count(1)", "Error: method 'count' works on strings, not int"),
    ("b'x'", "Error: values of type bytes are not allowed"), ("None", "Error: values of type NoneType are not allowed"),
])
def test_errors(code, message):
    assert calculator(code) == message


def test_not_a_string():
    assert calculator(None) == "Error: code must be a string, not NoneType"
    assert calculator(b"1+1") == "Error: code must be a string, not bytes"


def nest(n): return "(" * n + "1" + ")" * n


HOSTILE = {
    "import": "__import__('os').system('echo hi')",
    "import alone": "__import__('os')",
    "subclasses walk": "().__class__.__bases__[0].__subclasses__()",
    "attribute": '"abc".__class__',
    "dunder method": '"abc".__len__()',
    "format method": '"{0.__class__}".format(1)',
    "open": "open('x')",
    "exec": "exec('1')",
    "eval": "eval('1')",
    "lambda": "lambda: 1",
    "called lambda": "(lambda: 1)()",
    "comprehension": "[x for x in range(10**9)]",
    "generator": "sum(x for x in range(10**9))",
    "f-string": 'f"{1+1}"',
    "walrus": "(x := 1)",
    "statement": "import os",
    "huge string": '"a"*10**9',
    "huge string, int first": '10**9*"a"',
    "growing string": '("a"*5000) * 3',
    "string doubling": '("a"*8000) + ("a"*8000)',
    "replace growth": '("a"*200).replace("a", "a"*200)',
    "10**10**10": "10**10**10",
    "9**9**9": "9**9**9",
    "negative base": "(-9)**9**9",
    "float power": "1.0000001**10**99",
    "product": "(10**99) * (10**99)",
    "big literal": "1" + "0" * 200,
    "shift": "1 << 10**9",
    "round": "round(5, -10**18)",
    "% formatting": '"%*d" % (10**9, 1)',
    "long input": "1+" * 5000 + "1",
    "parens 10,000 deep": nest(10_000),
    "parens 300 deep": nest(300),
    "parens 199 deep": nest(199) + "+x",
    "unary 10,000 deep": "-(" * 10_000 + "1" + ")" * 10_000,
    "unary 999 deep": "-" * 999 + "1",
    "sum of 400": "+".join(["1"] * 400),
    "null byte": "1\x00+1",
    "starred": 'max(*"ab")',
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_refused_quickly(name):
    t = time.perf_counter()
    out = calculator(HOSTILE[name])
    elapsed = time.perf_counter() - t
    assert isinstance(out, str) and out.startswith("Error:"), (name, out[:200])
    assert elapsed < 1, (name, elapsed)


def test_hostile_messages_name_the_problem():
    assert calculator("open('x')").startswith("Error: function 'open' is not allowed")
    assert calculator("__import__('os')").startswith("Error: function '__import__' is not allowed")
    assert calculator(HOSTILE["subclasses walk"]).startswith("Error: method '__subclasses__' is not allowed")
    assert calculator('"abc".__class__') == "Error: attribute '__class__' is not allowed"
    assert calculator("lambda: 1") == "Error: Lambda is not allowed"
    assert calculator("(-9)**9**9") == "Error: power too large: -9 to the power 387420489 has more than 100 digits"
    assert calculator("1.0000001**10**99") == "Error: number too large"
    assert calculator("9**9**9") == "Error: power too large: 9 to the power 387420489 has more than 100 digits"
    assert calculator('"a"*10**9') == "Error: string too long (1,000,000,000 characters, at most 10,000)"
    assert calculator(HOSTILE["long input"]) == "Error: code too long (10,001 characters, at most 1,000)"
    assert calculator(nest(300)) == "Error: not a valid expression (too many nested parentheses)"
    assert calculator("-" * 999 + "1") == "Error: expression nested too deeply (more than 100 levels)"
    assert calculator("round(5, -10**18)") == "Error: round() to -1000000000000000000 digits (at most 100)"


def test_refusal_runs_nothing(tmp_path, monkeypatch):
    "A refused call has no effect: its arguments are never evaluated, so nothing is written."
    monkeypatch.chdir(tmp_path)
    assert calculator("open('pwned', 'w').write('x')").startswith("Error:")
    assert calculator("__import__('os').system('touch pwned')").startswith("Error:")
    assert not (tmp_path / "pwned").exists()


def test_parser_blowups_are_caught(monkeypatch):
    "Without the length limit, the parser itself fails on deep nesting (MemoryError/RecursionError/SyntaxError)."
    monkeypatch.setattr(tools, "MAX_CODE_LEN", 10**6)
    for code in ["-" * 100_000 + "1", nest(10_000), "-(" * 10_000 + "1" + ")" * 10_000, "[" * 10_000 + "]" * 10_000]:
        t = time.perf_counter()
        out = calculator(code)
        assert out.startswith("Error:") and time.perf_counter() - t < 1, out


def test_deadline(monkeypatch):
    "A deadline already passed refuses at the first node: the last line of defence for anything not foreseen."
    monkeypatch.setattr(tools, "TIME_LIMIT", -1.0)
    assert calculator("1 + 1") == "Error: took longer than -1.0 s"


def test_limits_are_boundaries():
    assert calculator("10**99 - 1 + 10**99 * 9") == str(10**100 - 1)  # 100 digits: allowed
    assert calculator("10**99 * 10").startswith("Error: number too large")  # 101 digits: refused
    assert calculator('len("a" * 10_000)') == "10000" and calculator('"a" * 10_001').startswith("Error: string too long")
    assert calculator("-" * 98 + "1") == "1"  # Expression + 98 unary minus + constant: 100 levels
    assert calculator("-" * 99 + "1").startswith("Error: expression nested too deeply")
    assert calculator("1" + " " * 999) == "1" and calculator("1" + " " * 1000).startswith("Error: code too long")
