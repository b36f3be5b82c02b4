"""The system check of the outbox's database: SQLite without the settings the outbox relies on.

``redis_breaker.W030``, registered by ``redis_breaker.checks``. On SQLite the
outbox relies on (``docs/celery.md``, "The outbox on SQLite"):

* ``OPTIONS["transaction_mode"] = "IMMEDIATE"``: a transaction takes SQLite's
  write lock when it begins. In the default (deferred) mode a transaction
  that read first and then writes an outbox row must upgrade its lock, which
  SQLite refuses at once ("database is locked", no waiting) when another
  connection wrote meanwhile;
* ``OPTIONS["init_command"]`` with ``PRAGMA journal_mode=WAL`` and
  ``PRAGMA synchronous=NORMAL``: a committed row costs an append to the
  write-ahead log instead of several fsyncs and a journal file's deletion.

Django 5.1 reads both options; on Django 4.2 and 5.0
``ENGINE = "redis_breaker.backends.sqlite3"`` reads them the same way.
"""

from __future__ import annotations

import re
from importlib.util import find_spec
from typing import Any

import django
from django.core.checks import CheckMessage
from django.core.checks import Warning as CheckWarning

__all__ = ["check_outbox_database", "sqlite_problems"]

BACKPORT_ENGINE = "redis_breaker.backends.sqlite3"
RECOMMENDED_OPTIONS = {
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
}


def _pragma(init_command: str, name: str) -> str | None:
    found = re.findall(rf"pragma\s+{name}\s*=\s*['\"]?(\w+)", init_command, re.IGNORECASE)
    return found[-1].upper() if found else None


def _in_memory(name: Any) -> bool:
    text = str(name or "")
    return text == ":memory:" or "mode=memory" in text


def sqlite_problems(settings_dict: dict[str, Any]) -> list[str]:
    """What the SQLite database ``settings_dict`` lacks for the outbox (empty: nothing)."""
    if _in_memory(settings_dict.get("NAME")):
        return []  # no file: nothing to fsync, and one connection
    options = settings_dict.get("OPTIONS") or {}
    problems: list[str] = []
    mode = str(options.get("transaction_mode") or "").upper()
    if mode not in ("IMMEDIATE", "EXCLUSIVE"):
        problems.append('OPTIONS["transaction_mode"] is not "IMMEDIATE"')
    elif django.VERSION < (5, 1) and settings_dict.get("ENGINE") != BACKPORT_ENGINE:
        problems.append(f'Django {django.get_version()} reads OPTIONS["transaction_mode"] '
                        f'only with ENGINE "{BACKPORT_ENGINE}"')
    init_command = str(options.get("init_command") or "")
    if _pragma(init_command, "journal_mode") != "WAL":
        problems.append('OPTIONS["init_command"] does not set "PRAGMA journal_mode=WAL"')
    if _pragma(init_command, "synchronous") not in ("NORMAL", "1", "OFF", "0"):
        problems.append('OPTIONS["init_command"] does not set "PRAGMA synchronous=NORMAL"')
    return problems


def check_outbox_database(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W030: the outbox's database is SQLite without the settings it relies on."""
    if find_spec("celery") is None:  # no Celery: nothing writes the outbox
        return []
    from django.db import connections, router

    from .models import OutboxMessage

    alias = router.db_for_write(OutboxMessage)
    settings_dict = connections.settings.get(alias) or {}
    if "sqlite3" not in str(settings_dict.get("ENGINE", "")):
        return []
    problems = sqlite_problems(settings_dict)
    if not problems:
        return []
    engine = "" if django.VERSION >= (5, 1) else f'"ENGINE": "{BACKPORT_ENGINE}", '
    return [CheckWarning(
        f"The Celery outbox's database DATABASES[{alias!r}] is SQLite without the settings "
        f"the outbox relies on: {'; '.join(problems)}. Dispatching inside transaction.atomic() "
        "during an outage can then fail with 'database is locked', and each outbox row "
        "costs several fsyncs.",
        hint=(f"Set DATABASES[{alias!r}] to {{{engine}\"OPTIONS\": "
              f"{{\"transaction_mode\": \"IMMEDIATE\", \"init_command\": "
              f"\"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL\"}}}} "
              "(docs/celery.md, 'The outbox on SQLite')."),
        id="redis_breaker.W030",
    )]
