"""The background probe: one daemon thread per open breaker, started lazily."""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import TYPE_CHECKING

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._sentinel import is_sentinel_url, ping_sentinel

if TYPE_CHECKING:
    from ._breaker import Breaker

__all__ = ["Probe", "ping_url"]

_RUNNING: weakref.WeakSet[Probe] = weakref.WeakSet()


def ping_url(url: str, timeout: float) -> None:
    """PING ``url`` on a fresh connection, no retries; raise on any failure.

    A ``redis+sentinel://`` URL is resolved through its sentinels on every
    call, and the master they name must answer as a master (see ``_sentinel``).
    """
    if is_sentinel_url(url):
        ping_sentinel(url, timeout)
        return
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
    )
    try:
        client.ping()
    finally:
        client.close()


class Probe(threading.Thread):
    """PINGs the breaker's Redis while it is open and makes trial calls while half-open.

    Holds only a weak reference to its breaker, stops when the breaker closes,
    and is a daemon so it never keeps the process alive.
    """

    def __init__(self, breaker: Breaker) -> None:
        super().__init__(name=f"redis-breaker-probe-{breaker.name}", daemon=True)
        self._breaker = weakref.ref(breaker)
        self._wake = threading.Event()
        self._stopped = threading.Event()
        _RUNNING.add(self)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def run(self) -> None:
        try:
            while not self._stopped.is_set():
                breaker = self._breaker()
                if breaker is None:
                    return
                delay = breaker.probe_plan()
                if delay is None:
                    return
                if delay > 0:
                    del breaker
                    # Re-plan at least every second: a frozen test clock never advances.
                    self._wake.wait(min(delay, 1.0))
                    self._wake.clear()
                    continue
                breaker.probe_now()
                del breaker
        finally:
            self._stopped.set()
            breaker = self._breaker()
            if breaker is not None:
                breaker.probe_ended(self)


@atexit.register
def _stop_all() -> None:
    for probe in list(_RUNNING):
        probe.stop()
