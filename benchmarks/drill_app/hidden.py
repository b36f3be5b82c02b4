"""Counting the errors a backend hides from its caller.

A call that raised is an error the caller saw. Some backends catch the error
and answer something else: django-redis with ``IGNORE_EXCEPTIONS`` returns
``None`` (after waiting the socket timeout), a pybreaker wrapper calls its
local fallback, redis-breaker serves the call from its fallback (local cache,
outbox, in-process delivery, or a miss for a read). The drill counts each such call as an error
hidden by the backend: each traffic worker gives its context a box, and the
code that hides an error calls :func:`mark` in the caller's context.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

_box: ContextVar[list[int] | None] = ContextVar("drill_hidden", default=None)

#: django-redis logs each ignored exception here (DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS).
IGNORED_LOGGER = "drill.ignored"


def start() -> list[int]:
    """Give the current context (a worker thread or task) its own count."""
    box = [0]
    _box.set(box)
    return box


def mark() -> None:
    """One error hidden from the caller running in this context."""
    box = _box.get()
    if box is not None:
        box[0] += 1


class MarkHidden(logging.Handler):
    """A handler for django-redis's ignored-exceptions logger: each record is one hidden error."""

    def emit(self, record: logging.LogRecord) -> None:
        mark()


def install() -> None:
    """Count django-redis's ignored exceptions (and keep their tracebacks out of the log)."""
    logger = logging.getLogger(IGNORED_LOGGER)
    logger.handlers[:] = [MarkHidden()]
    logger.setLevel(logging.ERROR)
    logger.propagate = False


def wrap_breaker(breaker: Any) -> None:
    """Count each call redis-breaker's breaker sends to a fallback (``Breaker.note_fallback``).

    The engine calls ``note_fallback`` in the caller's thread or task, once per
    call it answers without Redis: a cache read or write served locally (a read
    of a key nobody wrote during the outage is a miss), a message delivered in
    this process only, a task written to the outbox.
    """
    original = breaker.note_fallback

    def note_fallback(integration: str, error: BaseException | None = None) -> None:
        mark()
        original(integration, error)

    breaker.note_fallback = note_fallback


def on_outbox_row(sender: Any, created: bool = False, **kwargs: Any) -> None:
    """post_save of redis-breaker's outbox: a task the broker did not take now waits in the database."""
    if created:
        mark()

