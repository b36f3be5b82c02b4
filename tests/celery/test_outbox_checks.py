"""redis_breaker.W030: the outbox's database is SQLite without the settings it relies on."""

from __future__ import annotations

from io import StringIO
from typing import Any

import django
import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections

from redis_breaker.outbox_checks import check_outbox_database, sqlite_problems

RECOMMENDED = {"transaction_mode": "IMMEDIATE",
               "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"}


def _sqlite(options: dict[str, Any], engine: str = "redis_breaker.backends.sqlite3",
            name: str = "/srv/app/db.sqlite3") -> dict[str, Any]:
    return {"ENGINE": engine, "NAME": name, "OPTIONS": options}


@pytest.mark.parametrize(("options", "missing"), [
    ({}, ["transaction_mode", "journal_mode=WAL", "synchronous=NORMAL"]),
    ({"transaction_mode": "immediate"}, ["journal_mode=WAL", "synchronous=NORMAL"]),
    ({**RECOMMENDED, "transaction_mode": "DEFERRED"}, ["transaction_mode"]),
    ({**RECOMMENDED, "init_command": "PRAGMA journal_mode=WAL"}, ["synchronous=NORMAL"]),
    ({**RECOMMENDED, "init_command": "pragma synchronous = 1;PRAGMA journal_mode = 'wal'"}, []),
    ({**RECOMMENDED, "init_command": "PRAGMA journal_mode=DELETE; PRAGMA synchronous=NORMAL"},
     ["journal_mode=WAL"]),
    (RECOMMENDED, []),
])
def test_sqlite_problems_name_each_missing_setting(options: dict[str, Any],
                                                   missing: list[str]) -> None:
    """Each setting the outbox relies on is looked for on its own."""
    problems = sqlite_problems(_sqlite(options))
    assert len(problems) == len(missing)
    for problem, key in zip(problems, missing, strict=True):
        assert key in problem


def test_in_memory_sqlite_is_left_alone() -> None:
    """An in-memory database has no file to sync: nothing to warn about."""
    assert sqlite_problems(_sqlite({}, name=":memory:")) == []
    assert sqlite_problems(_sqlite({}, name="file:x?mode=memory&cache=shared")) == []


@pytest.mark.skipif(django.VERSION >= (5, 1), reason="Django 5.1+ reads the options itself")
def test_old_django_needs_the_backend_for_transaction_mode() -> None:
    """Before Django 5.1 Django's own SQLite backend does not read transaction_mode."""
    problems = sqlite_problems(_sqlite(RECOMMENDED, engine="django.db.backends.sqlite3"))
    assert len(problems) == 1
    assert "redis_breaker.backends.sqlite3" in problems[0]


def test_manage_py_check_warns_and_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's settings pass; without them `check` shows W030 with the database and the fix."""
    assert check_outbox_database() == []
    options = connections.settings["default"]["OPTIONS"]
    monkeypatch.delitem(options, "transaction_mode")
    monkeypatch.setitem(options, "init_command", "PRAGMA foreign_keys=ON")
    out = StringIO()
    call_command("check", stdout=out, stderr=out)
    text = out.getvalue()
    assert "redis_breaker.W030" in text
    assert "DATABASES['default']" in text
    assert "database is locked" in text
    assert '"transaction_mode": "IMMEDIATE"' in text
    assert "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL" in text
    with pytest.raises(SystemCheckError, match=r"redis_breaker\.W030"):
        call_command("check", fail_level="WARNING")


@pytest.mark.django_db(transaction=True)
def test_postgresql_outbox_needs_nothing(outbox_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an outbox on SQLite is checked; routed to PostgreSQL the warning goes away."""
    monkeypatch.setitem(connections.settings["default"], "OPTIONS", {})
    found = [m.id for m in check_outbox_database()]
    assert found == (["redis_breaker.W030"] if outbox_db == "default" else [])
