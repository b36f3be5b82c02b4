"""``safe_group_send``: a ``group_send`` for views, signals and tasks that never raises.

Through a ``BreakerChannelLayer`` it is the layer's own ``send_to_group``; any
other layer is guarded by the named breaker.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import DEFAULT_CHANNEL_LAYER, get_channel_layer

from redis_breaker._breaker import Breaker
from redis_breaker._registry import get_breaker

from .layer import BreakerChannelLayer, Message
from .pubsub import BreakerPubSubChannelLayer
from .remote import close_with_loop

__all__ = ["async_safe_group_send", "safe_group_send"]

_INTEGRATION = "channels"


async def async_safe_group_send(group: str, message: Message, *,
                                alias: str = DEFAULT_CHANNEL_LAYER,
                                breaker: str | Breaker = "default") -> bool:
    """``group_send`` that never raises because of Redis.

    True when Redis took the message (members in every process get it); False
    when it reached only this process's members, or no layer is configured.
    Layers other than ``BreakerChannelLayer`` are guarded by ``breaker``.
    """
    layer = get_channel_layer(alias)
    if layer is None:
        return False
    if isinstance(layer, (BreakerChannelLayer, BreakerPubSubChannelLayer)):
        return await layer.send_to_group(group, message)
    guard = breaker if isinstance(breaker, Breaker) else get_breaker(breaker)

    async def send() -> bool:
        await layer.group_send(group, message)
        return True

    try:
        return await guard.acall_with_fallback(send, _not_sent, integration=_INTEGRATION)
    finally:
        _close_pools_with_loop(layer)


def _not_sent() -> bool:
    return False


_pools_closing: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakSet[Any]] = (
    weakref.WeakKeyDictionary()
)
_pools_closing_lock = threading.Lock()


def _close_pools_with_loop(layer: Any) -> None:
    """Have a plain layer that keeps one loop's pools close them when that loop closes.

    channels_redis 4.0 keeps the pools of the last loop only (``pools_loop``)
    and drops them unclosed when a call comes on another loop: every
    ``safe_group_send`` (an ``async_to_sync`` loop of its own) would leave a
    connection to the garbage collector. Later releases close their pools
    with their loop, and have no ``pools_loop``.
    """
    loop = asyncio.get_running_loop()
    if getattr(layer, "pools_loop", None) is not loop:
        return
    with _pools_closing_lock:
        layers = _pools_closing.setdefault(loop, weakref.WeakSet())
        if layer in layers:
            return
        layers.add(layer)
    ref = weakref.ref(layer)

    def closing() -> Coroutine[Any, Any, None] | None:
        target = ref()
        if target is None or getattr(target, "pools_loop", None) is not loop:
            return None  # another loop's pools by now: this loop's were dropped already
        result: Coroutine[Any, Any, None] = target.close_pools()
        return result

    close_with_loop(loop, closing)


def safe_group_send(group: str, message: Message, *, alias: str = DEFAULT_CHANNEL_LAYER,
                    breaker: str | Breaker = "default") -> bool:
    """Sync form of ``async_safe_group_send``, for views, signals and tasks."""
    result: bool = async_to_sync(async_safe_group_send)(group, message, alias=alias,
                                                        breaker=breaker)
    return result


def _after_fork_in_child() -> None:
    global _pools_closing_lock
    _pools_closing_lock = threading.Lock()  # a thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
