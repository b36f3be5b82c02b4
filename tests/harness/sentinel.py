"""A throwaway Redis Sentinel setup: a master, replicas and three sentinels."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .server import INSTALL_HINT, RedisNotInstalled, RedisServer, _real_now, free_port

__all__ = ["RedisSentinelCluster"]


def _pairs(reply: Any) -> dict[str, str]:
    """A Sentinel reply as a dict: RESP3 sends a map, RESP2 a flat list of pairs."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    return {str(k): str(v) for k, v in zip(reply[::2], reply[1::2], strict=False)}


class RedisSentinelCluster:
    """A throwaway Redis Sentinel setup on 127.0.0.1: a master, replicas and sentinels.

    Every process gets a free port and the files live in a temporary directory.
    ``start()`` returns once every sentinel agrees on the master and sees the
    replicas and the other sentinels, so a failover can begin at once::

        with RedisSentinelCluster() as cluster:
            old = cluster.kill_master()          # SIGKILL: connections reset
            new = cluster.wait_for_failover()    # a replica is master now
            cluster.rejoin(old)                  # back, as a replica of ``new``

    ``url`` is the ``redis+sentinel://`` URL a breaker's probe takes;
    ``sentinels`` the ``(host, port)`` pairs django-redis and channels_redis
    take; ``kombu_url`` the ``sentinel://`` broker URL of Celery. Failure
    detection is fast by default (``down_after`` 1 s), so failovers take a few
    seconds; ``failover_timeout`` also sets how soon a failed election is retried
    (twice that).
    """

    def __init__(self, master_name: str = "mymaster", *, replicas: int = 1, sentinels: int = 3,
                 quorum: int | None = None, down_after: float = 1.0,
                 failover_timeout: float = 3.0, password: str | None = None,
                 sentinel_password: str | None = None) -> None:
        if replicas < 1 or sentinels < 1:
            raise ValueError("a Sentinel cluster needs at least one replica and one sentinel")
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalled(INSTALL_HINT)
        self.binary = binary
        self.master_name = master_name
        self.quorum = quorum if quorum is not None else sentinels // 2 + 1
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        self.password = password
        self.sentinel_password = sentinel_password
        self._dir = Path(tempfile.mkdtemp(prefix="redis-breaker-sentinel-"))
        # Replicas sync at once (the default waits 5 s for more replicas to join).
        common = ("--repl-diskless-sync-delay", "0",
                  *(("--masterauth", password) if password else ()))
        first = RedisServer(password=password, extra_args=common)
        self.servers: list[RedisServer] = [first] + [
            RedisServer(password=password,
                        extra_args=(*common, "--replicaof", "127.0.0.1", str(first.port)))
            for _ in range(replicas)
        ]
        self.sentinel_ports: list[int] = [free_port() for _ in range(sentinels)]
        self._sentinel_processes: dict[int, subprocess.Popen[bytes]] = {}

    # ---------------------------------------------------------------- addresses
    host = "127.0.0.1"

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The sentinels as ``(host, port)`` pairs (django-redis ``SENTINELS``, channels_redis)."""
        return [(self.host, port) for port in self.sentinel_ports]

    @property
    def url(self) -> str:
        """``redis+sentinel://...`` naming every sentinel and the master group (breaker URL)."""
        from redis_breaker._sentinel import sentinel_url

        return sentinel_url(self.sentinels, self.master_name, password=self.password,
                            sentinel_password=self.sentinel_password)

    @property
    def kombu_url(self) -> str:
        """Celery's ``sentinel://`` broker URL (``master_name`` goes in the transport options)."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{h}:{p}/0" for h, p in self.sentinels)

    def server_at(self, address: tuple[str, int]) -> RedisServer:
        for server in self.servers:
            if (server.host, server.port) == (address[0], int(address[1])):
                return server
        raise LookupError(f"no server of this cluster at {address[0]}:{address[1]}")

    # ---------------------------------------------------------------- processes
    def _sentinel_config(self, port: int) -> Path:
        master = self.servers[0]
        name = self.master_name
        lines = [
            f"port {port}", f"bind {self.host}", "daemonize no", f"dir {self._dir}",
            f"logfile {self._dir / f'sentinel-{port}.log'}", "loglevel notice",
            f"sentinel monitor {name} {master.host} {master.port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {int(self.down_after * 1000)}",
            f"sentinel failover-timeout {name} {int(self.failover_timeout * 1000)}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password:
            lines += [f"requirepass {self.sentinel_password}",
                      f"sentinel sentinel-pass {self.sentinel_password}"]
        path = self._dir / f"sentinel-{port}.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _start_sentinel(self, port: int, timeout: float) -> None:
        process = subprocess.Popen([self.binary, str(self._sentinel_config(port)), "--sentinel"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        self._sentinel_processes[port] = process
        deadline = _real_now() + timeout
        while _real_now() < deadline:
            if process.poll() is not None:
                log = self._dir / f"sentinel-{port}.log"
                raise RuntimeError(f"redis sentinel exited: {log.read_text() if log.exists() else ''}")
            if self._sentinel_answers(port):
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis sentinel did not answer on port {port} within {timeout}s")

    def _sentinel_answers(self, port: int) -> bool:
        try:
            return bool(self.sentinel_client(port).ping())
        except Exception:
            return False

    def start(self, timeout: float = 60.0) -> RedisSentinelCluster:
        """Start every process and wait until the sentinels agree (see ``wait_until_ready``)."""
        deadline = _real_now() + timeout
        for server in self.servers:
            server.start()
        # Sentinels learn the replicas from the master's INFO, which they ask
        # for at once and then every 10 s: let the replicas connect first.
        self._until(deadline, lambda: all(self._link_up(s) for s in self.servers[1:]),
                    "the replicas to sync with the master")
        for port in self.sentinel_ports:
            self._start_sentinel(port, max(1.0, deadline - _real_now()))
        self.wait_until_ready(max(1.0, deadline - _real_now()))
        return self

    def sentinel_client(self, port: int | None = None) -> Any:
        """A redis-py client of one sentinel (the first by default), short timeouts."""
        import redis

        return redis.Redis(self.host, port or self.sentinel_ports[0], socket_timeout=1.0,
                           socket_connect_timeout=1.0, password=self.sentinel_password,
                           single_connection_client=False, decode_responses=True)

    def _ask(self, port: int, *command: str) -> Any:
        client = self.sentinel_client(port)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def _live_sentinels(self) -> list[int]:
        return [p for p, proc in self._sentinel_processes.items() if proc.poll() is None]

    @staticmethod
    def _info(server: RedisServer) -> dict[str, Any]:
        client = server.client(decode_responses=True)
        try:
            info: dict[str, Any] = client.info("replication")
            return info
        finally:
            client.close()

    def _role(self, server: RedisServer) -> str | None:
        if not server.running:
            return None
        try:
            return str(self._info(server).get("role"))
        except Exception:
            return None

    def _link_up(self, server: RedisServer) -> bool:
        try:
            info = self._info(server)
        except Exception:
            return False
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    @staticmethod
    def _until(deadline: float, predicate: Any, what: str) -> None:
        while _real_now() < deadline:
            try:
                if predicate():
                    return
            except Exception:  # a process that is still starting or just went away
                pass
            time.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what}")

    # --------------------------------------------------------------- agreement
    def _fields(self, port: int, *command: str) -> dict[str, str]:
        return _pairs(self._ask(port, *command))

    def _agreed(self, replicas: bool = True) -> tuple[str, int] | None:
        """The master every live sentinel names and sees healthy, with its peers and (with
        ``replicas``) every running replica linked up."""
        live = self._live_sentinels()
        if not live:
            return None
        named: set[tuple[str, int]] = set()
        for port in live:
            master = self._fields(port, "SENTINEL", "MASTER", self.master_name)
            flags = master.get("flags", "").split(",")
            if flags != ["master"] or int(master.get("num-other-sentinels", -1)) < len(live) - 1:
                return None
            named.add((master["ip"], int(master["port"])))
            if not replicas:
                continue
            seen = [_pairs(r) for r in self._ask(port, "SENTINEL", "REPLICAS", self.master_name)]
            healthy = [r for r in seen if r.get("flags") == "slave"
                       and r.get("master-link-status") == "ok"]
            expected = sum(1 for s in self.servers if s.running) - 1
            if len(healthy) < expected:
                return None
        if len(named) != 1:
            return None
        address = named.pop()
        server = self.server_at(address)
        if self._role(server) != "master":
            return None
        return address

    def wait_until_ready(self, timeout: float = 60.0) -> tuple[str, int]:
        """Wait until every live sentinel names the same master, the server there answers as
        master, and each sentinel sees every running replica with its link up and the other
        sentinels; return the master's address."""
        deadline = _real_now() + timeout
        found: list[tuple[str, int]] = []

        def agreed() -> bool:
            address = self._agreed()
            if address is not None:
                found.append(address)
            return address is not None

        self._until(deadline, agreed, "the sentinels to agree on the master")
        return found[-1]

    def master_address(self) -> tuple[str, int]:
        """The master's address, as the first sentinel that answers gives it."""
        for port in self._live_sentinels():
            try:
                host, master_port = self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                              self.master_name)
            except Exception:
                continue
            return str(host), int(master_port)
        raise RuntimeError("no sentinel answered")

    @property
    def master(self) -> RedisServer:
        """The server the sentinels name as master."""
        return self.server_at(self.master_address())

    @property
    def replicas(self) -> list[RedisServer]:
        master = self.master
        return [s for s in self.servers if s is not master]

    def wait_for_replication(self, timeout: float = 10.0) -> None:
        """Block until every running replica has acknowledged every write made so far (``WAIT``).

        Replication is asynchronous: a write the master took just before it was
        killed may never reach the replica promoted in its place. Call this
        before ``kill_master()`` when a test needs those writes to survive.
        """
        master = self.master
        replicas = sum(1 for s in self.servers if s.running and s is not master)
        client = master.client(socket_timeout=timeout + 1)
        try:
            acked = int(client.execute_command("WAIT", replicas, int(timeout * 1000)))
        finally:
            client.close()
        if acked < replicas:
            raise TimeoutError(f"{acked} of {replicas} replicas acknowledged within {timeout}s")

    # ------------------------------------------------------------------ faults
    def kill_master(self) -> RedisServer:
        """SIGKILL the master (no save, connections reset); return its ``RedisServer``."""
        master = self.master
        master.kill()
        return master

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: promote a replica now, without waiting for an outage."""
        self._ask(self._live_sentinels()[0], "SENTINEL", "FAILOVER", self.master_name)

    def wait_for_failover(self, old: RedisServer | tuple[str, int] | None = None,
                          timeout: float = 60.0) -> RedisServer:
        """Wait until the sentinels agree on a master other than ``old`` and it answers as
        master; return it (its replicas may still be catching up). ``old`` defaults to the
        master of the moment."""
        if old is None:
            old = self.master_address()
        gone = (old.host, old.port) if isinstance(old, RedisServer) else (old[0], int(old[1]))
        deadline = _real_now() + timeout
        found: list[tuple[str, int]] = []

        def moved() -> bool:
            address = self._agreed(replicas=False)
            if address is not None and address != gone:
                found.append(address)
                return True
            return False

        self._until(deadline, moved, f"a failover away from {gone[0]}:{gone[1]}")
        return self.server_at(found[-1])

    def rejoin(self, server: RedisServer, timeout: float = 60.0) -> RedisServer:
        """Start ``server`` again (empty) and wait until the sentinels have made it a replica
        of the current master with its link up. Slow (about 20 s): sentinels wait a few
        seconds before they reconfigure a returning master, and see replicas change only
        every 10 s."""
        deadline = _real_now() + timeout
        server.start()

        def replica() -> bool:
            return self._link_up(server) and self._agreed() is not None

        self._until(deadline, replica, f"{server!r} to rejoin as a replica")
        return server

    # ------------------------------------------------------------------- teardown
    def close(self) -> None:
        for process in self._sentinel_processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(5)
        self._sentinel_processes.clear()
        for server in self.servers:
            server.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        running = sum(1 for s in self.servers if s.running)
        return (f"<RedisSentinelCluster {self.master_name!r} servers={running}/{len(self.servers)} "
                f"sentinels={len(self._live_sentinels())}/{len(self.sentinel_ports)}>")
