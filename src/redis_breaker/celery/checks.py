"""Django system checks of the ``CELERY_REDIS_BREAKER_*`` settings (E030 to E037), and
of the kombu a Redis broker runs on (W031).

Registered by ``redis_breaker.checks.check_celery``; the accepted values, the
messages and the ids come from the settings table in ``config``.
"""

from __future__ import annotations

import importlib.metadata
import re

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from redis_breaker._config import url_problem

from .config import SETTINGS

__all__ = ["check_kombu", "check_settings", "check_urls"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def check_settings() -> list[CheckMessage]:
    """One error per ``CELERY_REDIS_BREAKER_*`` setting that its row of the table refuses."""
    found: list[CheckMessage] = []
    for setting in SETTINGS:
        # Celery's settings as the Django project holds them (the CELERY namespace).
        message = setting.problem(getattr(settings, setting.name, None))
        if message is not None:
            found.append(Error(message, hint=setting.hint, id=setting.id))
    return found + check_urls() + check_kombu()


#: kombu's Redis transport (``sentinel://`` included) with its broker-restart fix from 5.4.0.
_KOMBU_REDIS = ("redis://", "rediss://", "unix://", "redis+socket://", "sentinel://")
_KOMBU_FIXED = (5, 4)


def check_kombu(version: str | None = None) -> list[CheckMessage]:
    """W031: a Redis broker on kombu before 5.4, whose worker can stop consuming after the
    broker restarts (docs/celery.md). ``version``: kombu's (the installed one by default)."""
    broker = getattr(settings, "CELERY_BROKER_URL", None)
    if not isinstance(broker, str) or not broker.strip().lower().startswith(_KOMBU_REDIS):
        return []
    if broker.strip().lower().startswith(_REDIS_SCHEMES) and url_problem(broker) is not None:
        return []  # E036 says what to fix first
    if version is None:
        try:
            version = importlib.metadata.version("kombu")
        except importlib.metadata.PackageNotFoundError:
            return []
    release = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if len(release) < 2 or release >= _KOMBU_FIXED:
        return []
    return [Warning(
        f"kombu {version} with a Redis broker: a Celery worker can stop consuming after "
        "the broker restarts (kombu 5.4.0 changed that path of its Redis transport); the "
        "tasks the outbox relays after an outage then wait in Redis until the worker "
        "restarts.",
        hint="Install kombu 5.4 or later (Celery 5.3 accepts it: kombu>=5.3.4,<6.0).",
        id="redis_breaker.W031")]


#: The Celery URLs the integration adopts (the breaker's probe, the outbox relay, the
#: workers' claims, the bounded result backend), with their check ids.
_URLS = (
    ("CELERY_BROKER_URL", "redis_breaker.E036", "the broker"),
    ("CELERY_RESULT_BACKEND", "redis_breaker.E037", "the result backend"),
)


def check_urls() -> list[CheckMessage]:
    """One error per Redis URL of Celery's settings that redis-py could not use.

    Judged as ``REDIS_BREAKERS``' ``URL`` is (``url_problem``: redis-py's parser,
    the port range, whitespace, ...); the message never repeats the URL. URLs of
    other transports (``amqp://``, ``db+postgresql://``, ``sentinel://`` ...) are
    Celery's to judge.
    """
    found: list[CheckMessage] = []
    for name, check_id, what in _URLS:
        value = getattr(settings, name, None)
        if not isinstance(value, str) or not value.strip().lower().startswith(_REDIS_SCHEMES):
            continue
        # kombu accepts several broker URLs separated by ";" (failover): each one is read.
        for url in (value.split(";") if name == "CELERY_BROKER_URL" else [value]):
            problem = url_problem(url)
            if problem is not None:
                found.append(Error(
                    f"{name} {problem}.",
                    hint=f"Set {name} to the Redis URL of {what} that redis-py can read: "
                         "redis://[user:password@]host:port/db, rediss://... or "
                         "unix:///path/to/redis.sock?db=N; percent-encode any of @ : / ? # % "
                         "and spaces in the user name or password.",
                    id=check_id,
                ))
                break
    return found
