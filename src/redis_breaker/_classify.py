"""Which exceptions say "Redis is unreachable" and so count against a breaker.

Connection-level errors count. Errors that are about the data or the command
(``ValueError`` from ``incr`` on a missing key, ``ResponseError`` such as
WRONGTYPE), cancellation and interrupts do not, and change no counter.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys

import redis.exceptions as rex

__all__ = ["is_failure", "is_full", "is_misconfiguration"]

_NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EHOSTUNREACH", "ENETUNREACH",
        "ENETDOWN", "EHOSTDOWN", "ETIMEDOUT", "EPIPE", "ENOTCONN", "EADDRNOTAVAIL", "ESHUTDOWN",
    )
    if hasattr(errno, name)
)

# Response errors that mean "this node cannot serve us now", not "bad command".
_UNAVAILABLE_RESPONSES: tuple[type[BaseException], ...] = (rex.ReadOnlyError,)
for _name in ("MasterDownError", "TryAgainError", "ClusterDownError"):
    if hasattr(rex, _name):
        _UNAVAILABLE_RESPONSES += (getattr(rex, _name),)

_FAILURES: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # includes BusyLoadingError, AuthenticationError, MaxConnectionsError
    rex.TimeoutError,
    ConnectionError,  # builtin: refused, reset, aborted, broken pipe
    TimeoutError,  # builtin, socket.timeout and asyncio.TimeoutError on 3.11+
    asyncio.TimeoutError,
    socket.gaierror,
    *_UNAVAILABLE_RESPONSES,
)

_NEVER: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
)


def _kombu_operational() -> type[BaseException] | None:
    module = sys.modules.get("kombu.exceptions")
    return getattr(module, "OperationalError", None) if module is not None else None


def _django_redis_interrupted() -> type[BaseException] | None:
    module = sys.modules.get("django_redis.exceptions")
    return getattr(module, "ConnectionInterrupted", None) if module is not None else None


def _wrappers() -> tuple[type[BaseException], ...]:
    """The exception types that carry a Redis error as their ``__cause__``."""
    return tuple(t for t in (_kombu_operational(), _django_redis_interrupted()) if t is not None)


def _unwrapped(exc: BaseException) -> BaseException:
    """The Redis error a kombu ``OperationalError`` or django-redis ``ConnectionInterrupted``
    wraps, else ``exc`` itself."""
    cause = exc.__cause__
    if cause is None:  # nothing wrapped (the common case: no lookup of the wrapper types)
        return exc
    wrappers = _wrappers()
    if wrappers and isinstance(exc, wrappers):
        return cause
    return exc


def is_failure(
    exc: BaseException,
    counted: tuple[type[BaseException], ...] = (),
    excluded: tuple[type[BaseException], ...] = (),
) -> bool:
    """True when ``exc`` shows the endpoint is unavailable."""
    if isinstance(exc, _NEVER):
        return False
    if excluded and isinstance(exc, excluded):
        return False
    if counted and isinstance(exc, counted):
        return True
    if isinstance(exc, _FAILURES):
        return True
    operational = _kombu_operational()
    if operational is not None and isinstance(exc, operational):
        # kombu re-raises every Redis error as OperationalError, Redis's refusals
        # too (an OOM refusing the publish): judge by the Redis error it wraps.
        cause = exc.__cause__
        if isinstance(cause, rex.RedisError):
            return is_failure(cause, counted, excluded)
        return True
    interrupted = _django_redis_interrupted()
    if interrupted is not None and isinstance(exc, interrupted):
        # django-redis's clients raise every error of a command as ConnectionInterrupted,
        # a WRONGTYPE too: judge by the error it wraps.
        cause = exc.__cause__
        return cause is not None and is_failure(cause, counted, excluded)
    return type(exc) is OSError and exc.errno in _NETWORK_ERRNOS


_MISCONFIGURED = (rex.AuthenticationError, rex.AuthorizationError)


def is_misconfiguration(exc: BaseException) -> bool:
    """Redis answered but refused our credentials: counted (Redis is unusable to us), and loud."""
    return isinstance(_unwrapped(exc), _MISCONFIGURED)


def is_full(exc: BaseException) -> bool:
    """Redis refused a write because it is out of memory (``maxmemory`` with ``noeviction``).

    Not an outage (nothing is counted), but not the message's fault either: a
    relay keeps such rows pending and tries again later.
    """
    return isinstance(_unwrapped(exc), rex.OutOfMemoryError)
