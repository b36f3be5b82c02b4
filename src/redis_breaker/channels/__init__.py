"""Django Channels through the breaker: ``BreakerChannelLayer``, ``BreakerPubSubChannelLayer``
and ``safe_group_send``.

``layer`` is the channel layer, ``pubsub`` the same for channels_redis's pub/sub
layer, ``remote`` its Redis side (channels_redis),
``local`` its in-process side, ``safe`` the helpers for code outside consumers.
"""

from __future__ import annotations

from .layer import BreakerChannelLayer
from .pubsub import BreakerPubSubChannelLayer
from .safe import async_safe_group_send, safe_group_send

__all__ = ["BreakerChannelLayer", "BreakerPubSubChannelLayer", "async_safe_group_send", "safe_group_send"]
