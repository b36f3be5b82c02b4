"""What holds each open file descriptor of a server process: ``GET /_census/``.

tests/test_servers.py serves the drill's project through ``census_wsgi`` and
``census_asgi`` (this folder is on the servers' ``PYTHONPATH``): the drill's
application with one more page, answered before Django sees the request. The
page lists the process's descriptors (``/proc/self/fd``) and, from the objects
alive in it, which of them a connection pool holds:

- the socket of every connection in a redis-py pool (sync or asyncio; available
  or checked out), with the pool it belongs to;
- the epoll of every kombu connection (its ``MultiChannelPoller``), and whether
  a redis-py pool belongs to kombu (a broker channel's).

A pool is allowed to grow with the load it met; what no pool holds must come
back, and that is what the test compares.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

PATH = "/_census/"


def _socket_fd(connection: Any) -> int | None:
    """The descriptor of a redis-py connection's socket (sync or asyncio), None if unconnected."""
    sock = getattr(connection, "_sock", None)
    if sock is None:
        writer = getattr(connection, "_writer", None)
        transport = getattr(writer, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        fd = sock.fileno() if sock is not None else -1
    except OSError:
        return None
    return fd if fd >= 0 else None


def _members(pool: Any) -> tuple[list[Any], list[Any]]:
    """``(available, checked out)`` connections of a redis-py pool."""
    if hasattr(pool, "_connections") and not hasattr(pool, "_available_connections"):
        # redis-py's sync BlockingConnectionPool: every connection made, a queue of the free.
        free = [c for c in list(pool.pool.queue) if c is not None]
        return free, [c for c in list(pool._connections) if c not in free]
    return (list(getattr(pool, "_available_connections", ())),
            list(getattr(pool, "_in_use_connections", ())))


_TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}


def _tcp_sockets() -> dict[str, str]:
    """``socket:[inode]`` -> ``tcp :local->:remote STATE`` for this network namespace."""
    found: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/self/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
            state = _TCP_STATES.get(fields[3], fields[3])
            found[f"socket:[{fields[9]}]"] = f"tcp :{local}->:{remote} {state}"
    return found


def census() -> dict[str, Any]:
    """This process's descriptors and the pools that hold some of them."""
    import redis.asyncio.connection as async_connection
    import redis.connection as sync_connection
    from kombu.transport.redis import Channel as kombu_channel
    from kombu.utils.eventio import _epoll as kombu_epoll

    pool_types: tuple[type, ...] = (sync_connection.ConnectionPool,
                                    async_connection.ConnectionPool)

    pools: list[Any] = []
    kombu_pools: set[int] = set()
    pollers: list[int] = []
    gc.collect()
    # issubclass(type(obj)), not isinstance(): that reads __class__, which evaluates a lazy
    # object or a proxy (Django's, Celery's) and can raise or block.
    for obj in gc.get_objects():
        kind = type(obj)
        if issubclass(kind, pool_types):
            pools.append(obj)
        elif issubclass(kind, kombu_channel):
            for attr in ("_pool", "_async_pool"):
                pool = vars(obj).get(attr)
                if pool is not None:
                    kombu_pools.add(id(pool))
        elif issubclass(kind, kombu_epoll):
            epoll = getattr(obj, "_epoll", None)
            if epoll is not None and not epoll.closed:
                pollers.append(epoll.fileno())

    held: dict[int, dict[str, Any]] = {}
    described: dict[str, dict[str, Any]] = {}
    for pool in pools:
        available, in_use = _members(pool)
        key = str(id(pool))
        entry = {"kombu": id(pool) in kombu_pools, "connections": 0, "in_use": 0,
                 "type": f"{type(pool).__module__}.{type(pool).__qualname__}"}
        for connections, checked_out in ((available, False), (in_use, True)):
            for connection in connections:
                fd = _socket_fd(connection)
                if fd is None:
                    continue
                held[fd] = {"pool": key, "in_use": checked_out}
                entry["connections"] += 1
                entry["in_use"] += checked_out
        if entry["connections"]:
            described[key] = entry

    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
    tcp = _tcp_sockets()
    fds = {fd: tcp.get(target, target) for fd, target in fds.items()}
    return {"pid": os.getpid(), "fds": fds, "held": held, "pools": described,
            "pollers": sorted(fd for fd in pollers if fd in fds)}


def _body() -> bytes:
    return json.dumps(census()).encode()


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wsgi(app: WSGIApp) -> WSGIApp:
    def application(environ: dict[str, Any], start_response: Callable[..., Any]
                    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return app(environ, start_response)
        body = _body()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return application


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]


def asgi(app: ASGIApp) -> ASGIApp:
    async def application(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                          send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["path"] != PATH:
            await app(scope, receive, send)
            return
        body = _body()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return application
