"""Seed-compatible helpers for code that used hand-written ``safe_*`` wrappers.

Each lives with its integration and is imported on first use, so importing
this module needs neither Celery nor Channels.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import safe_cache_delete, safe_cache_get, safe_cache_set
    from .celery import execute_task_sync
    from .channels import async_safe_group_send, safe_group_send
    from .health import check_redis_health, get_redis_status

__all__ = [
    "async_safe_group_send",
    "check_redis_health",
    "execute_task_sync",
    "get_redis_status",
    "safe_cache_delete",
    "safe_cache_get",
    "safe_cache_set",
    "safe_group_send",
]

_HOME = {
    "safe_cache_get": "redis_breaker.cache",
    "safe_cache_set": "redis_breaker.cache",
    "safe_cache_delete": "redis_breaker.cache",
    "safe_group_send": "redis_breaker.channels",
    "async_safe_group_send": "redis_breaker.channels",
    "execute_task_sync": "redis_breaker.celery",
    "check_redis_health": "redis_breaker.health",
    "get_redis_status": "redis_breaker.health",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
