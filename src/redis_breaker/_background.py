"""Background jobs that recovery work runs in: one thread at a time per job.

The cache journal's replay and the outbox relay start from a breaker's
transition, which fires in whatever thread caused it (often the probe) and
must never block it. A ``BackgroundJob`` runs its target in a daemon thread,
never two at once: a ``kick()`` while it runs asks for one more pass after the
current one, so work queued during a pass is not left behind.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["BackgroundJob"]

_JOBS: weakref.WeakSet[BackgroundJob] = weakref.WeakSet()


class BackgroundJob:
    """Runs ``target()`` in a daemon thread named ``name``, one pass at a time."""

    def __init__(self, name: str, target: Callable[[], object]) -> None:
        self.name = name
        self._target = target
        self._init_runtime()
        _JOBS.add(self)

    def _init_runtime(self) -> None:
        # Fresh after fork: the parent's thread does not exist in the child, and
        # its lock may have been held by a thread that is gone.
        self._lock = threading.Lock()
        #: The running pass's thread; None between passes (set under ``_lock``; read
        #: without it, a hint that a pass is under way or about to end).
        self.thread: threading.Thread | None = None
        self._again = False

    def kick(self) -> None:
        """Start a pass now, or one more after the pass that is running."""
        with self._lock:
            if self.thread is not None:
                self._again = True
                return
            self._again = False
            thread = self.thread = threading.Thread(target=self._run, daemon=True,
                                                     name=self.name)
        thread.start()

    @property
    def running(self) -> bool:
        thread = self.thread
        return thread is not None and thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            failed = True
            try:
                self._target()
                failed = False
            finally:
                with self._lock:
                    # Decided under the lock that kick() takes, so no kick is lost
                    # between the end of a pass and the end of the thread.
                    again = self._again and not failed and self.thread is me
                    self._again = False
                    if not again and self.thread is me:
                        self.thread = None
            if not again:
                return


def _after_fork_in_child() -> None:
    for job in list(_JOBS):
        job._init_runtime()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
