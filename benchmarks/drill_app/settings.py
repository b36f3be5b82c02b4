"""Django settings for the drill, built from the Redis URLs the drill started.

Every contestant talks to the same Redis with the same socket timeouts, so the
comparison is between mechanisms, not configurations.
"""

from __future__ import annotations

from typing import Any

SOCKET_TIMEOUT = 0.5


def build(redis_url: str, database: str) -> dict[str, Any]:
    timeouts = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}

    def django_redis_cache(prefix: str) -> dict[str, Any]:
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url,
                "OPTIONS": dict(timeouts), "KEY_PREFIX": prefix}

    return {
        "SECRET_KEY": "redis-breaker-drill",
        "DEBUG": False,
        "USE_TZ": True,
        "INSTALLED_APPS": ["django.contrib.contenttypes", "redis_breaker"],
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database,
                                  "OPTIONS": {"timeout": 30}}},
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "CACHES": {
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            # redis-breaker: BreakerCache over Django's RedisCache, one breaker for the endpoint.
            "rb_primary": django_redis_cache("rb"),
            "rb": {"BACKEND": "redis_breaker.cache.BreakerCache",
                   "OPTIONS": {"PRIMARY": "rb_primary", "BREAKER": "drill"}},
            # The unprotected stacks.
            "django_redis_cache": django_redis_cache("dj"),
            "django_redis": {
                "BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url,
                "KEY_PREFIX": "dr",
                "OPTIONS": {"SOCKET_TIMEOUT": SOCKET_TIMEOUT,
                            "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT,
                            "IGNORE_EXCEPTIONS": True},
            },
            # pybreaker guards this one (see contestants.py).
            "pb_primary": django_redis_cache("pb"),
            "pb_local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                         "LOCATION": "pybreaker-fallback"},
        },
        "CHANNEL_LAYERS": {
            "rb": {"BACKEND": "redis_breaker.channels.BreakerChannelLayer",
                   "CONFIG": {"hosts": [{"address": redis_url, **timeouts}], "breaker": "drill",
                              "prefix": "rb"}},
            "plain": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                      "CONFIG": {"hosts": [{"address": redis_url, **timeouts}], "prefix": "plain"}},
            "pb": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                   "CONFIG": {"hosts": [{"address": redis_url, **timeouts}], "prefix": "pb"}},
        },
        "REDIS_BREAKERS": {"drill": {"URL": redis_url}},
        "LOGGING_CONFIG": None,
        # django-redis logs each exception IGNORE_EXCEPTIONS swallows: the drill counts them
        "DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS": True,
        "DJANGO_REDIS_LOGGER": "drill.ignored",
    }
