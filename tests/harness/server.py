"""A real ``redis-server`` for tests and benchmarks, and the faults it can be put through.

Outage behaviour can only be shown against a real server with real faults:
``RedisServer`` starts one on a free port and can refuse (stopped), hang
(SIGSTOP), drop packets (a network namespace, as root), come back, and come
back empty. This is the project's own harness, not part of the installed
package.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["RedisNotInstalled", "RedisServer", "free_port", "wait_until"]

INSTALL_HINT = (
    "redis-server is not installed. On Debian or Ubuntu, as root: "
    "apt-get update && apt-get install -y redis-server "
    "(or run `nox -s tests`, which installs it when it can)."
)


class RedisNotInstalled(RuntimeError):
    """``redis-server`` is not on PATH."""


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
                 extra_args: tuple[str, ...] = (), netns: bool = False) -> None:
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
        self.blackholed = False
        self._netns: _Netns | None = None
        if netns:
            ok, why = self.can_blackhole()
            if not ok:
                raise RuntimeError(f"cannot run redis-server in a network namespace: {why}")
            self._netns = _Netns(self.port)

    @staticmethod
    def can_blackhole() -> tuple[bool, str]:
        """Whether ``RedisServer(netns=True)`` and ``blackhole()`` work here, and why not."""
        if os.geteuid() != 0:
            return False, "blackhole needs root (network namespaces and iptables)"
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                return False, f"blackhole needs `{tool}` (apt-get install iproute2 iptables)"
        return True, ""

    @property
    def host(self) -> str:
        return self._netns.inside if self._netns else "127.0.0.1"

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
        if self._netns is not None:
            # Reached over the veth pair, not loopback: protected mode would refuse it.
            args += ["--protected-mode", "no"]
        return args + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        args = self._args()
        if self._netns is not None:
            self._netns.create()
            args = ["ip", "netns", "exec", self._netns.name, *args]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
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

    def stop(self, *, save: bool = False) -> None:
        """Shut the server down: the port refuses connections.

        ``save=True`` writes the data to disk first, so that ``start()`` brings
        it back (a restart); otherwise the next start is empty.
        """
        if self.process is None:
            return
        if self.frozen:
            self.thaw()
        process = self.process
        if save:
            client = self.client()
            try:
                client.shutdown(save=True)
            except Exception:  # the server closes the connection as it exits
                pass
            finally:
                client.close()
            try:
                process.wait(10)
                self.process = None
                return
            except subprocess.TimeoutExpired:
                pass
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        self.process = None
        self._forget_data()

    def _forget_data(self) -> None:
        for dump in self._dir.glob("*.rdb"):
            dump.unlink()

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

    def blackhole(self) -> None:
        """Drop every packet to the server: connects hang, open connections go silent.

        Needs ``RedisServer(netns=True)`` (root): the DROP rule lives inside the
        server's own network namespace and touches nothing else.
        """
        if self._netns is None:
            raise RuntimeError("blackhole() needs RedisServer(netns=True)")
        if not self.blackholed:
            self._netns.iptables("-I", "INPUT", "-p", "tcp", "--dport", str(self.port), "-j", "DROP")
            self.blackholed = True

    def unblackhole(self) -> None:
        if self._netns is not None and self.blackholed:
            self._netns.iptables("-D", "INPUT", "-p", "tcp", "--dport", str(self.port), "-j", "DROP")
            self.blackholed = False

    def flap(self, stop: threading.Event, on_change: Callable[[str], object] | None = None, *,
             period: tuple[float, float] = (1.0, 2.0), seed: int = 7) -> None:
        """Take the server down and up until ``stop`` is set (run it in a thread).

        Each cycle waits a random time in ``period`` (seconds), then either
        stops the server (data kept: ``"refused"``) or freezes it (``"hung"``),
        in turn, waits again, and brings it back (``"up"``). ``on_change`` gets
        each of those words as it happens. The server is up when this returns.
        """
        rng = random.Random(seed)
        cycle = 0
        while not stop.is_set():
            stop.wait(rng.uniform(*period))
            fault = ("refused", "hung")[cycle % 2]
            cycle += 1
            if fault == "refused":
                self.stop(save=True)
            else:
                self.freeze()
            if on_change is not None:
                on_change(fault)
            stop.wait(rng.uniform(*period))
            if fault == "refused":
                self.start()
            else:
                self.thaw()
            if on_change is not None:
                on_change("up")

    def restart(self, *, empty: bool = False) -> RedisServer:
        """Stop and start again on the same port; ``empty`` loses every key."""
        if empty:
            self.kill()
            self._forget_data()
        else:
            self.stop(save=True)
        return self.start()

    def client(self, **kwargs: Any) -> Any:
        import redis

        kwargs.setdefault("socket_timeout", 0.5)
        kwargs.setdefault("socket_connect_timeout", 0.5)
        return redis.Redis.from_url(self.url, **kwargs)

    def close(self) -> None:
        if self.frozen and self.process is not None:
            self.thaw()
        self.kill()
        if self._netns is not None:
            self._netns.delete()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else ("running" if self.running else "stopped")
        if self.blackholed:
            state += ", blackholed"
        return f"<RedisServer {self.host}:{self.port} {state}>"


def _real_now() -> float:
    """Monotonic seconds that stay real under freezegun (it leaves ``clock_gettime`` alone),
    so cluster waits work inside a test that freezes the breaker's clock."""
    if hasattr(time, "clock_gettime"):
        return time.clock_gettime(time.CLOCK_MONOTONIC)
    return time.monotonic()  # pragma: no cover - not Unix


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    """Poll ``predicate`` every ``step`` s for up to ``timeout`` s (real time, even under
    freezegun); return its last answer."""
    deadline = _real_now() + timeout
    while _real_now() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class _Netns:
    """A network namespace joined to the host by a veth pair, on a /30 of 198.18.0.0/15.

    198.18.0.0/15 is reserved for network benchmarks (RFC 2544); the pair is
    private to this machine and removed with the namespace.
    """

    def __init__(self, port: int) -> None:
        self.name = f"rbk{port}"
        base = (198 << 24) | (18 << 16) | ((port % 32768) * 4)
        self.outside = _ip(base + 1)
        self.inside = _ip(base + 2)
        self._host_if = f"rbh{port}"
        self._ns_if = f"rbn{port}"
        self.created = False

    def _run(self, *args: str) -> None:
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")

    def iptables(self, *args: str) -> None:
        self._run("ip", "netns", "exec", self.name, "iptables", "-w", *args)

    def create(self) -> None:
        if self.created:
            return
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        self._run("ip", "netns", "add", self.name)
        self._run("ip", "link", "add", self._host_if, "type", "veth", "peer", "name", self._ns_if)
        self._run("ip", "link", "set", self._ns_if, "netns", self.name)
        self._run("ip", "addr", "add", f"{self.outside}/30", "dev", self._host_if)
        self._run("ip", "link", "set", self._host_if, "up")
        self._run("ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.inside}/30",
                  "dev", self._ns_if)
        self._run("ip", "netns", "exec", self.name, "ip", "link", "set", self._ns_if, "up")
        self._run("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        self.created = True

    def delete(self) -> None:
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            subprocess.run(["ip", "link", "del", self._host_if], capture_output=True)
            self.created = False


def _ip(value: int) -> str:
    return ".".join(str((value >> shift) & 255) for shift in (24, 16, 8, 0))
