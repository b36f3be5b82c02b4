"""The drill's WSGI application with ``GET /_census/`` (see ``census``)."""

from __future__ import annotations

from census import wsgi

from drill_app.wsgi import application as drill

application = wsgi(drill)
