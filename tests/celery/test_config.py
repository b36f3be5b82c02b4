"""The table of the Celery settings drives both the system check and the runtime error."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from django.test import override_settings

from redis_breaker.celery import FALLBACKS, BreakerTask, bounded_transport_options
from redis_breaker.celery import config as celery_config
from redis_breaker.celery.dispatch import breaker_name_for, fallback_for
from redis_breaker.celery.worker_relay import relay_interval
from redis_breaker.checks import check_celery


@pytest.fixture
def app() -> Iterator[Celery]:
    """A Celery app with one BreakerTask; nothing here connects to its broker."""
    app = Celery("rb-config", broker="redis://127.0.0.1:1/0", task_cls=BreakerTask,
                 set_as_current=False)

    @app.task(name="t.noop", shared=False)
    def noop() -> None:
        return None

    try:
        yield app
    finally:
        app.close()


def _fallback(app: Celery) -> Any:
    return fallback_for(app.tasks["t.noop"])


def _breaker_name(app: Celery) -> Any:
    return breaker_name_for(app.tasks["t.noop"])


# setting, a value it refuses, where the runtime reads the Celery app's value.
CASES: list[tuple[celery_config.CelerySetting, Any, Callable[[Celery], Any]]] = [
    (celery_config.FALLBACK, "queue", _fallback),
    (celery_config.BREAKER_NAME, ["default"], _breaker_name),
    (celery_config.TIMEOUT, -1, bounded_transport_options),
    (celery_config.TIMEOUT, float("nan"), bounded_transport_options),
    (celery_config.RELAY_INTERVAL, True, relay_interval),
    (celery_config.ONCE, "yes", lambda app: celery_config.ONCE.checked(
        celery_config.ONCE.read(app))),
    (celery_config.ONCE_TTL, 0, lambda app: celery_config.ONCE_TTL.checked(
        celery_config.ONCE_TTL.read(app))),
]


@pytest.mark.parametrize(("setting", "bad", "runtime"), CASES,
                         ids=[f"{case[0].key}={case[1]!r}" for case in CASES])
def test_one_row_gives_the_check_and_the_runtime_error(
        app: Celery, setting: celery_config.CelerySetting, bad: Any,
        runtime: Callable[[Celery], Any]) -> None:
    """A refused value gives the check error of its row, and the row's runtime error where the
    app reads it."""
    with override_settings(**{setting.name: bad}):
        [error] = check_celery()
    assert (error.id, error.msg, error.hint) == (setting.id, setting.problem(bad), setting.hint)
    assert error.msg.startswith(f"{setting.name} is ")
    app.conf[setting.key] = bad
    with pytest.raises(ValueError, match=re.escape(f"{setting.subject} must be ")):
        runtime(app)


def test_every_setting_has_a_row_and_an_id() -> None:
    """Each of the six settings has its own row, check id and Celery key; the fallbacks are the
    three policies the check's hint names."""
    assert [s.id for s in celery_config.SETTINGS] == [
        "redis_breaker.E030", "redis_breaker.E031", "redis_breaker.E032", "redis_breaker.E033",
        "redis_breaker.E034", "redis_breaker.E035"]
    assert [s.key for s in celery_config.SETTINGS] == [
        "redis_breaker_fallback", "redis_breaker_name", "redis_breaker_timeout",
        "redis_breaker_relay_interval", "redis_breaker_once", "redis_breaker_once_ttl"]
    assert set(FALLBACKS) == {"outbox", "sync", "raise"}
    assert all(repr(f) in celery_config.FALLBACK.hint for f in FALLBACKS)


def test_defaults_apply_when_unset(app: Celery) -> None:
    """An app that sets none of them gets each row's default, and the check has nothing to say."""
    assert [s.read(app) for s in celery_config.SETTINGS] == ["outbox", "default", 1.0, 10.0,
                                                             True, 86400.0]
    assert check_celery() == []


@pytest.mark.parametrize(("setting", "check_id"), [("CELERY_BROKER_URL", "redis_breaker.E036"),
                                                   ("CELERY_RESULT_BACKEND", "redis_breaker.E037")])
@pytest.mark.parametrize(("url", "says"), [
    ("redis://:s3cret@127.0.0.1:70000/0", "port that is not a number from 1 to 65535"),
    (" redis://:s3cret@127.0.0.1:6379/0", "whitespace at its start or end"),
    ("redis://:s3cret@127.0.0.1:6379/zero", "path other than /<database number>"),
    # redis-py 5.0's parser does not name the parameter.
    ("redis://:s3cret@127.0.0.1:6379/0?socket_timeout=nope",
     "(invalid value|not a URL redis-py can read)"),
])
def test_celery_redis_urls_are_checked_without_showing_them(setting: str, check_id: str,
                                                            url: str, says: str) -> None:
    """A broker or result backend Redis URL redis-py cannot use is an error naming the setting
    and the fix, and the password never shows."""
    with override_settings(**{setting: url}):
        [error] = check_celery()
    assert error.id == check_id
    assert error.msg.startswith(f"{setting} ")
    assert re.search(says, error.msg)
    assert f"Set {setting} to the Redis URL" in error.hint
    assert "s3cret" not in error.msg + error.hint


def test_other_celery_urls_are_left_to_celery() -> None:
    """Good Redis URLs, failover lists and other transports' URLs give no error."""
    with override_settings(CELERY_BROKER_URL="redis://a:6379/0;redis://b:6380/0",
                           CELERY_RESULT_BACKEND="db+postgresql://u:p@db/x"):
        assert check_celery() == []
    with override_settings(CELERY_BROKER_URL="amqp://guest@localhost//",
                           CELERY_RESULT_BACKEND="redis://127.0.0.1:6379/1"):
        assert check_celery() == []
    with override_settings(CELERY_BROKER_URL="redis://a:6379/0;redis://b:99999/0"):
        [error] = check_celery()
    assert error.id == "redis_breaker.E036"
