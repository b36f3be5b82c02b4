"""safe_group_send / async_safe_group_send: seed-compatible, never raising because of Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import override_settings

from redis_breaker import get_breaker
from redis_breaker.shortcuts import async_safe_group_send, safe_group_send
from tests.harness import RedisServer

from .conftest import hosts


def layers(server: RedisServer, backend: str) -> dict[str, object]:
    return {"default": {"BACKEND": backend, "CONFIG": {"hosts": hosts(server)}}}


@pytest.fixture
def breaker_layer(redis_server: RedisServer) -> Iterator[None]:
    """CHANNEL_LAYERS with BreakerChannelLayer on the shared "default" breaker."""
    with override_settings(CHANNEL_LAYERS=layers(redis_server,
                                                 "redis_breaker.channels.BreakerChannelLayer")):
        yield


def test_safe_group_send_reaches_redis_when_healthy(
    breaker_layer: None, redis_server: RedisServer
) -> None:
    """Healthy: True, and the message is waiting in Redis for the member."""
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("news", channel)
    assert safe_group_send("news", {"type": "news.item", "n": 1}) is True
    assert async_to_sync(layer.receive)(channel) == {"type": "news.item", "n": 1}


def test_safe_group_send_false_but_delivered_locally_while_open(breaker_layer: None) -> None:
    """Open: False (only this process's members got it), the local member still receives it."""
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("news", channel)
    get_breaker("default").force_open()
    assert safe_group_send("news", {"type": "news.item", "n": 2}) is False
    assert async_to_sync(layer.receive)(channel) == {"type": "news.item", "n": 2}


def test_safe_group_send_guards_a_plain_channels_redis_layer(redis_server: RedisServer) -> None:
    """With plain channels_redis and Redis stopped: False, no exception, and the breaker counts it."""
    with override_settings(CHANNEL_LAYERS=layers(redis_server,
                                                 "channels_redis.core.RedisChannelLayer")):
        assert safe_group_send("news", {"type": "news.item"}) is True
        redis_server.stop()
        assert safe_group_send("news", {"type": "news.item"}) is False
        assert get_breaker("default").stats().consecutive_failures == 1


async def test_async_safe_group_send_without_a_layer() -> None:
    """No channel layer configured: False rather than an AttributeError."""
    with override_settings(CHANNEL_LAYERS={}):
        assert await async_safe_group_send("news", {"type": "news.item"}) is False
