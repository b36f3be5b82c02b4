"""Django settings for the test suite. Integrations' tests override CACHES etc. per test."""

import os
import tempfile

SECRET_KEY = "redis-breaker-tests"
DEBUG = False
USE_TZ = True
ROOT_URLCONF = "tests.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "redis_breaker",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
# A file, not ":memory:": background threads (the outbox relay) open connections
# of their own and must see the rows the test committed.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        "TEST": {"NAME": os.path.join(tempfile.gettempdir(),
                                      f"redis-breaker-tests-{os.getpid()}.sqlite3")},
    }
}
# The Celery tests run the outbox on SQLite and on a real PostgreSQL (tests/celery/databases.py).
DATABASE_ROUTERS = ["tests.celery.databases.OutboxRouter"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [],
              "APP_DIRS": True, "OPTIONS": {}}]
REDIS_BREAKERS: dict[str, dict[str, object]] = {}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING_CONFIG = None
