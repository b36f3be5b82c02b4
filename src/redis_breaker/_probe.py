"""The background probe: one daemon thread per open breaker, started lazily."""

from __future__ import annotations

import atexit
import contextlib
import threading
import traceback
import weakref
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from ._sentinel import SentinelPinger, is_sentinel_url, ping_sentinel

if TYPE_CHECKING:
    from ._breaker import Breaker

__all__ = ["PingClient", "Probe", "answered", "free_frames", "ping", "ping_url", "probe_client"]

_RUNNING: weakref.WeakSet[Probe] = weakref.WeakSet()


def answered(exc: BaseException) -> bool:
    """Whether ``exc`` is a reply that proves the server up: ``NOPERM``.

    An ACL user may be denied ``PING`` (``+@all -ping``), or ``SELECT`` of its
    database on connect, and still run every command the integrations use: the
    server authenticated it and answered, so Redis is up.
    """
    return isinstance(exc, NoPermissionError)


def ping(client: Any) -> None:
    """PING with ``client``; a ``NOPERM`` reply counts as an answer (see ``answered``)."""
    try:
        client.ping()
    except NoPermissionError:
        return


def probe_client(url: str, timeout: float, *, connect: bool = True) -> redis.Redis:
    """A client of ``url`` on one fresh connection, connected now, no retries.

    ``connect=False``: a client of a pool of its own that connects on its
    first command (no connection held between commands but the pool's).

    ``timeout`` is the connect and read timeout whatever the URL's own
    ``socket_timeout`` says. A URL redis-py cannot use raises ``ValueError``
    naming the problem without the URL's credentials (``_config.url_problem``).
    A ``NOPERM`` reply while connecting (an ACL user denied ``SELECT``) is
    raised as it comes: ``answered`` tells it apart.
    """
    from redis.connection import Connection, ConnectionPool, parse_url

    from ._config import url_problem
    from ._redact import redact_url, remember_url

    remember_url(url)  # its password is masked in any text from now on
    why = url_problem(url)
    if why is not None:
        raise ValueError(f"{redact_url(url)!r} {why}")
    kwargs = parse_url(url)  # type: ignore[no-untyped-call]
    connection_class = kwargs.pop("connection_class", Connection)
    retry = Retry(NoBackoff(), 0)
    kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=retry)
    pool = ConnectionPool(connection_class=connection_class, **kwargs)
    try:
        client = redis.Redis(connection_pool=pool, single_connection_client=connect, retry=retry)
    except BaseException:
        pool.disconnect()
        raise
    client.auto_close_connection_pool = True  # close() disconnects, as from_url's client does
    return client


def free_frames(exc: BaseException) -> None:
    """Clear the local variables of the finished frames ``exc`` and its causes went through.

    redis-py re-raises an error from a local variable (``raise error``), which
    ties the exception, its traceback and the frame into a reference cycle
    that also holds the client, its pool and its connection, all with
    ``__del__``. A refused PING left about 150 such objects for the cyclic
    collector, which runs whenever any thread allocates: in the main thread of
    a Celery worker or beat, a SIGTERM that lands while a collected client's
    ``__del__`` runs has its ``SystemExit`` swallowed (an exception in
    ``__del__`` is only printed). Cleared here, the client is freed at once,
    in the calling thread (its pool and connection still refer to each other
    in redis-py 7+: ``PingClient`` keeps them instead of dropping them). The
    traceback keeps its lines.
    """
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)  # skips the frames still running
        error = error.__cause__ or error.__context__


def ping_url(url: str, timeout: float) -> None:
    """PING ``url`` on a fresh connection, no retries; raise on any failure.

    A ``NOPERM`` reply counts as an answer (an ACL user that may not PING).
    A ``redis+sentinel://`` URL is resolved through its sentinels on every
    call, and the master they name must answer as a master (see ``_sentinel``).
    The client made for it is freed before this returns or raises
    (``free_frames``).
    """
    try:
        _ping_url(url, timeout)
    except BaseException as exc:
        free_frames(exc)
        raise


def _ping_url(url: str, timeout: float) -> None:
    if is_sentinel_url(url):
        ping_sentinel(url, timeout)
        return
    try:
        client = probe_client(url, timeout)
    except NoPermissionError:
        return  # denied SELECT on connect: the server answered
    try:
        ping(client)
    finally:
        with contextlib.suppress(Exception):  # a connection that cannot close is gone
            client.close()


class PingClient:
    """One breaker's probe client: its objects made once, a new connection for every PING.

    Each PING connects (AUTH and SELECT included), asks and disconnects, as
    ``ping_url`` does, but through the same pool, connection and parser every
    time: a client made per PING leaves its pool and connection, which refer
    to each other, for the cyclic collector (redis-py 7+), and their
    ``__del__`` then runs in whatever thread the collection happens in (see
    ``free_frames``). A Sentinel URL keeps a ``SentinelPinger`` the same way.
    A PING while another thread uses this client goes through ``ping_url``.
    """

    __slots__ = ("_client", "_lock", "_sentinel", "key")

    def __init__(self, url: str, timeout: float) -> None:
        self.key = (url, timeout)
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._sentinel: SentinelPinger | None = None

    def ping(self) -> None:
        url, timeout = self.key
        if not self._lock.acquire(blocking=False):
            ping_url(url, timeout)
            return
        try:
            if is_sentinel_url(url):
                if self._sentinel is None:
                    self._sentinel = SentinelPinger(url, timeout)
                self._sentinel.ping()
                return
            client = self._client
            if client is None:
                client = self._client = probe_client(url, timeout, connect=False)
            try:
                ping(client)  # a NOPERM while connecting (SELECT denied) is an answer too
            finally:
                client.connection_pool.disconnect()
        except BaseException as exc:
            free_frames(exc)
            raise
        finally:
            self._lock.release()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.connection_pool.disconnect()
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            sentinel.close()


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
