"""The Redis password never shows: logs, caller exceptions, status view and command, metrics, outbox.

Every test runs the integrations against a real password-protected
redis-server, through an outage (or a wrong password) and back, and then
searches every surface for the password in plain and URL-quoted form.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Iterator
from io import StringIO
from typing import Any
from urllib.parse import quote

import pytest
from celery import Celery
from django.contrib.auth.models import User
from django.core.cache import caches
from django.core.management import call_command
from django.forms.models import model_to_dict
from django.test import Client
from prometheus_client import CollectorRegistry, generate_latest

from redis_breaker import Breaker, BreakerConfig, BreakerOpenError, State, get_breaker
from redis_breaker.celery import BreakerTask
from redis_breaker.channels import BreakerChannelLayer
from redis_breaker.health import check_redis_health, get_redis_status
from redis_breaker.models import OutboxMessage
from redis_breaker.outbox import drain
from redis_breaker.prometheus import BreakerCollector
from redis_breaker.testing import capture_events
from tests.harness import RedisServer

from .cache.conftest import caches_for, primary_entry, wait_for

# Characters that URL-quoting changes, so both spellings are looked for.
PASSWORD = "pw-8Kq/z+secret"
WRONG = "wrong-3Vt/x+secret"
SECRETS = (PASSWORD, quote(PASSWORD, safe=""), WRONG, quote(WRONG, safe=""))


def url_with(server: RedisServer, password: str) -> str:
    return f"redis://:{quote(password, safe='')}@{server.host}:{server.port}/0"


def leaks(*texts: str) -> list[str]:
    """The secrets found in ``texts`` (empty when clean)."""
    joined = "\n".join(texts)
    return [s for s in SECRETS if s in joined]


def text_of(value: Any) -> str:
    return json.dumps(value, default=repr, sort_keys=True)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record: its rendered message and its extra fields."""
    return "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records)


def described(exc: BaseException) -> str:
    """What a caller can see of an exception: str, repr and the chained traceback text."""
    return f"{exc!s} {exc!r} {''.join(traceback.format_exception(exc))}"


@pytest.fixture
def locked() -> Iterator[RedisServer]:
    """A real redis-server that requires PASSWORD."""
    with RedisServer(password=PASSWORD) as server:
        yield server


@pytest.fixture
def locked_caches(settings: Any, locked: RedisServer) -> RedisServer:
    """Two BreakerCaches over the locked server, Django's RedisCache and django-redis, on two breakers."""
    url = url_with(locked, PASSWORD)
    settings.CACHES = {
        **caches_for(url),
        "dj_redis": primary_entry("django_redis", url),
        "other": {"BACKEND": "redis_breaker.cache.BreakerCache",
                  "OPTIONS": {"PRIMARY": "dj_redis", "BREAKER": "other"}},
    }
    settings.REDIS_BREAKERS = {"default": {"RESET_TIMEOUT": 0.05, "MAX_RESET_TIMEOUT": 0.2},
                               "other": {"RESET_TIMEOUT": 0.05, "MAX_RESET_TIMEOUT": 0.2}}
    settings.ROOT_URLCONF = "tests.cache.urls"
    return locked


@pytest.fixture
def celery_app(locked: RedisServer) -> Iterator[Celery]:
    """A Celery app brokered by the locked server, on the "default" breaker."""
    app = Celery("rb-secrets", broker=url_with(locked, PASSWORD), task_cls=BreakerTask,
                 set_as_current=False)
    app.conf.task_ignore_result = True

    @app.task(name="s.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="s.add_raise", breaker_fallback="raise", shared=False)
    def add_raise(x: int, y: int) -> int:
        return x + y

    try:
        yield app
    finally:
        _join_relays()
        cached = getattr(app, "_redis_breaker_producers", None)
        if cached is not None:
            cached[1].connections.force_close_all()
        app.close()


def _join_relays() -> None:
    from redis_breaker.celery import outbox

    for relay in list(outbox._relays.values()):
        thread = relay.thread
        if thread is not None:
            thread.join(10)


def _use_caches() -> None:
    for alias in ("default", "other"):
        cache = caches[alias]
        cache.set("k", "v")
        cache.get("k")
        cache.get_many(["k", "j"])
        cache.delete("k")
        with pytest.raises(ValueError, match="not found") as raised:
            cache.incr("never-set")
        assert leaks(described(raised.value)) == []


def _status_surfaces() -> str:
    """The status view for anonymous, staff and token, the command and the metrics, as text."""
    anonymous = Client()
    staff = Client()
    user, _ = User.objects.get_or_create(username="ops-secrets", defaults={"is_staff": True})
    staff.force_login(user)
    pages = [
        anonymous.get("/status/").content.decode(),
        staff.get("/status/").content.decode(),
        anonymous.get("/status/", headers={"Authorization": "Bearer tok-1"}).content.decode(),
        anonymous.get("/status/", headers={"X-Redis-Breaker-Token": "tok-1"}).content.decode(),
    ]
    assert "last_error" in pages[1]
    assert "last_error" in pages[2]
    assert "last_error" in pages[3]
    assert "last_error" not in pages[0]
    table, as_json = StringIO(), StringIO()
    call_command("redis_breaker", "status", stdout=table)
    call_command("redis_breaker", "status", "--json", stdout=as_json)
    json.loads(as_json.getvalue())
    registry = CollectorRegistry()
    registry.register(BreakerCollector())
    metrics = generate_latest(registry).decode()
    assert 'redis_breaker_state{breaker="default"' in metrics
    return "\n".join([*pages, table.getvalue(), as_json.getvalue(), metrics,
                      text_of(get_redis_status())])


@pytest.mark.django_db(transaction=True)
def test_cache_outage_and_recovery_show_no_password(
        locked_caches: RedisServer, settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Through a refused outage and its recovery neither cache backend shows the password anywhere."""
    settings.REDIS_BREAKER_STATUS_TOKEN = "tok-1"
    caplog.set_level(logging.DEBUG)
    with capture_events() as events:
        _use_caches()
        locked_caches.stop()
        for _ in range(6):
            _use_caches()
        assert get_breaker("default").state is State.OPEN
        assert get_breaker("other").state is State.OPEN
        assert check_redis_health() is False
        while_open = _status_surfaces()
        assert "Connection refused" in while_open  # the error is shown, only without credentials
        assert "***" in while_open  # the adopted URL is shown masked to staff
        locked_caches.start()
        wait_for(lambda: get_breaker("default").state is State.CLOSED
                 and get_breaker("other").state is State.CLOSED, what="both breakers to close")
        _use_caches()
        after = _status_surfaces()
    assert {"breaker_state_changed", "fallback_used"} <= {e["event"] for e in events}
    assert leaks(text_of(events), logged(caplog), while_open, after) == []


@pytest.mark.django_db(transaction=True)
def test_wrong_password_is_loud_but_never_shown(
        settings: Any, locked: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """A wrong password opens the breaker with a loud event that names the problem, not the password."""
    settings.CACHES = caches_for(url_with(locked, WRONG))
    settings.REDIS_BREAKERS = {"default": {"PROBE": False}}
    settings.REDIS_BREAKER_STATUS_TOKEN = "tok-1"
    settings.ROOT_URLCONF = "tests.cache.urls"
    caplog.set_level(logging.DEBUG)
    cache = caches["default"]
    with capture_events() as events:
        for _ in range(6):
            assert cache.get("k") is None  # served by the fallback, never an exception
        status = _status_surfaces()
    assert get_breaker().is_open
    loud = [e for e in events if e["event"] == "redis_misconfigured"]
    assert loud
    assert loud[0]["log_level"] == "error"
    assert "password" in loud[0]["hint"]
    assert leaks(text_of(events), logged(caplog), status) == []


@pytest.mark.django_db(transaction=True)
def test_celery_outbox_errors_and_relay_show_no_password(
        celery_app: Celery, locked: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """Outboxed dispatches, raised dispatch errors, failed rows and the relay never carry the password."""
    caplog.set_level(logging.DEBUG)
    add, add_raise = celery_app.tasks["s.add"], celery_app.tasks["s.add_raise"]
    raised: list[BaseException] = []
    with capture_events() as events:
        add.delay(1, 2)  # published while healthy
        locked.stop()
        ids = [add.apply_async((i, 1), countdown=30, headers={"h": "v"}).id for i in range(6)]
        for _ in range(2):
            try:
                add_raise.delay(1, 1)
            except Exception as exc:  # kombu's connection error, then BreakerOpenError
                raised.append(exc)
        assert any(isinstance(e, BreakerOpenError) for e in raised)
        rows = list(OutboxMessage.objects.order_by("id"))
        assert [r.task_id for r in rows] == ids
        row_text = text_of([model_to_dict(r) for r in rows])
        locked.start()
        wait_for(lambda: not OutboxMessage.objects.filter(status="pending").exists(),
                 what="the relay to publish the outbox")
        _join_relays()
        OutboxMessage.objects.create(task_id="ghost", task_name="gone.renamed", breaker="default")
        drain(app=celery_app)
        failed = text_of(list(OutboxMessage.objects.values()))
    assert "unregistered task" in failed
    assert {"fallback_used", "outbox_unknown_task"} <= {e["event"] for e in events}
    assert leaks(row_text, failed, text_of(events), logged(caplog),
                 *(described(e) for e in raised)) == []


def _layer(server: RedisServer, breaker: Breaker, host_form: str) -> BreakerChannelLayer:
    timeouts = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
    if host_form == "url":
        host: dict[str, Any] = {"address": url_with(server, PASSWORD), **timeouts}
    else:
        host = {"host": server.host, "port": server.port, "password": PASSWORD, **timeouts}
    return BreakerChannelLayer([host], breaker=breaker)


def _fast(name: str) -> Breaker:
    return Breaker(name, BreakerConfig(reset_timeout=0.05, max_reset_timeout=0.2,
                                       failure_rate=None))


@pytest.mark.parametrize("host_form", ["url", "dict"])
async def test_channels_outage_shows_no_password(
        locked: RedisServer, host_form: str, caplog: pytest.LogCaptureFixture) -> None:
    """The channel layer through an outage and back: events, logs, errors and the status are clean."""
    caplog.set_level(logging.DEBUG)
    breaker = _fast(f"chat-{host_form}")
    layer = _layer(locked, breaker, host_form)
    raised: list[BaseException] = []
    try:
        with capture_events() as events:
            channel = await layer.new_channel()
            await layer.group_add("room", channel)
            await layer.group_send("room", {"type": "hello"})
            assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "hello"
            locked.stop()
            for _ in range(6):
                await layer.group_send("room", {"type": "during"})
            assert breaker.is_open
            assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "during"
            status = text_of(breaker.stats())
            locked.start()
            deadline = asyncio.get_running_loop().time() + 15
            # Restarted empty: "after" reaches the channel once its membership is re-applied.
            while not any(e["event"] == "channels_groups_resynced" for e in events):
                assert asyncio.get_running_loop().time() < deadline, "groups not resynced"
                await asyncio.sleep(0.02)
            await layer.group_send("room", {"type": "after"})
            received = [(await asyncio.wait_for(layer.receive(channel), 5))["type"]]
            while received[-1] == "during" and len(received) < 10:
                received.append((await asyncio.wait_for(layer.receive(channel), 5))["type"])
            assert received[-1] == "after"
            locked.stop()
            for _ in range(6):  # flush needs Redis, and says so to its caller
                try:
                    await layer.flush()
                except Exception as exc:
                    raised.append(exc)
            assert len(raised) == 6
            assert any(isinstance(e, BreakerOpenError) for e in raised)
    finally:
        await layer.close()
        breaker.reset()
    assert breaker.stats().url is not None
    assert "***" in str(breaker.stats().url)
    assert leaks(text_of(events), logged(caplog), status,
                 *(described(e) for e in raised)) == []


def test_channel_layer_str_shows_no_password(locked: RedisServer) -> None:
    """str() of a BreakerChannelLayer (as logs and error pages show it) masks the password."""
    layer = _layer(locked, _fast("chat-str"), "url")
    assert leaks(str(layer), repr(layer)) == []


def test_breaker_config_repr_shows_no_password(locked: RedisServer) -> None:
    """repr() of a breaker's configuration masks the password of its URL."""
    config = BreakerConfig(url=url_with(locked, PASSWORD))
    assert leaks(repr(config), str(config)) == []
