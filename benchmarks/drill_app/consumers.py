"""A WebSocket consumer of the drill's group: receives what ``/group-send/`` sends."""

from __future__ import annotations

import os
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .contestants import GROUP


class DrillConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Joins the drill's group; every ``drill.msg`` is forwarded as ``{"n": ..., "pid": ...}``.

    ``{"send": n}`` from the client is group-sent, so clients of other
    processes receive it through Redis (or only this process's while it is down).
    """

    channel_layer_alias = "rb"

    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.channel_layer.group_send(GROUP, {"type": "drill.msg", "n": content["send"]})

    async def drill_msg(self, event: dict[str, Any]) -> None:
        await self.send_json({"n": event["n"], "pid": os.getpid()})
