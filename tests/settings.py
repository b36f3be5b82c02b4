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
    # The outbox's admin (tests/celery/test_admin.py)
    "django.contrib.admin",
    "django.contrib.messages",
    "redis_breaker",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
# A file, not ":memory:": background threads (the outbox relay) open connections
# of their own and must see the rows the test committed.
# With the settings the outbox relies on (docs/celery.md, "The outbox on SQLite"; the
# backend reads them on Django 4.2 and 5.0 too).
DATABASES = {
    "default": {
        "ENGINE": "redis_breaker.backends.sqlite3",
        "NAME": ":memory:",
        "OPTIONS": {"transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"},
        "TEST": {"NAME": os.path.join(tempfile.gettempdir(),
                                      f"redis-breaker-tests-{os.getpid()}.sqlite3")},
    }
}
# The Celery tests run the outbox on SQLite and on a real PostgreSQL (tests/celery/databases.py).
DATABASE_ROUTERS = ["tests.celery.databases.OutboxRouter"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [],
              "APP_DIRS": True, "OPTIONS": {"context_processors": [
                  "django.template.context_processors.request",
                  "django.contrib.auth.context_processors.auth",
                  "django.contrib.messages.context_processors.messages"]}}]
REDIS_BREAKERS: dict[str, dict[str, object]] = {}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING_CONFIG = None
