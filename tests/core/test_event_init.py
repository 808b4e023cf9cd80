"""Events are frozen dataclasses whose ``__init__`` fills the slots directly (for speed): it must
take the same keyword-only parameters, defaults and factories as the generated one."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from smtpcore import events

EVENT_CLASSES = sorted(
    (
        cls
        for cls in vars(events).values()
        if isinstance(cls, type)
        and dataclasses.is_dataclass(cls)
        and cls.__module__ == events.__name__
    ),
    key=lambda cls: cls.__name__,
)


def test_every_event_class_is_covered() -> None:
    assert len(EVENT_CLASSES) == 17
    for cls in EVENT_CLASSES:
        assert "_FACTORY" in cls.__init__.__globals__, (
            f"{cls.__name__} keeps the generated __init__"
        )


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
def test_signature_and_defaults_match_the_fields(cls: type) -> None:
    params = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    required = {
        f.name: f"value of {f.name}"
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    made = cls(**required)
    for f in fields:
        if f.name in required:
            expected = required[f.name]
        elif f.default is not dataclasses.MISSING:
            expected = f.default
        else:
            expected = f.default_factory()  # type: ignore[misc]
        assert getattr(made, f.name) == expected
    assert made == cls(**required)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(made, fields[0].name, None)
    with pytest.raises(TypeError):
        cls("positional")
    if required:
        with pytest.raises(TypeError, match="missing"):
            cls()
