"""The optional compiled build: ``SMTPCORE_COMPILE=1`` compiles the hot modules with mypyc.

The sources stay plain Python and run as such by default. `mypyc_attr` is how they tell the
compiler which classes programs may still subclass in Python; without mypy_extensions (it is
not a dependency) it does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")

try:
    from mypy_extensions import mypyc_attr as mypyc_attr
except ImportError:  # only the compiler reads the marks

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[_T], _T]:
        return lambda cls: cls


def compiled() -> bool:
    """True when this installation runs the compiled core, False when it runs the sources."""
    from . import connection

    return not connection.__file__.endswith(".py")
