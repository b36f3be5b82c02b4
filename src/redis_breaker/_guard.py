"""The ``guard`` decorator."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from . import _registry
from ._breaker import Breaker
from ._registry import get_breaker

__all__ = ["guard"]

F = TypeVar("F", bound=Callable[..., Any])


def _resolver(breaker: str | Breaker) -> Callable[[], Breaker]:
    if isinstance(breaker, Breaker):
        return lambda: breaker
    if not isinstance(breaker, str):
        raise TypeError(f"guard() takes a breaker name or a Breaker, not {type(breaker).__name__}")
    breakers = _registry._breakers

    def resolve() -> Breaker:
        # The registry's dict, read without its lock: a hit is the common case.
        found = breakers.get(breaker)
        return found if found is not None else get_breaker(breaker)

    return resolve


@overload
def guard(breaker: F) -> F: ...
@overload
def guard(
    breaker: str | Breaker = "default", *, fallback: Callable[..., Any] | None = None
) -> Callable[[F], F]: ...


def guard(
    breaker: Any = "default", *, fallback: Callable[..., Any] | None = None
) -> Any:
    """Run the decorated function through a breaker.

    ``breaker`` is a name (looked up with ``get_breaker`` at call time) or a
    ``Breaker``. With ``fallback``, a rejected call or one that fails on a
    counted error returns ``fallback(*args, **kwargs)`` (awaited when it is a
    coroutine function); without it, ``BreakerOpenError`` or the original
    error propagates. Works on ``def`` and ``async def`` functions, and bare
    as ``@guard``.
    """
    if callable(breaker) and not isinstance(breaker, (str, Breaker)):
        return guard()(breaker)
    resolve = _resolver(breaker)

    def decorate(fn: F) -> F:
        name = f"guard:{getattr(fn, '__qualname__', 'call')}"
        if inspect.iscoroutinefunction(fn):
            if fallback is None:
                @functools.wraps(fn)
                async def async_raising(*args: Any, **kwargs: Any) -> Any:
                    return await resolve().acall(fn, *args, **kwargs)

                return async_raising  # type: ignore[return-value]

            @functools.wraps(fn)
            async def async_fallback(*args: Any, **kwargs: Any) -> Any:
                return await resolve().acall_with_fallback(
                    fn, fallback, args, kwargs, integration=name
                )

            return async_fallback  # type: ignore[return-value]

        if isinstance(breaker, Breaker):
            # A breaker given by object: its bound methods, found once.
            call, call_with_fallback = breaker.call, breaker.call_with_fallback
            if fallback is None:
                @functools.wraps(fn)
                def raising_on(*args: Any, **kwargs: Any) -> Any:
                    return call(fn, *args, **kwargs)

                return raising_on  # type: ignore[return-value]

            @functools.wraps(fn)
            def with_fallback_on(*args: Any, **kwargs: Any) -> Any:
                return call_with_fallback(fn, fallback, args, kwargs, integration=name)

            return with_fallback_on  # type: ignore[return-value]

        # A breaker by name, looked up on every call (the registry may be reset):
        # the registry's dict, read without its lock, is the common case.
        breakers, key = _registry._breakers, breaker

        if fallback is None:
            @functools.wraps(fn)
            def raising(*args: Any, **kwargs: Any) -> Any:
                found = breakers.get(key)
                return (found if found is not None else get_breaker(key)).call(
                    fn, *args, **kwargs)

            return raising  # type: ignore[return-value]

        @functools.wraps(fn)
        def with_fallback(*args: Any, **kwargs: Any) -> Any:
            found = breakers.get(key)
            return (found if found is not None else get_breaker(key)).call_with_fallback(
                fn, fallback, args, kwargs, integration=name)

        return with_fallback  # type: ignore[return-value]

    return decorate
