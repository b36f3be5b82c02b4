"""The redis+sentinel:// URL: parsing, validation, redaction, and what each integration derives."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import Error
from django.test import override_settings

from redis_breaker import BreakerConfig
from redis_breaker._config import validate_settings
from redis_breaker._sentinel import SentinelTarget, parse_sentinel_url, sentinel_url
from redis_breaker.cache.backend import _first_location, uses_sentinel
from redis_breaker.celery import sentinel_probe_url
from redis_breaker.channels.remote import probe_url
from redis_breaker.checks import check_breakers, check_caches, check_channel_layers

SECRET = "s3cr3t-pw"
SENTINELS = [("127.0.0.1", 26379), ("127.0.0.1", 26380)]


def test_parse_names_the_sentinels_the_group_and_the_db() -> None:
    target = parse_sentinel_url(
        f"redis+sentinel://app:{SECRET}@10.0.0.1:26379,10.0.0.2,[::1]:26381/mymaster/3"
        "?sentinel_password=sp&sentinel_username=su")
    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26381)),
        master_name="mymaster", db=3, username="app", password=SECRET,
        sentinel_username="su", sentinel_password="sp")
    assert SECRET not in repr(target)


def test_password_without_a_username_and_db_zero_by_default() -> None:
    target = parse_sentinel_url(f"redis+sentinel://:{SECRET}@h:1/m")
    assert (target.username, target.password, target.db) == (None, SECRET, 0)


def test_sentinel_url_round_trips() -> None:
    url = sentinel_url(SENTINELS, "my master", db=2, password="p@ss:word",
                       sentinel_password="x&y")
    target = parse_sentinel_url(url)
    assert target.sentinels == tuple(SENTINELS)
    assert (target.master_name, target.db, target.password, target.sentinel_password) == (
        "my master", 2, "p@ss:word", "x&y")


@pytest.mark.parametrize(("url", "why"), [
    ("redis+sentinel://h:26379", "names no master group"),
    ("redis+sentinel:///mymaster", "names no sentinel"),
    ("redis+sentinel://h:99999/m", "invalid port"),
    ("redis+sentinel://h:x/m", "invalid port"),
    ("redis+sentinel://h,,k/m", "empty sentinel address"),
    ("redis+sentinel://h/m/zero", "not an integer"),
    ("redis+sentinel://h/m/0/extra", "path other than"),
    ("redis+sentinel://h/m?master=x", "unknown query parameters"),
])
def test_malformed_urls_are_configuration_errors(url: str, why: str) -> None:
    """BreakerConfig raises naming the field; the Django check is E005 with the fix."""
    with pytest.raises(ValueError, match=why) as info:
        BreakerConfig(url=url)
    assert "BreakerConfig.url" in str(info.value)
    [problem] = validate_settings({"URL": url})
    assert problem.kind == "value"
    assert why in problem.message()
    assert "redis+sentinel://host:port,host:port/master_name" in problem.fix()


def test_a_bad_sentinel_url_in_settings_is_e005_without_the_password() -> None:
    url = f"redis+sentinel://:{SECRET}@h:1"
    with override_settings(REDIS_BREAKERS={"default": {"URL": url}}):
        [error] = check_breakers()
    assert error.id == "redis_breaker.E005"
    assert SECRET not in error.msg + str(error.hint)
    assert "names no master group" in error.msg


def test_repr_and_stats_mask_both_passwords() -> None:
    url = sentinel_url(SENTINELS, "m", password=SECRET, sentinel_password=SECRET)
    config = BreakerConfig(url=url)
    assert SECRET not in repr(config)
    from redis_breaker import Breaker

    stats = Breaker("masked", config).stats()
    assert stats.url is not None
    assert SECRET not in stats.url
    assert stats.url.startswith("redis+sentinel://:***@127.0.0.1:26379,127.0.0.1:26380/m/0")


# ---------------------------------------------------------------- derivation
def django_redis_sentinel(**options: Any) -> dict[str, Any]:
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://:{SECRET}@mymaster/1",
        "OPTIONS": {"CLIENT_CLASS": "django_redis.client.SentinelClient",
                    "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                    "SENTINELS": SENTINELS, "SOCKET_TIMEOUT": 0.5,
                    "SOCKET_CONNECT_TIMEOUT": 0.5, **options},
    }


def test_cache_probes_the_sentinels_of_a_django_redis_sentinel_primary() -> None:
    """The LOCATION's host is a group name: the probe URL names the sentinels instead."""
    entry = django_redis_sentinel(SENTINEL_KWARGS={"password": "sp"})
    assert uses_sentinel(entry)
    target = parse_sentinel_url(_first_location(entry) or "")
    assert target.sentinels == tuple(SENTINELS)
    assert (target.master_name, target.db, target.password, target.sentinel_password) == (
        "mymaster", 1, SECRET, "sp")


def test_cache_options_password_wins_over_the_location() -> None:
    entry = django_redis_sentinel(PASSWORD="other")
    assert parse_sentinel_url(_first_location(entry) or "").password == "other"


@pytest.mark.parametrize("option", ["CLIENT_CLASS", "CONNECTION_FACTORY"])
def test_cache_sentinel_detected_by_either_option(option: str) -> None:
    entry = django_redis_sentinel()
    options = entry["OPTIONS"]
    del options["SENTINELS"]
    for other in ("CLIENT_CLASS", "CONNECTION_FACTORY"):
        if other != option:
            del options[other]
    assert uses_sentinel(entry)
    assert _first_location(entry) is None  # never redis://mymaster/1, which would never answer


def test_plain_redis_primaries_are_unchanged() -> None:
    entry = {"BACKEND": "django.core.cache.backends.redis.RedisCache",
             "LOCATION": "redis://127.0.0.1:6379/0"}
    assert not uses_sentinel(entry)
    assert _first_location(entry) == "redis://127.0.0.1:6379/0"


def test_channels_sentinel_host_gives_a_sentinel_probe_url() -> None:
    url = probe_url([{"sentinels": SENTINELS, "master_name": "mymaster", "db": 2,
                      "password": SECRET, "sentinel_kwargs": {"password": "sp"},
                      "socket_timeout": 0.5}])
    target = parse_sentinel_url(url or "")
    assert (target.sentinels, target.master_name, target.db) == (tuple(SENTINELS), "mymaster", 2)
    assert (target.password, target.sentinel_password) == (SECRET, "sp")
    assert probe_url([{"sentinels": "nope", "master_name": "m"}]) is None


def test_celery_sentinel_broker_gives_a_sentinel_probe_url() -> None:
    broker = f"sentinel://:{SECRET}@127.0.0.1:26379/4;sentinel://127.0.0.1:26380"
    url = sentinel_probe_url(broker, {"master_name": "mymaster",
                                      "sentinel_kwargs": {"password": "sp"}})
    target = parse_sentinel_url(url or "")
    assert (target.sentinels, target.master_name, target.db) == (tuple(SENTINELS), "mymaster", 4)
    assert (target.password, target.sentinel_password) == (SECRET, "sp")
    assert sentinel_probe_url(broker, {}) is None  # kombu needs master_name too


# -------------------------------------------------------------------- checks
def _cache_settings(primary: dict[str, Any]) -> dict[str, Any]:
    return {"redis": primary,
            "default": {"BACKEND": "redis_breaker.cache.BreakerCache",
                        "OPTIONS": {"PRIMARY": "redis"}}}


def test_a_derivable_sentinel_primary_passes_the_checks() -> None:
    with override_settings(CACHES=_cache_settings(django_redis_sentinel())):
        assert check_caches() == []


def test_an_underivable_sentinel_primary_without_url_is_e018() -> None:
    entry = django_redis_sentinel()
    del entry["OPTIONS"]["SENTINELS"]
    with override_settings(CACHES=_cache_settings(entry), REDIS_BREAKERS={}):
        [error] = check_caches()
    assert isinstance(error, Error)
    assert error.id == "redis_breaker.E018"
    assert 'CACHES["redis"]' in error.msg
    assert 'REDIS_BREAKERS["default"]["URL"] = "redis+sentinel://' in str(error.hint)
    assert SECRET not in error.msg + str(error.hint)
    with override_settings(CACHES=_cache_settings(entry), REDIS_BREAKERS={
            "default": {"URL": "redis+sentinel://127.0.0.1:26379/mymaster"}}):
        assert check_caches() == []


def _layers(host: dict[str, Any]) -> dict[str, Any]:
    return {"default": {"BACKEND": "redis_breaker.channels.BreakerChannelLayer",
                        "CONFIG": {"hosts": [host]}}}


def test_channels_sentinel_host_checks() -> None:
    good = {"sentinels": SENTINELS, "master_name": "mymaster", "socket_timeout": 0.5,
            "socket_connect_timeout": 0.5}
    with override_settings(CHANNEL_LAYERS=_layers(good)):
        assert check_channel_layers() == []
    bad = {**good, "sentinels": ["127.0.0.1:26379"]}
    with override_settings(CHANNEL_LAYERS=_layers(bad), REDIS_BREAKERS={}):
        [error] = check_channel_layers()
    assert error.id == "redis_breaker.E022"
    assert 'CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]' in error.msg
    with override_settings(CHANNEL_LAYERS=_layers(bad), REDIS_BREAKERS={
            "default": {"URL": "redis+sentinel://127.0.0.1:26379/mymaster"}}):
        assert check_channel_layers() == []
