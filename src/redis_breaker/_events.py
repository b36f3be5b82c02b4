"""Structured log events.

Every event goes to structlog when the application configured it, otherwise
to the stdlib logger ``redis_breaker`` (so Django's ``LOGGING`` handlers see
it), with the fields both in the message and as ``extra`` attributes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from ._redact import redact_value

__all__ = ["capture", "emit"]

LOGGER_NAME = "redis_breaker"
_stdlib = logging.getLogger(LOGGER_NAME)
_captures: list[list[dict[str, Any]]] = []
_captures_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _captures_lock
    _captures_lock = threading.Lock()  # a thread of the parent may have held it

# Fields that would collide with LogRecord attributes when passed as extra.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _render(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    return repr(text) if (" " in text or not text) else text


def emit(level: int, event: str, **fields: Any) -> None:
    """Send one event at ``level`` (a ``logging`` level), every field's text without
    credentials (``_redact.redact_value``)."""
    fields = {key: redact_value(value) for key, value in fields.items()}
    if _captures:
        record = {"event": event, "log_level": logging.getLevelName(level).lower(), **fields}
        with _captures_lock:
            for sink in _captures:
                sink.append(dict(record))
    if structlog.is_configured():
        structlog.get_logger(LOGGER_NAME).log(level, event, **fields)
        return
    if not _stdlib.isEnabledFor(level):
        return
    message = " ".join([event, *(f"{k}={_render(v)}" for k, v in fields.items() if v is not None)])
    extra = {k: v for k, v in fields.items() if k not in _RESERVED}
    extra["event"] = event
    _stdlib.log(level, message, extra=extra)


@contextmanager
def capture() -> Iterator[list[dict[str, Any]]]:
    """Collect every event emitted inside the block, as dicts."""
    sink: list[dict[str, Any]] = []
    with _captures_lock:
        _captures.append(sink)
    try:
        yield sink
    finally:
        with _captures_lock:
            _captures.remove(sink)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
