"""Redis Sentinel endpoints: the ``redis+sentinel://`` URL and the probe that finds the master.

A breaker guarding a Sentinel-managed Redis must PING whichever server is the
master *now*: after a failover the old address answers nothing (or answers as
a replica). The URL names the sentinels and the master group::

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/master_name[/db]
        [?sentinel_password=...&sentinel_username=...]

``password`` (and ``username``) are the master's; ``sentinel_password`` the
sentinels' own, when they have one. A port left out is 26379.

Each probe asks the sentinels in turn (``SENTINEL MASTERS``, through
``redis.sentinel.Sentinel.discover_master``, so a master a sentinel holds
down is skipped) and then sends ``ROLE`` to the address they name, on fresh
connections with the probe timeout and no retries. A server that answers as a
replica (mid-failover) is not a healthy master: the probe fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "SENTINEL_SCHEME",
    "SentinelPinger",
    "SentinelTarget",
    "aclose_sentinel",
    "is_sentinel_url",
    "parse_sentinel_url",
    "ping_sentinel",
    "resolve_master",
    "sentinel_url",
]

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_QUERY_KEYS = ("sentinel_password", "sentinel_username")


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:
        # Never the passwords: this object may end up in a log or a traceback.
        shown = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelTarget({shown}/{self.master_name}/{self.db})"


def is_sentinel_url(url: str) -> bool:
    return url[: len(SENTINEL_SCHEME) + 3].lower() == f"{SENTINEL_SCHEME}://"


def _address(item: str) -> tuple[str, int]:
    item = item.strip()
    if not item:
        raise ValueError("has an empty sentinel address")
    if item.startswith("["):  # [IPv6]:port
        host, bracket, rest = item[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"has a malformed sentinel address {item!r}")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if port_text is None:
            raise ValueError(f"has a malformed sentinel address {item!r}")
    else:
        host, _, port_text = item.partition(":")
        if not host:
            raise ValueError(f"has a sentinel address without a host ({item!r})")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"has a sentinel address with an invalid port ({item!r})")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a ``redis+sentinel://`` URL; ``ValueError`` says what is wrong (never the password)."""
    if not is_sentinel_url(url):
        raise ValueError(f"does not start with {SENTINEL_SCHEME}://")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("is not a valid URL (an unbalanced [ or ] in a sentinel address)") \
            from None
    if "@" not in parts.netloc and "@" in url[len(SENTINEL_SCHEME) + 3 + len(parts.netloc):]:
        # A raw '/', '?' or '#' in the password cut the address list short: what would
        # be read as addresses is part of the password, and must not be repeated.
        raise ValueError("cannot be read (an @ after the sentinels: a '/', '?' or '#' in the "
                         "user name or password must be percent-encoded as %2F, %3F, %23)")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", parts.netloc
    if not hosts:
        raise ValueError("names no sentinel (expected host:port[,host:port...])")
    sentinels = tuple(_address(item) for item in hosts.split(","))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("names no master group (expected .../master_name after the sentinels)")
    if len(path) > 2:
        raise ValueError("has a path other than /master_name or /master_name/db")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError("has a database number that is not an integer")
        db = int(path[1])
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        if colon:
            username, password = unquote(user) or None, unquote(secret) or None
        else:
            password = unquote(user) or None
    query: dict[str, list[str]] = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY_KEYS))
    if unknown:
        raise ValueError(f"has unknown query parameters {unknown}; allowed: "
                         f"{', '.join(_QUERY_KEYS)}")
    return SentinelTarget(
        sentinels=sentinels,
        master_name=path[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=(query.get("sentinel_username") or [""])[0] or None,
        sentinel_password=(query.get("sentinel_password") or [""])[0] or None,
    )


def sentinel_url(sentinels: Iterable[Any], master_name: str, *, db: int = 0,
                 username: str | None = None, password: str | None = None,
                 sentinel_username: str | None = None,
                 sentinel_password: str | None = None) -> str:
    """Build a ``redis+sentinel://`` URL from ``(host, port)`` pairs and a master group name.

    Raises ``ValueError`` when ``sentinels`` is not a non-empty list of pairs.
    """
    addresses: list[str] = []
    for item in sentinels:
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or not isinstance(item[0], str) or not item[0]):
            raise ValueError(f"sentinel {item!r} is not a (host, port) pair")
        host, port = item[0], int(item[1])
        addresses.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if not addresses:
        raise ValueError("no sentinels")
    if not master_name:
        raise ValueError("no master name")
    auth = ""
    if password or username:
        user = quote(username or "", safe="")
        auth = f"{user}:{quote(password or '', safe='')}@" if password else f"{user}:@"
    query = "&".join(f"{key}={quote(value, safe='')}" for key, value in (
        ("sentinel_username", sentinel_username), ("sentinel_password", sentinel_password),
    ) if value)
    url = f"{SENTINEL_SCHEME}://{auth}{','.join(addresses)}/{quote(master_name, safe='')}/{db}"
    return f"{url}?{query}" if query else url


def _no_retry() -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def resolve_master(url: str, timeout: float) -> tuple[str, int]:
    """The ``(host, port)`` the sentinels of ``url`` name as master now.

    Each sentinel is asked in turn, each with ``timeout`` to connect and to
    answer; raises ``redis.sentinel.MasterNotFoundError`` (a redis
    ``ConnectionError``) when none names a master it considers up.
    """
    target = parse_sentinel_url(url)
    sentinel = _sentinel_of(target, timeout)
    try:
        host, port = sentinel.discover_master(target.master_name)
    finally:
        _close_sentinel(sentinel)
    return str(host), int(port)


def _sentinel_of(target: SentinelTarget, timeout: float) -> Any:
    """A ``redis.sentinel.Sentinel`` of ``target``'s sentinels, ``timeout`` for each, no retries."""
    from redis.sentinel import Sentinel

    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": _no_retry(),
    }
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    if target.sentinel_username:
        sentinel_kwargs["username"] = target.sentinel_username
    return Sentinel(list(target.sentinels),  # type: ignore[no-untyped-call]
                    sentinel_kwargs=sentinel_kwargs)


def _close_sentinel(sentinel: Any) -> None:
    """Close the connections ``sentinel`` (a ``redis.sentinel.Sentinel``) opened to the sentinels.

    ``Sentinel.close()`` is recent (redis-py 5.0 has none); closing each client
    in ``sentinel.sentinels`` does the same on every version. Best effort: an
    error closing must not hide the answer (or the error) of the sentinels.
    """
    for client in sentinel.sentinels:
        with contextlib.suppress(Exception):
            client.close()


async def aclose_sentinel(sentinel: Any) -> None:
    """Close the connections a ``redis.asyncio.sentinel.Sentinel`` opened to the sentinels.

    ``Sentinel.aclose()`` is recent (redis-py 5.0 has none, and its clients
    have ``aclose()`` only from 5.0.1, ``close()`` before); each client is
    closed on its own, best effort: a client whose event loop has closed
    cannot close its sockets any more.
    """
    for client in sentinel.sentinels:
        close = getattr(client, "aclose", None) or client.close
        with contextlib.suppress(Exception):
            await close()


def ping_sentinel(url: str, timeout: float) -> tuple[str, int]:
    """Find the master through the sentinels and check that it answers as a master.

    Returns the master's address; raises on any failure (no sentinel answers,
    none names an up master, the master does not answer, or it answers as a
    replica because a failover is under way).
    """
    target = parse_sentinel_url(url)
    host, port = resolve_master(url, timeout)
    client = _master_client(target, host, port, timeout)
    try:
        _check_master(client, target, host, port)
    finally:
        client.close()
    return host, port


def _master_client(target: SentinelTarget, host: str, port: int, timeout: float) -> Any:
    import redis

    return redis.Redis(host=host, port=port, db=target.db, username=target.username,
                       password=target.password, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=_no_retry())


def _check_master(client: Any, target: SentinelTarget, host: str, port: int) -> None:
    """Raise unless ``client``'s server (at ``host:port``) answers as a master."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoPermissionError, ResponseError

    try:
        reply = client.execute_command("ROLE")
    except ResponseError:
        # ROLE renamed away or not allowed to this user: a PING is all we can ask,
        # and a NOPERM reply to it (an ACL user) still proves the server up.
        with contextlib.suppress(NoPermissionError):
            client.ping()
        return
    role = reply[0] if isinstance(reply, (list, tuple)) and reply else reply
    if isinstance(role, bytes):
        role = role.decode("ascii", "replace")
    if role != "master":
        raise RedisConnectionError(
            f"{host}:{port}, named master of {target.master_name!r} by the sentinels, "
            f"answers as {role!r} (failover under way)"
        )


class SentinelPinger:
    """``ping_sentinel`` for one probe, its clients made once, new connections every time.

    ``ping_sentinel`` makes a ``Sentinel`` (a client and a pool per sentinel)
    and a client of the master on every call; with redis-py 7+ each pool and
    its connection refer to each other and are left, with their ``__del__``,
    for the cyclic collector (about 240 objects a PING here). This keeps them:
    the sentinels' clients, and the master's client while the sentinels name
    the same master (a new one after a failover). Every connection is closed
    after each PING, as ``ping_sentinel`` closes its clients: nothing is held
    open between PINGs. Not thread-safe: its owner serializes calls.
    """

    __slots__ = ("_master", "_sentinel", "_target", "_timeout")

    def __init__(self, url: str, timeout: float) -> None:
        self._target = parse_sentinel_url(url)
        self._timeout = timeout
        self._sentinel: Any = None
        self._master: tuple[tuple[str, int], Any] | None = None

    def ping(self) -> tuple[str, int]:
        """As ``ping_sentinel``: the master's address, or an error."""
        target = self._target
        if self._sentinel is None:
            self._sentinel = _sentinel_of(target, self._timeout)
        sentinel = self._sentinel
        try:
            found = sentinel.discover_master(target.master_name)
        finally:
            _disconnect_sentinel(sentinel)
        host, port = str(found[0]), int(found[1])
        if self._master is None or self._master[0] != (host, port):
            self._drop_master()
            self._master = ((host, port), _master_client(target, host, port, self._timeout))
        client = self._master[1]
        try:
            _check_master(client, target, host, port)
        finally:
            client.connection_pool.disconnect()
        return host, port

    def _drop_master(self) -> None:
        master, self._master = self._master, None
        if master is not None:
            with contextlib.suppress(Exception):
                master[1].connection_pool.disconnect()

    def close(self) -> None:
        """Close every connection; the clients are made again on the next ``ping``."""
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            _disconnect_sentinel(sentinel)
        self._drop_master()


def _disconnect_sentinel(sentinel: Any) -> None:
    for client in sentinel.sentinels:
        with contextlib.suppress(Exception):
            client.connection_pool.disconnect()
