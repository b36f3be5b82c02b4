"""System check of the channel layer's hosts addresses (``redis_breaker.E023``)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from redis_breaker.checks import check_channel_layers

SECRET = "s3cr3t-Pa55"
TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


def _run(*hosts: Any) -> list[Any]:
    layers = {"default": {"BACKEND": "redis_breaker.channels.BreakerChannelLayer",
                          "CONFIG": {"hosts": list(hosts)}}}
    with override_settings(CHANNEL_LAYERS=layers):
        return [m for m in check_channel_layers() if m.id == "redis_breaker.E023"]


@pytest.mark.parametrize(("host", "where", "says"), [
    ({"address": f"redis://:{SECRET}@127.0.0.1:99999/0", **TIMEOUTS}, '[0]["address"]',
     "port that is not a number from 1 to 65535"),
    ({"address": f" redis://:{SECRET}@127.0.0.1:6379/0", **TIMEOUTS}, '[0]["address"]',
     "whitespace at its start or end"),
    ({"address": f"redis://:{SECRET}@red is:6379/0", **TIMEOUTS}, '[0]["address"]',
     "whitespace in its host"),
    ({"address": f"http://:{SECRET}@127.0.0.1:6379/0", **TIMEOUTS}, '[0]["address"]',
     "scheme 'http'"),
    ({"address": f"redis://:{SECRET}@127.0.0.1:6379/0?socket_timeout=soon"},
     '[0]["address"]', "'socket_timeout'"),
    (f"redis+sentinel://:{SECRET}@127.0.0.1:26379/mymaster/0", "[0]",
     "channels_redis does not read"),
    ({"host": "127.0.0.1", "port": 70000, "password": SECRET, **TIMEOUTS}, "[0]",
     "port that is int 70000"),
    ({"host": "127.0.0.1 ", "port": 6379, **TIMEOUTS}, "[0]", "whitespace in its host"),
    (("127.0.0.1", "6379"), "[0]", "port that is str"),
])
def test_unusable_address_names_the_key_and_the_fix(host: Any, where: str, says: str) -> None:
    """An address redis-py cannot use is E023, naming the hosts entry and the fix, never the password."""
    found = _run(host)
    assert len(found) == 1, found
    message = found[0]
    text = f"{message.msg} {message.hint}"
    assert f'CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]{where}' in message.msg
    assert says in message.msg
    assert "percent-encode" in message.hint
    assert SECRET not in text


def test_usable_addresses_pass() -> None:
    assert _run({"address": f"redis://:{SECRET}@127.0.0.1:6379/0", **TIMEOUTS},
                {"host": "127.0.0.1", "port": 6380, **TIMEOUTS},
                ("127.0.0.1", 6381), "unix:///run/redis.sock",
                {"sentinels": [("127.0.0.1", 26379)], "master_name": "m", **TIMEOUTS}) == []
