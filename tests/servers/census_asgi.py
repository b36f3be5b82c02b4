"""The drill's ASGI application with ``GET /_census/`` (see ``census``)."""

from __future__ import annotations

from census import asgi

from drill_app.asgi import application as drill

application = asgi(drill)
