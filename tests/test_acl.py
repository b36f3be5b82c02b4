"""A Redis ACL user that may not run PING: the breaker still closes after an outage, and the
health check, the status and the status view report instead of raising.

The probe counts a ``NOPERM`` reply as an answer: the server authenticated the
user and answered, so Redis is up (docs/health.md, docs/security.md). Every
test runs against a real redis-server whose user is made with
``redis-cli ACL SETUSER``; users made that way do not survive a restart, so the
helper grants it again after each start.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.core.cache import caches
from django.test import RequestFactory

from redis_breaker import State, get_breaker
from redis_breaker._probe import ping_url
from redis_breaker.health import check_redis_health, get_redis_status
from redis_breaker.views import status
from tests.harness import RedisServer

from .cache.conftest import caches_for, wait_for

USER = "cache-only"
PASSWORD = "acl-pw-7Hq"
#: Every command but PING: what an operator may give a cache's user.
RULES = ("on", f">{PASSWORD}", "~*", "&*", "+@all", "-ping")


def grant(server: RedisServer) -> None:
    """``redis-cli ACL SETUSER`` on the running server (lost at every restart)."""
    done = subprocess.run(
        ["redis-cli", "-h", server.host, "-p", str(server.port), "ACL", "SETUSER", USER,
         *RULES], capture_output=True, text=True, timeout=10)
    assert done.stdout.strip() == "OK", done.stdout + done.stderr


def start(server: RedisServer) -> None:
    server.start()
    grant(server)


def acl_url(server: RedisServer) -> str:
    return f"redis://{USER}:{PASSWORD}@{server.host}:{server.port}/0"


@pytest.fixture
def acl_server(redis_server: RedisServer) -> RedisServer:
    grant(redis_server)
    return redis_server


@pytest.fixture
def acl_cache(settings: Any, acl_server: RedisServer) -> Any:
    """``caches["default"]``: a BreakerCache whose primary logs in as the ACL user."""
    settings.CACHES = caches_for(acl_url(acl_server))
    settings.REDIS_BREAKERS = {"default": {"FAILURE_THRESHOLD": 2, "RESET_TIMEOUT": 0.2,
                                           "MAX_RESET_TIMEOUT": 1.0}}
    settings.REDIS_BREAKER_STATUS_TOKEN = "tok-acl"
    return caches["default"]


def _use(cache: Any, n: int = 4) -> None:
    for i in range(n):
        cache.set(f"k{i}", i)
        cache.get(f"k{i}")


def _view() -> tuple[int, dict[str, Any]]:
    response = status(RequestFactory().get("/status/", HTTP_X_REDIS_BREAKER_TOKEN="tok-acl"))
    return response.status_code, json.loads(response.content)


def test_the_user_really_may_not_ping(acl_server: RedisServer) -> None:
    """The premise: PING is refused with NOPERM while the cache's commands work."""
    client = redis.Redis.from_url(acl_url(acl_server), socket_timeout=1)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.ping()
        assert client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()
    ping_url(acl_url(acl_server), 1.0)  # the probe's PING counts NOPERM as an answer


@pytest.mark.django_db
def test_breaker_closes_after_outages_for_a_user_without_ping(
        acl_cache: Any, acl_server: RedisServer) -> None:
    """Refused, then hung: each time the probe finds Redis back and the breaker closes; health,
    status and the view report all along and never raise."""
    breaker = get_breaker("default")
    _use(acl_cache)
    assert breaker.state is State.CLOSED
    assert check_redis_health() is True
    report = get_redis_status()
    assert report["healthy"] is True
    assert report["breakers"]["default"]["latency_ms"] is not None
    assert _view()[0] == 200

    for outage in ("refused", "hung"):
        if outage == "refused":
            acl_server.stop()
        else:
            acl_server.freeze()
        wait_for(lambda: (_use(acl_cache, 1), breaker.is_open)[1], timeout=30,
                 what=f"the breaker to open ({outage})")
        assert check_redis_health() is False
        assert get_redis_status(timeout=0.2)["healthy"] is False
        code, body = _view()
        assert code == 503
        assert body["breakers"]["default"]["state"] == "open"
        if outage == "refused":
            start(acl_server)
        else:
            acl_server.thaw()
        # No user traffic: the probe's PINGs (answered NOPERM) close the breaker.
        wait_for(lambda: breaker.state is State.CLOSED, timeout=30,
                 what=f"the breaker to close after the {outage} outage")
        _use(acl_cache)
        assert acl_cache.get("k1") == 1
        assert check_redis_health() is True
        assert _view()[0] == 200
        assert get_redis_status()["breakers"]["default"]["state"] == "closed"


@pytest.mark.django_db
def test_health_and_status_report_a_user_that_may_do_nothing(
        settings: Any, acl_server: RedisServer) -> None:
    """A user denied everything but AUTH: NOPERM still proves Redis up to the health check; the
    integrations' own commands would fail, which is theirs to report, never the status's."""
    subprocess.run(["redis-cli", "-h", acl_server.host, "-p", str(acl_server.port), "ACL",
                    "SETUSER", "nobody", "on", ">nobody-pw", "-@all"],
                   check=True, capture_output=True, timeout=10)
    settings.REDIS_BREAKERS = {"default": {
        "URL": f"redis://nobody:nobody-pw@{acl_server.host}:{acl_server.port}/0"}}
    settings.REDIS_BREAKER_STATUS_TOKEN = "tok-acl"
    assert check_redis_health() is True
    report = get_redis_status()
    assert report["breakers"]["default"]["state"] == "closed"
    assert _view()[0] == 200


def _acl(server: RedisServer, *rules: str) -> None:
    subprocess.run(["redis-cli", "-h", server.host, "-p", str(server.port), "ACL", "SETUSER",
                    "no-del", *rules], check=True, capture_output=True, timeout=10)


@pytest.fixture
def no_del_cache(settings: Any, acl_server: RedisServer) -> Any:
    """``caches["default"]`` logged in as a user that may do everything but DEL/UNLINK."""
    _acl(acl_server, "on", ">no-del-pw", "~*", "&*", "+@all", "-del", "-unlink")
    settings.CACHES = caches_for(
        f"redis://no-del:no-del-pw@{acl_server.host}:{acl_server.port}/0")
    settings.REDIS_BREAKERS = {"default": {"FAILURE_THRESHOLD": 2, "RESET_TIMEOUT": 0.2,
                                           "MAX_RESET_TIMEOUT": 1.0}}
    return caches["default"]


def _outage(server: RedisServer, cache: Any,
            during: Callable[[], object] = lambda: None) -> None:
    """Redis frozen until the breaker opens (``during()`` then), thawed until it closes."""
    breaker = get_breaker("default")
    server.freeze()
    try:
        wait_for(lambda: (cache.get("other"), breaker.is_open)[1], timeout=30,
                 what="the breaker to open")
        during()
    finally:
        server.thaw()
    wait_for(lambda: breaker.state is State.CLOSED, timeout=30, what="the breaker to close")


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "cache_journal_replay_failed" in r.getMessage()]


def test_a_replay_refused_by_the_acl_waits_longer_each_time(
        no_del_cache: Any, acl_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """A user that may not DEL: the replay after an outage is refused (NOPERM, not an
    outage). The keys stay covered and the replay is tried again after 1 s, then 2 s...:
    reads every 20 ms do not start one each (they did, with an ERROR each). Once the user
    may DEL, a later attempt deletes the key from Redis."""
    cache = no_del_cache
    cache.set("k", "before")
    _outage(acl_server, cache, lambda: cache.set("k", "during"))
    caplog.set_level(logging.ERROR, logger="redis_breaker")
    wait_for(lambda: bool(_refusals(caplog)), timeout=30, what="the replay to be refused")
    before = len(_refusals(caplog))
    started = time.monotonic()
    reads = []
    for _ in range(30):
        reads.append(cache.get("k"))
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert reads == ["during"] * 30  # covered: the fallback's, never Redis's older copy
    # Attempts at about 0, 1, 3, 7 s... after the first: at most 1 + log2(elapsed + 1) of
    # them in any stretch of that length, however slow the machine was.
    assert len(_refusals(caplog)) - before <= 2 + math.floor(math.log2(elapsed + 1)), (
        elapsed, _refusals(caplog))
    first = _refusals(caplog)[0].getMessage()
    assert "NoPermissionError" in first
    assert "retry_in_s=1.000" in first
    assert "no-del-pw" not in first
    assert redis.Redis(host=acl_server.host, port=acl_server.port).exists(":1:k") == 1

    _acl(acl_server, "+del", "+unlink")
    journal = cache._bind().journal
    wait_for(lambda: not journal.active, timeout=30, what="the replay to succeed")
    assert redis.Redis(host=acl_server.host, port=acl_server.port).exists(":1:k") == 0
    assert cache.get("k") is None


def test_a_recovery_ends_the_wait_after_a_refused_replay(
        no_del_cache: Any, acl_server: RedisServer, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay refused (NOPERM), its next attempt 30 s away; the user is given DEL, and
    Redis goes away and comes back: the breaker's recovery starts the replay at once."""
    from redis_breaker.cache import journal as journal_module

    monkeypatch.setattr(journal_module, "_RETRY_REFUSED_S", 30.0)
    cache = no_del_cache
    caplog.set_level(logging.ERROR, logger="redis_breaker")
    cache.set("k", "before")
    _outage(acl_server, cache, lambda: cache.set("k", "during"))
    wait_for(lambda: any("retry_in_s=30.000" in r.getMessage() for r in _refusals(caplog)),
             timeout=30, what="the replay to be refused")
    _acl(acl_server, "+del", "+unlink")
    journal = cache._bind().journal
    assert journal.active
    started = time.monotonic()
    _outage(acl_server, cache)
    wait_for(lambda: not journal.active, timeout=20, what="the replay after the recovery")
    assert time.monotonic() - started < 30  # not the refused replay's own retry
    assert redis.Redis(host=acl_server.host, port=acl_server.port).exists(":1:k") == 0
