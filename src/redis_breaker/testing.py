"""Helpers for tests: a real ``redis-server`` you can break, event capture, forced states.

Outage behaviour can only be shown against a real server with real faults;
``RedisServer`` starts one on a free port and can refuse (stopped), hang
(SIGSTOP), come back, and come back empty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._breaker import Breaker
from ._events import capture
from ._registry import get_breaker, reset_breakers

__all__ = [
    "RedisNotInstalled",
    "RedisServer",
    "capture_events",
    "forced_open",
    "free_port",
    "reset_breakers",
]

INSTALL_HINT = (
    "redis-server is not installed. On Debian or Ubuntu, as root: "
    "apt-get update && apt-get install -y redis-server "
    "(or run `nox -s tests`, which installs it when it can)."
)


class RedisNotInstalled(RuntimeError):
    """``redis-server`` is not on PATH."""


def capture_events() -> contextlib.AbstractContextManager[list[dict[str, Any]]]:
    """Collect the events redis-breaker emits inside a ``with`` block, as dicts.

    Each dict has ``event``, ``log_level`` and the event's fields::

        with capture_events() as events:
            ...
        assert events[0]["to_state"] == "open"
    """
    return capture()


@contextlib.contextmanager
def forced_open(breaker: str | Breaker = "default") -> Iterator[Breaker]:
    """Force a breaker open for the block, then reset it to closed."""
    b = breaker if isinstance(breaker, Breaker) else get_breaker(breaker)
    b.force_open("forced by test")
    try:
        yield b
    finally:
        b.reset("test block ended")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A throwaway ``redis-server`` on 127.0.0.1 and a free port.

    ``stop()`` makes the port refuse, ``freeze()`` hangs the server (connects
    queue in the backlog, reads time out), ``thaw()`` resumes it, ``start()``
    brings it back with its data (``restart(empty=True)`` without).
    """

    def __init__(self, port: int | None = None, *, password: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalled(INSTALL_HINT)
        self.binary = binary
        self.port = port or free_port()
        self.password = password
        self.extra_args = extra_args
        self._dir = Path(tempfile.mkdtemp(prefix="redis-breaker-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            self.binary, "--port", str(self.port), "--bind", self.host,
            "--dir", str(self._dir), "--dbfilename", "dump.rdb", "--appendonly", "no",
            "--save", "", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(self._dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        return args + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        self.process = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self.frozen = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self._dir / "redis.log")
                raise RuntimeError(f"redis-server exited: {log.read_text() if log.exists() else ''}")
            if self.ping():
                return self
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def ping(self, timeout: float = 0.2) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as s:
                s.settimeout(timeout)
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(64)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Shut the server down: the port refuses connections."""
        if self.process is None:
            return
        if self.frozen:
            self.thaw()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections reset."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(5)
        self.process = None
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts into the backlog, nothing answers."""
        assert self.process is not None, "server is not running"
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.process is not None, "server is not running"
        os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def restart(self, *, empty: bool = False) -> RedisServer:
        """Stop and start again on the same port; ``empty`` loses every key."""
        if empty:
            self.kill()
            for f in self._dir.glob("*.rdb"):
                f.unlink()
        else:
            self.stop()
        return self.start()

    def client(self, **kwargs: Any) -> Any:
        import redis

        kwargs.setdefault("socket_timeout", 0.5)
        kwargs.setdefault("socket_connect_timeout", 0.5)
        return redis.Redis.from_url(self.url, **kwargs)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else ("running" if self.running else "stopped")
        return f"<RedisServer 127.0.0.1:{self.port} {state}>"
