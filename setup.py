"""Packaging lives in pyproject.toml; this adds the optional compiled build.

``SMTPCORE_COMPILE=1 pip install --no-build-isolation .`` (with mypy, setuptools and a C
compiler at hand) compiles the modules every message goes through with mypyc; the result
behaves as the sources do, faster. Without the variable the package is pure Python.
"""

import os

from setuptools import setup

COMPILED = [
    "smtpcore/connection.py",
    "smtpcore/_buffer.py",
    "smtpcore/_content.py",
    "smtpcore/_transaction.py",
    "smtpcore/_syntax.py",
    "smtpcore/_state.py",
    "smtpcore/replies.py",
    "transports/_driver.py",
    "transports/asyncio.py",
]
"""Where the time of a session goes. ``events.py`` stays Python (its ``__init__`` is
generated); modules off the hot path gain nothing from compiling."""

ext_modules = []
if os.environ.get("SMTPCORE_COMPILE") == "1":
    from mypyc.build import mypycify

    # Type-check without the project's strict settings and with the optional extras (trio,
    # uvloop, cryptography...) possibly absent: the build must not depend on what is installed.
    options = [f"--config-file={os.devnull}", "--ignore-missing-imports"]
    ext_modules = mypycify([*options, *COMPILED], opt_level="3")

setup(ext_modules=ext_modules)
