"""Django settings of a worker subprocess (test_worker.py, test_worker_relay.py): the test's own
database.

``RB_DATABASE`` is the test's outbox database (SQLite or PostgreSQL) as JSON.
"""

import json
import os

from tests.settings import *  # noqa: F403

DATABASES = {"default": json.loads(os.environ["RB_DATABASE"])}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["OPTIONS"] = {**DATABASES["default"].get("OPTIONS", {}), "timeout": 20}
CELERY_BROKER_URL = os.environ["RB_BROKER_URL"]
# The breaker's host-wide state in the test's directory, not the user's default one.
if os.environ.get("RB_STATE_DIR"):
    REDIS_BREAKERS = {"default": {"URL": CELERY_BROKER_URL,
                                  "STATE_DIR": os.environ["RB_STATE_DIR"]}}
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Messages a worker held when the broker vanished come back quickly.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 10}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_REDIS_BREAKER_RELAY_INTERVAL = float(os.environ.get("RB_RELAY_INTERVAL", "0.5"))
# The library's events on stderr, which the test reads back from the worker's log.
LOGGING_CONFIG = "logging.config.dictConfig"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"redis_breaker": {"handlers": ["stderr"], "level": "INFO"}},
}
