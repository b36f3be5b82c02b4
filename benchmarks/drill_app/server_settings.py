"""Settings for serving the drill's project over HTTP (gunicorn, uvicorn, daphne).

The same stack as the drill (``settings.build``), read from the environment:
``DRILL_REDIS_URL`` (required), ``DRILL_DATABASE`` (the SQLite file that holds
the task outbox; share it across worker processes) and ``DRILL_LEDGER_URL``
(where the Celery tasks record their runs; defaults to ``DRILL_REDIS_URL``).
``DRILL_EVENTS_DIR``, when set, receives one JSON-lines file per process with
every transition of the ``drill`` breaker (see ``views.prepare``).

    cd benchmarks
    DRILL_REDIS_URL=redis://127.0.0.1:6379/0 python -m django migrate \\
        --settings drill_app.server_settings
    DRILL_REDIS_URL=redis://127.0.0.1:6379/0 gunicorn --preload -w 2 -k gthread \\
        drill_app.wsgi:application
"""

from __future__ import annotations

import os

from .settings import build

os.environ.setdefault("DRILL_LEDGER_URL", os.environ["DRILL_REDIS_URL"])

globals().update(build(os.environ["DRILL_REDIS_URL"],
                       os.environ.get("DRILL_DATABASE", "drill-server.sqlite3")))

ROOT_URLCONF = "drill_app.urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
