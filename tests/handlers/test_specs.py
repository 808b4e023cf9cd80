"""`resolve_handler` for every built-in spec, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from transports.handler import Handler
from transports.handlers import (
    HANDLERS,
    Debug,
    MaildirHandler,
    MboxHandler,
    MemoryHandler,
    PipeHandler,
    RelayHandler,
    Sink,
    WebhookHandler,
    resolve_handler,
)


def test_every_spec(tmp_path: Path) -> None:
    # Other handlers may join the table; these must be there.
    assert set(HANDLERS) >= {
        "debug",
        "sink",
        "memory",
        "maildir",
        "mbox",
        "relay",
        "pipe",
        "webhook",
    }
    specs: dict[str, type[Handler]] = {
        "debug": Debug,
        "sink": Sink,
        "memory": MemoryHandler,
        f"maildir:{tmp_path / 'md'}": MaildirHandler,
        f"mbox:{tmp_path / 'inbox'}": MboxHandler,
        "relay:127.0.0.1:2525": RelayHandler,
        "pipe:/bin/cat": PipeHandler,
        "webhook:http://127.0.0.1:8080/mail": WebhookHandler,
        "transports.handlers.memory:MemoryHandler": MemoryHandler,
    }
    for spec, cls in specs.items():
        assert type(resolve_handler(spec)) is cls, spec


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("maildri:/tmp/x", "cannot import 'maildri'"),  # a typo is tried as a module
        ("memory:5", "takes no argument"),
        ("maildir", "handler maildir needs an argument: maildir:DIR"),
        ("mbox:", "handler mbox needs an argument: mbox:FILE"),
        ("relay:mx.example.org", "relay needs HOST:PORT"),
        ("pipe", "handler pipe needs an argument: pipe:COMMAND"),
        ("webhook:mailto:a@b", "webhook needs an http:// or https:// URL"),
        ("transports.handlers.maildir:MaildirHandler", "cannot be made without arguments"),
        ("transports.handlers.stored:StoredMessage", "not a Handler subclass"),
    ],
)
def test_bad_specs_say_what_to_write(spec: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("(", r"\(").replace(".", r"\.")):
        resolve_handler(spec)


def test_unknown_name_lists_the_built_in_ones() -> None:
    with pytest.raises(ValueError, match="unknown handler 'nothing'") as refused:
        resolve_handler("nothing")
    for name in ("memory", "maildir", "mbox", "relay", "pipe", "webhook"):
        assert name in str(refused.value)
