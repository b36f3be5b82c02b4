"""The outbox part of ``bench_celery.py``: ``delay()`` into the outbox, per database, side by side.

The breaker is open (forced, so Redis plays no part): every ``delay()`` writes
one outbox row, in autocommit (its own transaction) and inside the caller's
``transaction.atomic()`` after a read. Databases, in one Django configuration,
measured in interleaved rounds so machine load falls on all alike:

* SQLite with Django's defaults (rollback journal, ``synchronous=FULL``, deferred);
* SQLite with the settings docs/celery.md documents (WAL, ``synchronous=NORMAL``,
  ``transaction_mode="IMMEDIATE"``);
* PostgreSQL (the test harness's server, with PostgreSQL's own durability
  settings: ``fsync`` and ``synchronous_commit`` on).

Each line is measured with two write paths, interleaved too: the row-object path
(``write_message``: a model instance whose fields encode the JSON that was
encoded and decoded once already; what every outbox dispatch took before) and
the direct one ``delay()`` takes now (``write_dispatch``: the column values
straight into the INSERT, each JSON column encoded once).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _harness  # noqa: F401  (puts the project's root, and tests.harness, on sys.path)
from _common import percentiles, print_table, progress

if TYPE_CHECKING:
    from tests.harness import PostgresServer

__all__ = ["OutboxRouter", "databases", "measure"]

SQLITE_DOCUMENTED = {"transaction_mode": "IMMEDIATE",
                     "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"}
LABELS = {"sqlite_defaults": "SQLite, Django's defaults",
          "sqlite_documented": "SQLite, documented settings",
          "postgresql": "PostgreSQL (fsync on)"}


class OutboxRouter:
    """Sends the outbox's model to ``alias`` (set per measurement)."""

    alias: str | None = None

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return self.alias if model._meta.app_label == "redis_breaker" else None

    db_for_write = db_for_read


ROUTER = OutboxRouter()


def databases(folder: Path, postgres: PostgresServer | None) -> dict[str, dict[str, Any]]:
    """The ``DATABASES`` entries of the outbox measurements (PostgreSQL when it runs)."""
    found: dict[str, dict[str, Any]] = {
        "sqlite_defaults": {"ENGINE": "django.db.backends.sqlite3",
                            "NAME": str(folder / "outbox-defaults.sqlite3")},
        "sqlite_documented": {"ENGINE": "redis_breaker.backends.sqlite3",
                              "NAME": str(folder / "outbox-documented.sqlite3"),
                              "OPTIONS": dict(SQLITE_DOCUMENTED)},
    }
    if postgres is not None:
        found["postgresql"] = postgres.settings("postgres")
    return found


def _write_dispatch_row_object(app: Any, *, breaker: str, task_name: str, args: Any,
                               kwargs: Any, task_id: str, options: Any) -> Any:
    """The outbox write as every dispatch made it before ``write_dispatch``'s direct INSERT."""
    from redis_breaker.celery import rows

    stored = rows._stored(options)
    eta, expires = rows._absolute_times(app, stored)
    return rows.write_message(breaker=breaker, task_id=task_id, task_name=task_name, args=args,
                              kwargs=kwargs, options=stored, eta=eta, expires=expires)


PATHS = ("row object (before)", "direct (now)")


def _use_path(path: str) -> None:
    # The module, not the package's ``dispatch`` function of the same name.
    dispatch = sys.modules["redis_breaker.celery.dispatch"]
    rows = sys.modules["redis_breaker.celery.rows"]
    dispatch.write_dispatch = (_write_dispatch_row_object  # type: ignore[attr-defined]
                               if path == PATHS[0] else rows.write_dispatch)


def _round(task: Any, alias: str, calls: int, atomic: bool, start: int) -> list[float]:
    from django.db import transaction

    from redis_breaker.models import OutboxMessage

    times: list[float] = []
    table = OutboxMessage.objects.using(alias)
    for i in range(calls):
        if atomic:
            started = time.perf_counter()
            with transaction.atomic(using=alias):
                table.filter(task_id="none").exists()
                task.delay(start + i)
        else:
            started = time.perf_counter()
            task.delay(start + i)
        times.append(time.perf_counter() - started)
    return times


def measure(app: Any, aliases: list[str], calls: int, rounds: int = 10) -> dict[str, Any]:
    """p50/p99 of outbox ``delay()`` per database and mode; prints the table."""
    from django.core.management import call_command
    from django.db import connections

    from redis_breaker import get_breaker
    from redis_breaker.models import OutboxMessage

    @app.task(name="bench.outboxed", shared=False, breaker_fallback="outbox")
    def outboxed(n: int) -> int:
        return n

    for alias in aliases:
        call_command("migrate", "redis_breaker", database=alias, verbosity=0)
    breaker = get_breaker()
    breaker.force_open("benchmark: outbox writes")
    samples: dict[tuple[str, bool, str], list[float]] = {
        (a, m, p): [] for a in aliases for m in (False, True) for p in PATHS}
    per_round = max(1, calls // rounds)
    try:
        for alias in aliases:  # warm-up: connections, statements, the table's first pages
            ROUTER.alias = alias
            for path in PATHS:
                _use_path(path)
                _round(outboxed, alias, 50, False, 0)
                _round(outboxed, alias, 50, True, 0)
        for r in range(rounds):
            progress(f"outbox round {r + 1}/{rounds}")
            for alias in aliases:
                ROUTER.alias = alias
                for atomic in (False, True):
                    # The paths' order flips each round: neither always runs second.
                    for path in (PATHS if r % 2 else PATHS[::-1]):
                        _use_path(path)
                        samples[(alias, atomic, path)] += _round(
                            outboxed, alias, per_round, atomic, r * per_round)
    finally:
        _use_path(PATHS[1])
        for alias in aliases:
            ROUTER.alias = alias
            OutboxMessage.objects.using(alias).all().delete()
            connections[alias].close()
        ROUTER.alias = None
        breaker.reset("benchmark done")
    results: dict[str, Any] = {}
    rows = []
    for (alias, atomic, path), times in samples.items():
        figures = percentiles(times)
        mode = "in atomic(), after a read" if atomic else "autocommit"
        results[f"{alias}/{'atomic' if atomic else 'autocommit'}/{path}"] = {
            "calls": len(times), **figures}
        rows.append([LABELS[alias], mode, path, len(times), figures["p50_ms"],
                     figures["p99_ms"], figures["max_ms"]])
    print_table("outbox delay() with the breaker open, per database and write path (ms)",
                ["database", "transaction", "write path", "calls", "p50", "p99", "max"], rows)
    return results
