"""Health API, status view and the ``redis_breaker status`` command, on a real Redis."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.core.management import call_command
from django.test import Client

from redis_breaker import get_breaker
from redis_breaker.health import check_redis_health, get_redis_status
from redis_breaker.testing import forced_open
from tests.harness import RedisServer

from .conftest import caches_for

SECRET = "s3cret-pw"


@pytest.fixture
def locked_server() -> Any:
    """A real redis-server that requires a password (to show it never leaks)."""
    with RedisServer(password=SECRET) as server:
        yield server


@pytest.fixture
def configured(settings: Any, locked_server: RedisServer) -> RedisServer:
    settings.CACHES = caches_for(locked_server.url)
    settings.REDIS_BREAKERS = {"default": {"URL": locked_server.url}}
    settings.ROOT_URLCONF = "tests.cache.urls"
    return locked_server


@pytest.mark.django_db  # the status includes the Celery outbox's table
def test_health_check_success(configured: RedisServer) -> None:
    """A reachable Redis is healthy and its PING latency is reported."""
    assert check_redis_health() is True
    status = get_redis_status()
    assert status["healthy"] is True
    entry = status["breakers"]["default"]
    assert entry["state"] == "closed"
    assert isinstance(entry["latency_ms"], float)
    assert SECRET not in json.dumps(status)


def test_health_check_failure(configured: RedisServer) -> None:
    """A stopped Redis is unhealthy, and the failed PINGs count against the breaker."""
    configured.stop()
    assert check_redis_health() is False
    assert get_breaker().stats().consecutive_failures == 1
    for _ in range(4):
        assert check_redis_health() is False
    assert get_breaker().is_open
    assert check_redis_health() is False  # open: answered without a PING


def test_health_check_uses_the_caches_url(settings: Any, redis_server: RedisServer) -> None:
    """Without a configured URL the breaker pings the URL it adopted from the cache's primary."""
    settings.CACHES = caches_for(redis_server.url)
    caches["default"].get("warm-up")
    assert check_redis_health() is True
    redis_server.stop()
    assert check_redis_health() is False


@pytest.mark.django_db  # the status includes the Celery outbox's table
def test_status_on_failure(configured: RedisServer) -> None:
    """After an outage the status reports open, failures and the error without credentials."""
    configured.stop()
    for _ in range(5):
        caches["default"].get("k")
    status = get_redis_status()
    entry = status["breakers"]["default"]
    assert status["healthy"] is False
    assert entry["state"] == "open"
    assert entry["reason"] == "5 consecutive failures"
    assert entry["latency_ms"] is None
    assert "Connection refused" in entry["last_error"]
    assert SECRET not in json.dumps(status)


@pytest.mark.django_db
def test_status_view(configured: RedisServer, settings: Any) -> None:
    """200 when healthy; 503 while open; details only for staff or the token."""
    anonymous = Client()
    response = anonymous.get("/status/")
    assert response.status_code == 200
    assert response.json() == {"healthy": True, "breakers": {"default": {"state": "closed"}}}
    with forced_open("default"):
        response = anonymous.get("/status/")
        assert response.status_code == 503
        assert response.json()["breakers"]["default"] == {"state": "forced_open"}
        staff = Client()
        staff.force_login(User.objects.create_user("ops", password="pw", is_staff=True))
        details = staff.get("/status/").json()["breakers"]["default"]
        assert details["state"] == "forced_open"
        assert "since" in details
        assert "last_error" in details
        settings.REDIS_BREAKER_STATUS_TOKEN = "tok"
        with_token = anonymous.get("/status/", headers={"Authorization": "Bearer tok"})
        assert "since" in with_token.json()["breakers"]["default"]
        wrong = anonymous.get("/status/", headers={"X-Redis-Breaker-Token": "nope"})
        assert wrong.json()["breakers"]["default"] == {"state": "forced_open"}
        assert SECRET not in staff.get("/status/").content.decode()


@pytest.mark.django_db
def test_status_includes_the_outbox_when_installed(configured: RedisServer) -> None:
    """With the Celery outbox's table present, its counts are part of the status."""
    pytest.importorskip("celery")
    status = get_redis_status()
    assert status["outbox"]["pending"] == 0
    assert status["outbox"]["failed"] == 0


@pytest.mark.django_db  # the status includes the Celery outbox's table
def test_status_command(configured: RedisServer) -> None:
    """``redis_breaker status`` prints a table, and JSON with ``--json``."""
    out = StringIO()
    call_command("redis_breaker", "status", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:2] == ["breaker", "state"]
    assert lines[1].split()[:2] == ["default", "closed"]
    configured.stop()
    with forced_open("default"):
        out = StringIO()
        call_command("redis_breaker", "status", "--json", stdout=out)
        report = json.loads(out.getvalue())
        assert report["breakers"]["default"]["state"] == "forced_open"
        last = report["breakers"]["default"]["last_transition"]
        assert (last["from"], last["to"], last["reason"]) == ("closed", "forced_open", "forced by test")
        assert SECRET not in out.getvalue()
        out = StringIO()
        call_command("redis_breaker", "status", stdout=out)
        assert "closed->forced_open at " in out.getvalue()
        assert "(forced by test)" in out.getvalue()


def test_command_needs_a_subcommand() -> None:
    """``redis_breaker`` without a subcommand is a usage error naming the choices."""
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="status"):
        call_command("redis_breaker")
