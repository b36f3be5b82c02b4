"""ASGI entry point: ``uvicorn drill_app.asgi:application`` or daphne (from ``benchmarks/``).

HTTP goes to Django; ``ws/drill/`` is a WebSocket member of the drill's group.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drill_app.server_settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from .consumers import DrillConsumer  # noqa: E402
from .views import prepare  # noqa: E402

prepare()

application = ProtocolTypeRouter({
    "http": django_application,
    "websocket": URLRouter([path("ws/drill/", DrillConsumer.as_asgi())]),
})
