"""A chat consumer and ASGI apps bound to one channel layer alias each (one per "process")."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

ROOM = "room"


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Joins ROOM on connect; ``{"say": text}`` is group-sent to ROOM and echoed to every member."""

    def __init__(self, *args: Any, layer_alias: str = "default", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel_layer_alias = layer_alias

    async def connect(self) -> None:
        await self.channel_layer.group_add(ROOM, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(ROOM, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.channel_layer.group_send(
            ROOM, {"type": "chat.message", "text": content["say"]}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"], "me": self.channel_name})


def app_for(alias: str) -> Any:
    """The ASGI application one server process would run, on channel layer ``alias``."""
    return ChatConsumer.as_asgi(layer_alias=alias)
