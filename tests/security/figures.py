"""Figures measured by the security suite (attacks tried, faults survived, messages, memory).

Tests call `count` and `record`; at the end of the run the totals are printed in pytest's
terminal summary and, if ``SMTPCORE_SECURITY_FIGURES`` names a file, written there as JSON
(that is how SECURITY.md's figures were collected).
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from typing import Any

_lock = threading.Lock()
_counts: dict[str, int] = defaultdict(int)
_values: dict[str, dict[str, Any]] = defaultdict(dict)


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``name`` (e.g. "attacks.smuggling")."""
    with _lock:
        _counts[name] += n


def record(name: str, key: str, value: Any) -> None:
    """Keep ``value`` under ``name``/``key`` (e.g. peak memory per transport)."""
    with _lock:
        _values[name][key] = value


def snapshot() -> dict[str, Any]:
    with _lock:
        return {"counts": dict(sorted(_counts.items())), "values": json.loads(json.dumps(_values))}


def lines() -> list[str]:
    snap = snapshot()
    out = [f"{name}: {n}" for name, n in snap["counts"].items()]
    for name, per_key in sorted(snap["values"].items()):
        for key, value in sorted(per_key.items()):
            out.append(f"{name}[{key}]: {value}")
    return out


def write_report() -> None:
    path = os.environ.get("SMTPCORE_SECURITY_FIGURES")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(snapshot(), f, indent=2, sort_keys=True)
