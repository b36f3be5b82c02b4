"""Settings for Django's own cache tests (``cache/tests.py``), as its ``runtests.py`` sets them.

Read by the peers' runner (``tests/peers/run.py``) in a process of its own;
the Redis server's port comes from ``PEERS_REDIS_PORT``.
"""

from __future__ import annotations

import os

_PORT = os.environ.get("PEERS_REDIS_PORT", "6379")

SECRET_KEY = "django_tests_secret_key"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3"},
    "other": {"ENGINE": "django.db.backends.sqlite3"},
}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{_PORT}",
        "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
    },
}
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sites",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin.apps.SimpleAdminConfig",
    "django.contrib.staticfiles",
    "cache",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
MIGRATION_MODULES = {"auth": None, "contenttypes": None, "sessions": None}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LANGUAGE_CODE = "en"
SITE_ID = 1
STATIC_URL = "static/"
USE_TZ = False
