"""The compiled build (``SMTPCORE_COMPILE=1``, mypyc: see setup.py) behaves as the sources do.

A copy of the tree is compiled and, in a child pytest there, the core's tests, the property
tests, the integration suite (every transport, uvloop included) and the metrics tests run
against the compiled modules. mypyc checks declared types at run time, which Python does not:
a value of another type than its annotation says (uvloop's list of sockets, say) shows up here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import smtpcore
from benchmarks.compiled import ROOT, build_compiled_tree, run_in_tree

SUITE = ["tests/core", "tests/property", "tests/integration", "tests/scaleout/test_ops.py"]


def compiled_sources() -> list[str]:
    """setup.py's ``COMPILED`` list."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "COMPILED":
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no COMPILED list")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_compiled_tree(tmp_path_factory.mktemp("compiled"), extra=["tests"])


def test_the_sources_run_uncompiled() -> None:
    assert smtpcore.compiled() is False


def test_every_listed_module_is_compiled(tree: Path) -> None:
    modules = [source.removesuffix(".py").replace("/", ".") for source in compiled_sources()]
    assert "smtpcore.connection" in modules and "transports.asyncio" in modules
    probe = f"import importlib; print([importlib.import_module(m).__file__ for m in {modules!r}])"
    result = run_in_tree(tree, "-c", probe)
    files = ast.literal_eval(result.stdout)
    assert all(Path(f).parent.parent == tree and f.endswith(".so") for f in files), files


def test_the_compiled_tree_passes_the_suite(tree: Path) -> None:
    result = run_in_tree(tree, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE, timeout=900)
    tail = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=* ?\d+ passed(, \d+ warnings?)? in .*", summary), summary  # none skipped
    assert int(summary.split(" passed")[0].split()[-1]) > 1000, summary
