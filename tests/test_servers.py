"""Multi-process servers serving the drill's project while Redis is cut, under HTTP load.

Real servers as subprocesses on free ports, against a real redis-server:
gunicorn with sync and with gthread workers, both ``--preload`` (the breaker,
the cache, the channel layer and the Celery app are created in the master and
the cache used once, before the workers are forked), gunicorn with uvicorn's
ASGI workers (``--preload`` too: event loops that start after fork) and
uvicorn's own multi-process supervisor (spawned workers). Threads issue HTTP
requests (cache read+write, task dispatch, group_send) across the workers
while Redis is stopped, then frozen (SIGSTOP), each time restored. A last test
keeps WebSockets open on two daphne processes while Redis is killed and comes
back empty.

Each worker writes every transition of its ``drill`` breaker to a file of its
own (``drill_app.views.prepare``); every response names the worker's pid and
the breaker's state when the view started. Asserted, per server:

- no request fails: HTTP 200 for every one, so no Redis exception reached a client;
- every worker process sees the breaker open in each outage (one worker's
  discovery opens the host-wide state for all of them);
- once a worker has tripped, its views skip Redis (the breaker was open when
  they started) and none takes more than a few socket timeouts (a hang
  detector; speed belongs to the benchmarks);
- probes work after fork: with no traffic at all after Redis is restored, the
  probe thread of the worker holding the host's probe lease half-opens the
  breaker, and every worker sees it closed;
- nothing leaks: each worker's thread count (``/proc/<pid>``) comes back to
  where it was before the outages, and so does every file descriptor that no
  connection pool holds (``GET /_census/``, tests/servers/census.py). The
  pools may have grown with the load they met (on a busy machine the requests
  of the outages overlap more than the warm-up's), bounded by it: no pool holds
  more connections than the load can check out at once, none is still checked
  out with nothing in flight, and no pool came for good but the cache
  journal's own primary and the cache of a thread that started meanwhile;
- no task is lost: every dispatched task id is in the broker's queue once the
  outbox (a SQLite file shared by the workers, WAL) has drained, and no row failed;
- no worker died or was replaced, and the server logged no traceback.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.harness import RedisServer, free_port, wait_until

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
CENSUS = Path(__file__).resolve().parent / "servers"  # the drill's apps with GET /_census/
SOCKET_TIMEOUT = 0.5  # benchmarks/drill_app/settings.py: every client of the drill's Redis
WORKERS = 2
CLIENT_THREADS = 5
# Requests per client thread, in order, round and round.
MIX = ["cache", "task", "cache", "group_send", "cache", "task"]
HANG = 5 * SOCKET_TIMEOUT  # no view that started after its worker's trip takes this long
# What a worker may hold after the outages that it did not hold after the warm-up
# (the census, tests/servers/census.py). Descriptors no pool holds: the same, give or
# take the census request's own connection.
UNHELD_SLACK = 2
# Connection pools (cache, broker producers, channel layer) grow with the requests that
# overlapped, more during an outage on a busy machine than in the warm-up. A request
# checks out one connection of a pool at a time; the journal's replay, the outbox relay
# and the layer's cleanup one each.
POOL_CAP = CLIENT_THREADS + 3
# kombu's transports (an epoll each): one per connection of the producer pool (a
# dispatching request's, the outbox relay's) and the pool's template connection.
KOMBU_CAP = CLIENT_THREADS + 2
# Pools that hold connections (kombu's aside): one more than after the warm-up, the
# primary the cache's journal builds for its first replay, and one per worker thread
# that started since (Django's caches are per thread: gthread starts its threads as
# requests overlap). A pool made per outage and kept is a leak.
NEW_POOLS = 1

SERVERS: dict[str, Callable[[int], list[str]]] = {
    "gunicorn-sync": lambda port: [
        sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS),
        "--worker-class", "sync", "--bind", f"127.0.0.1:{port}", "--timeout", "60",
        "--graceful-timeout", "3", "--no-control-socket", "--log-level", "warning",
        "census_wsgi:application"],
    "gunicorn-gthread": lambda port: [
        sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS),
        "--worker-class", "gthread", "--threads", "4", "--bind", f"127.0.0.1:{port}",
        "--timeout", "60", "--graceful-timeout", "3", "--no-control-socket",
        "--log-level", "warning", "census_wsgi:application"],
    # ASGI after fork: the event loops start in the workers, the breaker before them.
    "gunicorn-uvicorn": lambda port: [
        sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS),
        "--worker-class", "uvicorn.workers.UvicornWorker", "--bind", f"127.0.0.1:{port}",
        "--timeout", "60", "--graceful-timeout", "3", "--no-control-socket",
        "--log-level", "warning", "census_asgi:application"],
    "uvicorn": lambda port: [
        sys.executable, "-m", "uvicorn", "census_asgi:application", "--workers", str(WORKERS),
        "--host", "127.0.0.1", "--port", str(port), "--lifespan", "off", "--no-access-log",
        "--log-level", "warning", "--timeout-graceful-shutdown", "3"],
}

pytestmark = pytest.mark.timeout(240)


# ------------------------------------------------------------------ the server
def _env(redis_url: str, database: Path, events: Path) -> dict[str, str]:
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="drill_app.server_settings",
        DRILL_REDIS_URL=redis_url,
        DRILL_LEDGER_URL=redis_url,
        DRILL_DATABASE=str(database),
        DRILL_EVENTS_DIR=str(events),
        PYTHONPATH=os.pathsep.join(
            p for p in (str(BENCHMARKS), str(CENSUS), os.environ.get("PYTHONPATH")) if p),
    )


@pytest.fixture(scope="module")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The drill's database with the outbox table, in WAL mode (workers write it concurrently)."""
    folder = tmp_path_factory.mktemp("drill-db")
    database = folder / "template.sqlite3"
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--verbosity", "0"],
        cwd=BENCHMARKS, env=_env("redis://127.0.0.1:1/0", database, folder),
        check=True, timeout=120)
    with contextlib.closing(sqlite3.connect(database)) as db:
        # Persistent in the file: readers never block the workers' writers.
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    return database


class Server:
    """One server process group; ``close()`` kills all of it."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(argv, cwd=BENCHMARKS, env=env, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}):\n{self.output()}")
            return request(self.port, "GET", "/process/", timeout=2.0)[0] == 200

        assert wait_until(ready, timeout, 0.2), f"server not ready:\n{self.output()}"

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-6000:]

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        # Workers left behind by a master that died first share its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log_file.close()


def request(port: int, method: str, path: str, timeout: float = 30.0
            ) -> tuple[int | None, dict[str, Any] | None, str | None]:
    """``(status, json body, error)`` of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        raw = response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return response.status, None, raw[:300].decode(errors="replace")
        return response.status, body, None
    except Exception as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


# -------------------------------------------------------------------- the load
@dataclass
class Sample:
    op: str
    sent: float  # wall clock, comparable with the workers' times
    latency: float
    status: int | None
    body: dict[str, Any] | None
    error: str | None


class Load:
    """Client threads issuing requests round the MIX until stopped; ``pause()`` idles them."""

    PATHS: ClassVar[dict[str, tuple[str, str]]] = {
        "cache": ("GET", "/cache/?n={n}"), "task": ("POST", "/task/?n={n}"),
        "group_send": ("POST", "/group-send/?n={n}")}

    def __init__(self, port: int, threads: int = CLIENT_THREADS, pace: float = 0.01) -> None:
        self.port = port
        self.pace = pace
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._idle = [threading.Event() for _ in range(threads)]
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True,
                                          name=f"load-{i}") for i in range(threads)]

    def start(self) -> Load:
        self._running.set()
        for t in self._threads:
            t.start()
        return self

    def _work(self, index: int) -> None:
        counter = itertools.count(index * 1_000_000)
        ops = itertools.cycle(MIX[index % len(MIX):] + MIX[:index % len(MIX)])
        idle = self._idle[index]
        while not self._stopped.is_set():
            if not self._running.is_set():
                idle.set()
                self._running.wait(0.1)
                continue
            idle.clear()
            op = next(ops)
            method, path = self.PATHS[op]
            sent, t0 = time.time(), time.monotonic()
            status, body, error = request(self.port, method, path.format(n=next(counter)))
            sample = Sample(op, sent, time.monotonic() - t0, status, body, error)
            with self._lock:
                self.samples.append(sample)
            time.sleep(self.pace)
        idle.set()

    def pause(self) -> float:
        """Stop issuing requests; return once none is in flight (the wall time then)."""
        self._running.clear()
        assert wait_until(lambda: all(e.is_set() for e in self._idle), 60, 0.02), \
            "a request is still in flight a minute after the load paused"
        return time.time()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stopped.set()
        self._running.set()
        for t in self._threads:
            t.join(60)

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)


# ------------------------------------------------------------ what the workers say
def events(folder: Path) -> dict[int, list[dict[str, Any]]]:
    """Every worker's breaker transitions, by pid."""
    found: dict[int, list[dict[str, Any]]] = {}
    for path in folder.glob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        found[int(path.stem)] = lines
    return found


def first(evts: list[dict[str, Any]], to: str, after: float) -> dict[str, Any] | None:
    return next((e for e in evts if e["to"] == to and e["t"] >= after), None)


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("Threads:")))


def censuses(port: int, pids: list[int], timeout: float = 60.0) -> dict[int, dict[str, Any]]:
    """Each worker's census (tests/servers/census.py), asked on fresh connections until
    every worker has answered one."""
    found: dict[int, dict[str, Any]] = {}

    def everyone() -> bool:
        status, body, _ = request(port, "GET", "/_census/", timeout=10.0)
        if status == 200 and body is not None and body["pid"] in pids:
            found[body["pid"]] = body
        return len(found) == len(pids)

    assert wait_until(everyone, timeout, 0.01), f"a census from workers {sorted(found)} of {pids}"
    return found


def unheld(census: dict[str, Any]) -> dict[str, str]:
    """``fd -> what it is`` for every descriptor that no connection pool holds."""
    held = set(census["held"]) | {str(fd) for fd in census["pollers"]}
    return {fd: what for fd, what in census["fds"].items() if fd not in held}


def leaks(before: dict[str, Any], after: dict[str, Any], new_threads: int) -> list[str]:
    """What a worker holds after the outages that the load it met does not explain."""
    problems = []
    had, has = unheld(before), unheld(after)
    if len(has) > len(had) + UNHELD_SLACK:
        new = sorted(set(has.items()) - set(had.items()), key=lambda item: int(item[0]))
        problems.append(f"{len(has)} descriptors no pool holds ({len(had)} before), "
                        f"new: {new}")
    pools, pools_before = after["pools"], before["pools"]
    checked_out = sum(p["in_use"] for p in pools.values())
    if checked_out > sum(p["in_use"] for p in pools_before.values()):
        problems.append(f"{checked_out} connections checked out with nothing in flight: "
                        f"{[p for p in pools.values() if p['in_use']]}")
    problems += [f"a pool holds {p['connections']} connections: {p}"
                 for p in pools.values() if p["connections"] > POOL_CAP]
    if len(after["pollers"]) > KOMBU_CAP:
        problems.append(f"{len(after['pollers'])} broker transports")
    kept, kept_before = ([p for p in ps.values() if not p["kombu"]]
                         for ps in (pools, pools_before))
    if len(kept) > len(kept_before) + NEW_POOLS + max(new_threads, 0):
        problems.append(f"{len(kept)} pools hold connections ({len(kept_before)} before, "
                        f"{new_threads} threads more): {kept}")
    return problems


def summary(census: dict[str, Any], threads: int) -> str:
    pooled = sum(p["connections"] for p in census["pools"].values())
    return (f"{threads} threads, {len(census['fds'])} fds: {len(unheld(census))} held by no "
            f"pool, {pooled} pooled connections in {len(census['pools'])} pools, "
            f"{len(census['pollers'])} broker transports")


def queued_task_ids(server: RedisServer) -> list[str]:
    """Task ids of every message waiting in the broker's queues (nothing consumes them)."""
    client = server.client()
    ids: list[str] = []
    try:
        for key in client.scan_iter(match=b"drill*"):
            if client.type(key) != b"list":
                continue
            for raw in client.lrange(key, 0, -1):
                ids.append(json.loads(raw)["headers"]["id"])
    finally:
        client.close()
    return ids


def outbox_counts(database: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as db:
        rows = db.execute("SELECT status, COUNT(*) FROM redis_breaker_outboxmessage "
                          "GROUP BY status").fetchall()
    return {str(status): int(n) for status, n in rows}


# ------------------------------------------------------------------- the faults
def cut(server: RedisServer, fault: str) -> None:
    if fault == "refused":
        server.stop(save=True)  # the queued tasks survive the restart
    else:
        server.freeze()


def restore(server: RedisServer, fault: str) -> None:
    if fault == "refused":
        server.start()
    else:
        server.thaw()


@dataclass
class Outage:
    fault: str
    cut: float
    trips: dict[int, float]
    paused: float
    restored: float
    closed: dict[int, float]


# -------------------------------------------------------------------- the test
@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[[list[str], dict[str, str], int], Server]]:
    servers: list[Server] = []

    def start(argv: list[str], env: dict[str, str], port: int) -> Server:
        server = Server(argv, env, port, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("kind", list(SERVERS))
def test_every_worker_rides_through_outages(
    kind: str, redis_server: RedisServer, migrated_database: Path, tmp_path: Path,
    server_factory: Callable[[list[str], dict[str, str], int], Server],
) -> None:
    database = tmp_path / "drill.sqlite3"
    shutil.copyfile(migrated_database, database)
    folder = tmp_path / "events"
    folder.mkdir()
    port = free_port()
    server = server_factory(SERVERS[kind](port), _env(redis_server.url, database, folder), port)
    server.wait_ready()
    started = time.monotonic()

    load = Load(port).start()
    try:
        # Warm up until every worker has served requests: these are the workers under test.
        def workers_seen() -> set[int]:
            return {s.body["pid"] for s in load.snapshot() if s.body and "pid" in s.body}

        assert wait_until(lambda: len(workers_seen()) >= WORKERS and len(load.samples) >= 60, 60), \
            f"only workers {workers_seen()} answered:\n{server.output()}"
        time.sleep(1.0)
        load.pause()
        time.sleep(0.5)
        pids = sorted(workers_seen())
        assert len(pids) == WORKERS, f"{kind}: {len(pids)} workers answered, expected {WORKERS}"
        baseline = {pid: threads_of(pid) for pid in pids}
        baseline_census = censuses(port, pids)
        assert not events(folder), "a breaker changed state while Redis was healthy"
        load.resume()

        outages: list[Outage] = []
        for fault in ("refused", "hung"):
            t_cut = time.time()
            cut(redis_server, fault)

            def trips(after: float = t_cut) -> dict[int, float]:
                evts = events(folder)
                return {pid: e["t"] for pid in pids
                        if (e := first(evts.get(pid, []), "open", after)) is not None}

            assert wait_until(lambda: len(trips()) == WORKERS, 60), (
                f"{kind}/{fault}: only workers {sorted(trips())} of {pids} tripped:\n"
                f"{server.output()}")
            tripped = trips()
            time.sleep(2.0)  # load against open breakers
            paused = load.pause()
            # No traffic from here on: only each worker's own probe can find Redis again.
            # Stamped before the restore: the probe may find Redis while restore() is
            # still waiting for it to answer.
            restoring = time.time()
            restore(redis_server, fault)
            restored = time.time()

            # From the moment the restore began too: a probe can close a breaker while
            # restore() is still waiting for Redis to answer (seen with gunicorn-sync, hung,
            # on a busy machine: one worker closed 1 ms before restore() returned).
            def closed(after: float = restoring) -> dict[int, float]:
                evts = events(folder)
                return {pid: e["t"] for pid in pids
                        if (e := first(evts.get(pid, []), "closed", after)) is not None}

            assert wait_until(lambda: len(closed()) == WORKERS, 60), (
                f"{kind}/{fault}: without traffic only workers {sorted(closed())} of {pids} "
                f"closed again:\n{json.dumps(events(folder), indent=1)}")
            all_events = events(folder)
            # One probe for the host: the worker holding the probe lease half-opened
            # the shared breaker from its probe thread; the others followed the record.
            probed = [e for pid in pids for e in all_events[pid]
                      if e["t"] >= restoring and e["to"] == "half_open" and not e["remote"]]
            assert probed, json.dumps(all_events, indent=1)
            assert all(e["reason"] == "probe ok" for e in probed[:1]), probed
            assert all(e["thread"].startswith("redis-breaker-probe-") for e in probed), probed
            outages.append(Outage(fault, t_cut, tripped, paused, restored, closed()))
            load.resume()
            time.sleep(1.5)  # healthy again, under load
        load.pause()
        outbox_drained = wait_until(
            lambda: outbox_counts(database).get("pending", 0) == 0, 60, 0.5)
        # Nothing is in flight, the outbox relayed and every breaker is closed: what is
        # left over now leaked.
        final: dict[int, int] = {}
        final_census: dict[int, dict[str, Any]] = {}
        problems: dict[int, list[str]] = {}

        def settled() -> bool:
            final_census.update(censuses(port, pids))
            for pid in pids:
                final[pid] = threads_of(pid)
                problems[pid] = leaks(baseline_census[pid], final_census[pid],
                                      final[pid] - baseline[pid])
                if final[pid] > baseline[pid] + 1:
                    problems[pid].append(f"{final[pid]} threads ({baseline[pid]} before)")
            return not any(problems.values())

        leaks_settled = wait_until(settled, 30, 0.5)
    finally:
        load.stop()
    samples = load.snapshot()

    # -- figures (shown with -s)
    print(f"\n{kind}: {len(samples)} requests in {time.monotonic() - started:.1f}s, "
          f"{sum(1 for s in samples if s.status != 200)} failed; workers {pids}")
    for o in outages:
        trip_after = {pid: round(t - o.cut, 2) for pid, t in o.trips.items()}
        close_after = {pid: round(t - o.restored, 2) for pid, t in o.closed.items()}
        during = [s for s in samples if o.cut <= s.sent < o.paused]
        print(f"  {o.fault}: {len(during)} requests during the outage, max latency "
              f"{max((s.latency for s in during), default=0):.2f}s; tripped after {trip_after}s; "
              f"closed {close_after}s after the restore with no traffic")
    for pid in pids:
        print(f"  worker {pid}: before {summary(baseline_census[pid], baseline[pid])}; "
              f"after {summary(final_census[pid], final[pid])}")

    # -- no request failed
    failures = [s for s in samples if s.status != 200 or s.body is None]
    assert not failures, (f"{len(failures)} of {len(samples)} requests failed, e.g. "
                          f"{failures[:5]}\n{server.output()}")
    # -- the same workers served everything, and are still alive
    assert {s.body["pid"] for s in samples if s.body} == set(pids)
    for pid in pids:
        assert Path(f"/proc/{pid}").exists(), f"worker {pid} is gone"
    # -- after its trip, a worker's views skip Redis and none hangs
    for o in outages:
        checked = dict.fromkeys(pids, 0)
        for s in samples:
            body = s.body
            assert body is not None
            if not o.trips[body["pid"]] < body["started"] < o.paused:
                continue
            assert body["breaker_before"] == "open", (o.fault, s)
            assert body["elapsed"] < HANG, (o.fault, s)
            checked[body["pid"]] += 1
        # Each worker served requests while it was open (else the checks above say nothing).
        assert min(checked.values()) >= 5, (o.fault, checked)
    # -- nothing leaked
    assert leaks_settled, f"leaked, per worker: {problems}"
    # -- no task lost
    assert outbox_drained, f"outbox still holds {outbox_counts(database)}"
    assert outbox_counts(database).get("failed", 0) == 0
    dispatched = {s.body["task_id"] for s in samples if s.op == "task" and s.body}
    queued = queued_task_ids(redis_server)
    lost = dispatched - set(queued)
    assert not lost, f"{len(lost)} of {len(dispatched)} tasks never reached the broker"
    print(f"  tasks: {len(dispatched)} dispatched, all in the broker's queue "
          f"({len(queued) - len(set(queued))} published twice)")
    # -- nothing went wrong in the server that the responses could hide
    assert "Traceback" not in server.output(), server.output()


# ------------------------------------------------------------------- WebSockets
class WebSocket:
    """A minimal WebSocket client (text frames, JSON) over a plain socket."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, f"connection closed during the handshake: {head!r}"
            head += chunk
        assert head.split(b"\r\n")[0].split()[1] == b"101", head
        self.closed = False

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                self.closed = True
                raise ConnectionError("the server closed the WebSocket")
            data += chunk
        return data

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON message, or None after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # poll, not select: a long suite's descriptors may be numbered past FD_SETSIZE.
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            if not poller.poll(left * 1000):
                return None
            first_two = self._exact(2)  # a frame has begun: read all of it
            opcode, length = first_two[0] & 0x0F, first_two[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._exact(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._exact(8))[0]
            payload = self._exact(length)
            if opcode == 0x8:
                self.closed = True
                raise ConnectionError(f"the server closed the WebSocket: {payload!r}")
            if opcode == 0x1:
                message: dict[str, Any] = json.loads(payload)
                return message

    def send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message).encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def received(self, timeout: float) -> list[int]:
        """Every ``n`` that arrives until ``timeout`` seconds pass without a message."""
        got: list[int] = []
        while (message := self.receive(timeout)) is not None:
            got.append(message["n"])
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def test_websockets_stay_open_through_an_outage_across_daphne_processes(
    redis_server: RedisServer, migrated_database: Path, tmp_path: Path,
    server_factory: Callable[[list[str], dict[str, str], int], Server],
) -> None:
    """Two daphne processes, a WebSocket member of the drill's group on each.

    Redis is killed and comes back empty: while it is away, a group_send
    reaches the members in its own process and no WebSocket is closed; once
    each process's breaker closed, the memberships it re-applied to the empty
    Redis carry group_sends across processes again.
    """
    database = tmp_path / "drill.sqlite3"
    shutil.copyfile(migrated_database, database)
    folder = tmp_path / "events"
    folder.mkdir()
    env = _env(redis_server.url, database, folder)
    ports = [free_port(), free_port()]
    servers = [server_factory([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                               "drill_app.asgi:application"], env, port) for port in ports]
    for server in servers:
        server.wait_ready()
    pids = [request(port, "GET", "/process/")[1]["pid"] for port in ports]  # type: ignore[index]
    sockets = [WebSocket(port, "/ws/drill/") for port in ports]
    try:
        def group_send(port: int, n: int) -> None:
            status, body, error = request(port, "POST", f"/group-send/?n={n}")
            assert status == 200, (status, body, error)

        def both_receive(n: int, via: int) -> bool:
            group_send(ports[via], n)
            return all(n in ws.received(1.0) for ws in sockets)

        # Healthy: a group_send on either process reaches both (through Redis).
        # The consumers may still be joining: send until both hear it.
        assert wait_until(lambda: both_receive(1, 0), 30, 0)
        assert both_receive(2, 1)

        redis_server.kill()
        cut = time.time()
        during = list(range(100, 120))
        for n in during:
            group_send(ports[n % 2], n)
            time.sleep(0.05)
        # Each process delivered its own sends to its own member, exactly once.
        got = [ws.received(1.0) for ws in sockets]
        assert got[0] == [n for n in during if n % 2 == 0], got
        assert got[1] == [n for n in during if n % 2 == 1], got
        evts = events(folder)
        for pid in pids:
            assert first(evts.get(pid, []), "open", cut) is not None, (pid, evts)

        restoring = time.time()  # before: a probe can close a breaker while start() waits
        redis_server.start()  # empty: no group memberships, no channels
        restored = time.time()
        assert wait_until(lambda: all(first(events(folder).get(pid, []), "closed", restoring)
                                      for pid in pids), 60), events(folder)
        # Across processes again, both ways; the WebSockets never closed.
        assert wait_until(lambda: both_receive(3, 0), 30, 0)
        assert both_receive(4, 1)
        sockets[1].send({"send": 5})
        assert all(5 in ws.received(1.0) for ws in sockets)
        assert not any(ws.closed for ws in sockets)
        print(f"\ndaphne x2: {len(during)} group_sends while Redis was away, each delivered "
              f"in its own process; breakers closed "
              f"{[round(first(events(folder)[pid], 'closed', restoring)['t'] - restored, 2) for pid in pids]}"
              f"s after the restart")
    finally:
        for ws in sockets:
            ws.close()
    for server in servers:
        assert "Traceback" not in server.output(), server.output()
