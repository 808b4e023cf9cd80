"""Build a copy of the source tree with the compiled core (``SMTPCORE_COMPILE=1``, see setup.py).

The copy is built in place (``setup.py build_ext --inplace``): a process started with its
directory as the working directory, or first on ``PYTHONPATH``, runs the compiled modules
without touching the installed, pure-Python package. The benchmark runner measures servers
there, and the test suite runs the core's and the transports' tests there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ROOT", "build_compiled_tree", "is_compiled", "run_in_tree"]

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("smtpcore", "transports", "setup.py", "pyproject.toml", "README.md")
"""What the build needs (pyproject.toml names README.md as the long description)."""


def build_compiled_tree(dest: Path, extra: Sequence[str] = (), timeout: float = 600) -> Path:
    """Copy the sources (and the ``extra`` paths, e.g. ``tests``) into ``dest`` and compile
    them there; raises RuntimeError with the compiler's output if the build fails."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", ".mypy_cache")
    for name in (*SOURCES, *extra):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(source, dest / name)
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=dest,
        env={**os.environ, "SMTPCORE_COMPILE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0 or not is_compiled(dest):
        raise RuntimeError(f"compiled build failed in {dest}:\n{result.stdout}{result.stderr}")
    return dest


def run_in_tree(tree: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python *args`` started in ``tree`` (without our PYTHONPATH, so it imports from there)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout
    )


def is_compiled(tree: Path) -> bool:
    """Whether a Python started in ``tree`` imports the compiled core."""
    result = run_in_tree(tree, "-c", "import smtpcore; print(smtpcore.compiled())")
    return result.stdout.strip() == "True"
