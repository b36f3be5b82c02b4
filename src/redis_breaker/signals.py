"""Django signals.

``breaker_state_changed`` is sent on every transition of every breaker, in the
thread that caused it (often the probe thread): ``sender`` is the ``Breaker``,
``change`` the ``StateChange``. Receivers must not block; hand slow work
(paging someone, posting to a chat) to a thread or a task queue.
"""

from __future__ import annotations

from typing import Any

from django.dispatch import Signal

from ._breaker import Breaker
from ._state import StateChange

__all__ = ["breaker_state_changed"]

breaker_state_changed = Signal()


def send_state_changed(breaker: Breaker, change: StateChange) -> Any:
    return breaker_state_changed.send_robust(sender=breaker, change=change)
