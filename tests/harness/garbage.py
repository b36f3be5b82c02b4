"""What the cyclic collector finds of the objects a block of code made."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collected_garbage"]


@contextmanager
def collected_garbage() -> Iterator[list[object]]:
    """The objects the cyclic collector finds of those made in the block (collection paused)."""
    found: list[object] = []
    gc.collect()
    enabled, flags = gc.isenabled(), gc.get_debug()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(flags)
        if enabled:
            gc.enable()
