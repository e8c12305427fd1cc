"""The benchmarks' peers (transformers, TRL, lm-evaluation-harness, llama.cpp) are not the package's dependencies:
`require` turns a missing one into one line that says how to install them."""
import importlib
import sys

INSTALL = "pip install -e '.[bench]'"


def require(*modules: str):
    "Import `modules`, or exit naming the first one missing and the command that installs them all."
    for name in modules:
        try: importlib.import_module(name)
        except ModuleNotFoundError: sys.exit(f"{sys.argv[0]} measures against {name}, which is not installed here: {INSTALL}")
