"""WSGI entry point: ``gunicorn --preload drill_app.wsgi:application`` (from ``benchmarks/``)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "drill_app.server_settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()

from .views import prepare  # noqa: E402

prepare()
