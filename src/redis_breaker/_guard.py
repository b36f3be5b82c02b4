"""The ``guard`` decorator."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

from . import _registry
from ._breaker import Breaker, aguarded_function, guarded_function
from ._registry import get_breaker

__all__ = ["guard"]

F = TypeVar("F", bound=Callable[..., Any])


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
    if not isinstance(breaker, (str, Breaker)):
        raise TypeError(f"guard() takes a breaker name or a Breaker, not {type(breaker).__name__}")

    def decorate(fn: F) -> F:
        name = f"guard:{getattr(fn, '__qualname__', 'call')}"
        # A breaker given by object is used as is; one given by name is looked up
        # on every call (the registry may be reset), in the registry's dict read
        # without its lock: a hit is the common case.
        where: dict[str, Any] = (
            {"breaker": breaker} if isinstance(breaker, Breaker)
            else {"breakers": _registry._breakers, "key": breaker, "lookup": get_breaker})
        wrap = aguarded_function if inspect.iscoroutinefunction(fn) else guarded_function
        guarded = wrap(fn, fallback=fallback, integration=name, **where)
        return functools.wraps(fn)(guarded)  # type: ignore[return-value]

    return decorate
