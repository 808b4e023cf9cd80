"""The core is sans-IO: importing it pulls in no networking, concurrency or clock module.

Two checks: each module of ``smtpcore`` is imported in a fresh interpreter, which must not
gain any banned module; and the source of every ``smtpcore/*.py`` is walked for import
statements (and ``__import__``/``importlib.import_module`` calls) naming one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import smtpcore

BANNED = frozenset(
    {
        "socket",
        "ssl",
        "asyncio",
        "trio",
        "anyio",
        "threading",
        "selectors",
        "transports",
        "time",
        # the C halves of the above, in case a module reaches for them directly
        "_socket",
        "_ssl",
        "_asyncio",
    }
)
PACKAGE_DIR = Path(smtpcore.__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
SOURCES = sorted(PACKAGE_DIR.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = [module_name(path) for path in SOURCES]

# Run with -S (no site-packages, so no .pth hook imports anything first) from the directory
# holding the package. Banned modules the bare interpreter already has (``time`` is built
# in and loaded at start-up) are dropped from sys.modules first, so a re-import shows.
PROBE = """
import importlib, json, sys
sys.path.insert(0, {root!r})
banned = {banned!r}
for name in [n for n in sys.modules if n.split(".")[0] in banned]:
    del sys.modules[name]
before = set(sys.modules)
importlib.import_module({module!r})
gained = sorted(n for n in set(sys.modules) - before if n.split(".")[0] in banned)
print(json.dumps({{"file": sys.modules["smtpcore"].__file__, "gained": gained}}))
"""


@pytest.mark.parametrize("module", MODULES)
def test_import_pulls_in_no_io_module(module: str) -> None:
    code = PROBE.format(root=str(ROOT), banned=sorted(BANNED), module=module)
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).resolve() == PACKAGE_DIR / "__init__.py", "imported another copy"
    assert report["gained"] == [], f"importing {module} imports {report['gained']}"


def banned_imports(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, module) for every import of a banned module in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in ("__import__", "import_module") and isinstance(first, ast.Constant):
                names = [str(first.value)]
        line = getattr(node, "lineno", 0)
        found += [(line, name) for name in names if name.split(".")[0] in BANNED]
    return found


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_source_imports_no_io_module(path: Path) -> None:
    found = banned_imports(path.read_text(encoding="utf-8"), str(path))
    assert found == [], f"{path.relative_to(ROOT)} imports {found}"


def test_the_source_check_sees_every_form() -> None:
    source = "\n".join(
        [
            "import socket",
            "import os, asyncio.events as ev",
            "from time import monotonic",
            "from threading import Lock",
            "def f():",
            "    import ssl",
            "    return __import__('selectors'), importlib.import_module('trio')",
            "from . import time",  # relative: the package's own module, allowed
            "import timeit",  # not the time module
        ]
    )
    found = banned_imports(source)
    assert sorted(name for _, name in found) == sorted(
        ["socket", "asyncio.events", "time", "threading", "ssl", "selectors", "trio"]
    )


def test_the_package_has_modules() -> None:
    assert "smtpcore" in MODULES and "smtpcore.connection" in MODULES
