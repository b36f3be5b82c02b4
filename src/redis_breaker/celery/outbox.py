"""The durable task outbox: written while the broker is unavailable, relayed in order after.

Rows are written in the caller's database transaction. A relay claims a batch
(a conditional UPDATE, so two relays never hold the same row; with
``select_for_update(skip_locked=True)`` where the database has it), publishes
it through the breaker with the original task ids, then deletes it. A relay
that dies between publish and delete leaves a claim that expires and is taken
over: delivery is at-least-once, with the task id as the idempotency key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from functools import partial
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections, router

from redis_breaker._background import BackgroundJob
from redis_breaker._breaker import Breaker
from redis_breaker._classify import is_full
from redis_breaker._errors import BreakerOpenError
from redis_breaker._events import emit
from redis_breaker._redact import describe_error
from redis_breaker._registry import get_breaker
from redis_breaker._state import State, StateChange

from .chords import CHORD_KEY, CHORD_TASK, STORED, relay_chord
from .publish import publish_outboxed
from .rows import OutboxSerializationError, aware, claim, from_json, write_message

if TYPE_CHECKING:
    from celery import Celery

    from redis_breaker.models import OutboxMessage

__all__ = [
    "DrainResult",
    "OutboxSerializationError",
    "drain",
    "outbox_status",
    "relay_for",
    "write_message",
]

BATCH_SIZE = 100
CLAIM_SECONDS = 60.0


# ------------------------------------------------------------------ relaying
@dataclass
class DrainResult:
    """What one drain pass did."""

    published: int = 0
    expired: int = 0
    failed: int = 0
    stopped: str | None = None  # why the pass ended early ("breaker open", an error)
    by_breaker: dict[str, int] = field(default_factory=dict)

    def add(self, other: DrainResult) -> None:
        self.published += other.published
        self.expired += other.expired
        self.failed += other.failed
        self.stopped = self.stopped or other.stopped
        for name, n in other.by_breaker.items():
            self.by_breaker[name] = self.by_breaker.get(name, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {"published": self.published, "expired": self.expired, "failed": self.failed,
                "stopped": self.stopped, "by_breaker": dict(self.by_breaker)}


def _publish_row(app: Celery, row: OutboxMessage, expires: datetime | None) -> None:
    # Decoded inside the guarded call: a corrupt row fails like a publish the broker refuses.
    options = from_json(row.options)
    unit = options.get(CHORD_KEY) if row.task_name == CHORD_TASK else None
    if unit is not None:
        # A chord's unit: its size, then its header members, all in this one trial call.
        relay_chord(app, unit, partial(publish_outboxed, app))
        return
    publish_outboxed(app, row.task_name, from_json(row.args), from_json(row.kwargs),
                     task_id=row.task_id, eta=aware(row.eta), expires=expires,
                     options=options)


def drain_breaker(
    app: Celery,
    breaker: Breaker,
    *,
    batch_size: int = BATCH_SIZE,
    using: str | None = None,
    lease: float = CLAIM_SECONDS,
) -> DrainResult:
    """Publish every pending row of ``breaker`` in id order; stop when it opens."""
    from redis_breaker.models import OutboxMessage

    db = using or router.db_for_write(OutboxMessage)
    result = DrainResult()
    while True:
        token, rows = claim(breaker.name, batch_size, db, lease)
        if not rows:
            return result
        done: list[int] = []
        expired: list[int] = []
        failed: list[tuple[int, str]] = []
        stop: str | None = None
        give_up = time.monotonic() + lease / 2
        for row in rows:
            now = datetime.now(dt_timezone.utc)
            expires = aware(row.expires)
            if expires is not None and expires <= now:
                expired.append(row.id)
                emit(logging.WARNING, "outbox_expired", breaker=breaker.name,
                     task_id=row.task_id, task_name=row.task_name,
                     expired_s_ago=round((now - expires).total_seconds(), 3))
                continue
            if row.task_name not in app.tasks:
                failed.append((row.id, f"unregistered task {row.task_name!r}"))
                emit(logging.ERROR, "outbox_unknown_task", breaker=breaker.name,
                     task_id=row.task_id, task_name=row.task_name)
                continue
            try:
                breaker.call_as_trial(_publish_row, app, row, expires, deadline=give_up)
            except BreakerOpenError:
                stop = "breaker open"
                break
            except Exception as exc:
                if breaker.counts(exc):
                    stop = describe_error(exc)
                    break
                if is_full(exc):
                    # Redis is up but out of memory: not this row's fault, and the
                    # rows behind it would meet the same. Keep them all pending.
                    stop = describe_error(exc)
                    emit(logging.WARNING, "outbox_relay_paused", breaker=breaker.name,
                         reason="redis out of memory", error=stop,
                         pending_from_task_id=row.task_id)
                    break
                # A message the broker refuses for itself (bad routing, an
                # option kombu rejects) must not block the rows behind it.
                failed.append((row.id, describe_error(exc)))
                emit(logging.ERROR, "outbox_publish_failed", breaker=breaker.name,
                     task_id=row.task_id, task_name=row.task_name, error=describe_error(exc))
                continue
            done.append(row.id)
        table = OutboxMessage.objects.using(db)
        if done or expired:
            table.filter(id__in=done + expired, claimed_by=token).delete()
        for row_id, error in failed:
            table.filter(id=row_id, claimed_by=token).update(
                status=OutboxMessage.FAILED, last_error=error[:2000], claimed_by="",
                claimed_until=None)
        # Give back what this pass did not reach, so another relay need not wait for the lease.
        table.filter(claimed_by=token).update(claimed_by="", claimed_until=None)
        result.published += len(done)
        result.expired += len(expired)
        result.failed += len(failed)
        if done:
            result.by_breaker[breaker.name] = result.by_breaker.get(breaker.name, 0) + len(done)
        if stop:
            result.stopped = stop
            return result


class Relay(BackgroundJob):
    """Drains one breaker's outbox in a background thread when Redis comes back.

    Registered as a breaker listener; the transition fires in the probe thread,
    so the work runs in a thread of its own and its publishes are the
    breaker's half-open trial calls.
    """

    def __init__(self, breaker: Breaker, app: Celery) -> None:
        super().__init__("redis-breaker-outbox-relay", self._pass)
        self._breaker = weakref.ref(breaker)
        self.app = app

    def __call__(self, change: StateChange) -> None:
        if change.to_state in (State.HALF_OPEN, State.CLOSED):
            self.kick()

    def _pass(self) -> None:
        breaker = self._breaker()
        if breaker is None or breaker.is_open:
            return
        try:
            result = drain_breaker(self.app, breaker)
        except Exception as exc:
            # A background thread must not die with a traceback; the next
            # recovery or `redis_breaker drain` picks the rows up again.
            emit(logging.ERROR, "outbox_relay_failed", breaker=breaker.name,
                 error=describe_error(exc))
            return
        finally:
            # This thread's own database connection, never the caller's.
            with contextlib.suppress(Exception):
                connections.close_all()
            with contextlib.suppress(Exception):
                _close_thread_backend(self.app)
        if result.published or result.expired or result.failed:
            emit(logging.INFO, "outbox_relayed", breaker=breaker.name,
                 **{k: v for k, v in result.as_dict().items() if k != "by_breaker"})


def _close_thread_backend(app: Celery) -> None:
    """Close the result backend Celery made for this thread, if it made one.

    Celery keeps a result backend per thread (unless the backend is thread-safe
    and shared). A relay pass runs in a thread of its own that ends with it, and
    a chord's relay writes its size (and header) through that thread's backend:
    its connections would be left to the garbage collector.
    """
    local = getattr(app, "_local", None)
    backend = vars(local).pop("backend", None) if local is not None else None
    if backend is None:
        return
    client = vars(backend).get("client")  # a Redis backend's client, once made
    if client is not None:
        client.connection_pool.disconnect()


_relays: weakref.WeakKeyDictionary[Breaker, Relay] = weakref.WeakKeyDictionary()
_relays_lock = threading.Lock()


def relay_for(breaker: Breaker, app: Celery) -> Relay:
    """The relay of ``breaker`` in this process, registered as its listener on first use."""
    relay = _relays.get(breaker)
    if relay is not None:
        relay.app = app
        return relay
    with _relays_lock:
        relay = _relays.get(breaker)
        if relay is None:
            relay = Relay(breaker, app)
            breaker.add_listener(relay)
            _relays[breaker] = relay
        return relay


# A chord's unit, once written, is relayed by its breaker's relay like any row.
STORED.append(relay_for)


# ------------------------------------------------------------------ commands
def _pending_breakers(using: str) -> list[str]:
    from redis_breaker.models import OutboxMessage

    return sorted(set(OutboxMessage.objects.using(using).filter(status=OutboxMessage.PENDING)
                      .values_list("breaker", flat=True)))


def drain(
    loop: bool = False,
    *,
    app: Celery | None = None,
    batch_size: int = BATCH_SIZE,
    interval: float = 5.0,
    using: str | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Publish every pending outbox row now (``redis_breaker drain``); return counts.

    Each row goes through its own breaker, so a dead broker stops the pass
    after the breaker opens rather than after one timeout per row. With
    ``loop`` it runs again every ``interval`` seconds until ``stop`` is set
    (or the process is interrupted). ``app`` defaults to Celery's current app.
    """
    from redis_breaker.models import OutboxMessage

    if app is None:
        from celery import current_app

        app = current_app._get_current_object()
    db = using or router.db_for_write(OutboxMessage)
    total = DrainResult()
    while True:
        for name in _pending_breakers(db):
            breaker = get_breaker(name)
            if breaker.is_open:
                breaker.probe_now()
            if breaker.is_open:
                total.stopped = total.stopped or "breaker open"
                continue
            total.add(drain_breaker(app, breaker, batch_size=batch_size, using=db))
        if not loop or (stop is not None and stop.wait(interval)):
            break
        if stop is None:
            time.sleep(interval)
    return total.as_dict()


def outbox_status(using: str | None = None) -> dict[str, Any]:
    """Outbox depth for health checks: pending/failed counts and the oldest pending age."""
    from django.db.models import Count, Min

    from redis_breaker.models import OutboxMessage

    db = using or router.db_for_read(OutboxMessage)
    status: dict[str, Any] = {"pending": None, "failed": None, "oldest_pending_age_s": None,
                              "failed_tasks": [], "error": None}
    try:
        table = OutboxMessage.objects.using(db)
        counts = dict(table.values_list("status").annotate(n=Count("id")).order_by())
        oldest = table.filter(status=OutboxMessage.PENDING).aggregate(m=Min("created_at"))["m"]
        failed = list(table.filter(status=OutboxMessage.FAILED).order_by("id")
                      .values("task_id", "task_name", "last_error")[:10])
    except DatabaseError as exc:
        # Migrations not applied yet, or the database is down: say so, do not raise.
        status["error"] = describe_error(exc)
        return status
    status["pending"] = int(counts.get(OutboxMessage.PENDING, 0))
    status["failed"] = int(counts.get(OutboxMessage.FAILED, 0))
    if oldest is not None:
        age = (datetime.now(dt_timezone.utc) - aware(oldest)).total_seconds()  # type: ignore[operator]
        status["oldest_pending_age_s"] = round(max(0.0, age), 3)
    status["failed_tasks"] = failed
    return status


def _after_fork_in_child() -> None:
    # Each relay is a BackgroundJob, renewed by _background; the lock of the table is not.
    global _relays_lock
    _relays_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
