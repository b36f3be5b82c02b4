"""Fixtures for the Celery integration: the outbox on SQLite and on PostgreSQL, a Celery app on a real Redis.

A test that takes ``outbox_db`` runs twice: with the outbox in the file SQLite
test database (``default``), and in a real PostgreSQL started once per session
(``tests.harness.PostgresServer``), the outbox's model routed there by
``tests.celery.databases.OutboxRouter``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from redis_breaker.celery import BreakerTask, outbox
from tests.harness import PostgresNotInstalled, PostgresServer, RedisServer

from .databases import POSTGRES, route_outbox


def queued(server: RedisServer, queue: str = "celery") -> list[dict[str, Any]]:
    """The task messages waiting in ``queue`` on ``server``, oldest first, as their headers."""
    client = server.client()
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    # kombu LPUSHes and the worker BRPOPs: the oldest message is last.
    return [json.loads(item)["headers"] for item in reversed(raw)]


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true or fail after ``timeout`` s (real-server tests only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    """A broker (and result backend) that keeps its data across stop/start (AOF), as a
    production broker would."""
    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def recorder() -> Iterator[RedisServer]:
    """A second redis-server, never faulted, where the tasks record each run."""
    with RedisServer() as server:
        yield server


ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def celery_worker(app_module: str, **env: str) -> Iterator[Path]:
    """``celery -A app_module worker --pool=solo`` in a subprocess; yields its log file."""
    log = Path(tempfile.mkdtemp(prefix="rb-worker-")) / "worker.log"
    environ = dict(os.environ, **env,
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app_module, "worker", "--pool=solo",
             "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def worker_database(alias: str) -> str:
    """The test's outbox database as a worker subprocess's ``default`` (JSON, for its
    ``RB_DATABASE``: ``tests.celery.worker_settings``)."""
    from django.db import connections

    return json.dumps(connections[alias].settings_dict, default=str)


def join_relays() -> None:
    """Wait for every background relay pass of this process to end."""
    for relay in list(outbox._relays.values()):
        relay.join(10)


#: The session's one PostgreSQL server and test database, shared by every conftest or
#: module that imports these fixtures (tests/faults does): pytest gives each importer a
#: fixture of its own, and a second server would double the start-up cost.
_shared_postgres: dict[str, Any] = {}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session (never a skip when there is none)."""
    if "server" in _shared_postgres:
        _shared_postgres["users"] += 1
        try:
            yield _shared_postgres["server"]
        finally:
            _shared_postgres["users"] -= 1
        return
    try:
        server = PostgresServer()
    except PostgresNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
    except Exception as exc:
        server.close()
        pytest.fail(f"PostgreSQL did not start: {exc}", pytrace=False)
    _shared_postgres.update(server=server, users=1)
    try:
        yield server
    finally:
        _shared_postgres["users"] -= 1
        # Session fixtures end together: the last user closes the server.
        if not _shared_postgres["users"]:
            _shared_postgres.clear()
            server.close()


@pytest.fixture(scope="session")
def postgres_db(postgres_server: PostgresServer, django_db_setup: None,
                django_db_blocker: Any) -> Iterator[str]:
    """The ``postgres`` database alias: registered, its test database created and migrated."""
    from django.db import connections

    if _shared_postgres.get("database") is not postgres_server:
        connections.settings[POSTGRES] = postgres_server.settings(
            "redis_breaker", TEST={"NAME": "test_redis_breaker"})
        connections.configure_settings(connections.settings)
        import django

        # Django 6.0 serializes a test database only when asked (and deprecates the argument).
        no_serialize = {"serialize": False} if django.VERSION < (6, 0) else {}
        with django_db_blocker.unblock():
            connections[POSTGRES].creation.create_test_db(verbosity=0, autoclobber=True,
                                                          **no_serialize)
        _shared_postgres["database"] = postgres_server
    try:
        yield POSTGRES
    finally:
        connections[POSTGRES].close()


# Session-scoped, so it is set up before the test's own (function-scoped)
# database fixtures: the PostgreSQL alias exists when pytest-django validates
# the test's databases, and each test flushes it after itself.
@pytest.fixture(scope="session", params=[
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.django_db(transaction=True,
                                                           databases=["default", POSTGRES])),
])
def _outbox_database(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "default"
    alias: str = request.getfixturevalue("postgres_db")
    return alias


@pytest.fixture
def outbox_db(_outbox_database: str) -> Iterator[str]:
    """The alias of the database the outbox uses in this test (run once per database)."""
    from django.db import connections, router

    from redis_breaker.models import OutboxMessage

    route_outbox(None if _outbox_database == "default" else _outbox_database)
    vendor = connections[router.db_for_write(OutboxMessage)].vendor
    assert vendor == ("sqlite" if _outbox_database == "default" else "postgresql"), vendor
    try:
        yield _outbox_database
    finally:
        route_outbox(None)


@pytest.fixture
def celery_app(redis_server: RedisServer) -> Iterator[Celery]:
    """A Celery app whose tasks are ``BreakerTask``s, brokered by the test's redis-server."""
    app = Celery("rb-tests", broker=redis_server.url, task_cls=BreakerTask, set_as_current=False)
    app.conf.task_ignore_result = True

    @app.task(name="t.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.add_sync", breaker_fallback="sync", shared=False)
    def add_sync(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.add_raise", breaker_fallback="raise", shared=False)
    def add_raise(x: int, y: int) -> int:
        return x + y

    try:
        yield app
    finally:
        join_relays()
        cached = getattr(app, "_redis_breaker_producers", None)
        if cached is not None:
            cached[1].connections.force_close_all()
        app.close()
